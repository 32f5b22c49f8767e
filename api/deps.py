"""Dependencies shared by controllers."""

from __future__ import annotations

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency

from cdp.apikeys import Principal
from cdp.platform import Platform


def provide_platform(state: State) -> Platform:
    return state.platform


def provide_principal(request: Request) -> Principal:
    return request.state.principal


PlatformDep = NamedDependency[Platform]
PrincipalDep = NamedDependency[Principal]
