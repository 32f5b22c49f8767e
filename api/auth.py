"""Bearer API keys and roles. Every route declares its roles in `opt`; a route that declares
none is refused (fail closed). Public routes say `opt={"public": True}`."""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from cdp.apikeys import Principal, authenticate


def roles(*names: str) -> dict[str, object]:
    return {"roles": frozenset(names)}


PUBLIC: dict[str, object] = {"public": True}


async def auth_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    if handler.opt.get("public") or connection.url.path.startswith("/schema"):
        return
    header = connection.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise NotAuthorizedException("missing bearer API key")
    principal = await authenticate(connection.app.state.platform.db, key.strip())
    if principal is None:
        raise NotAuthorizedException("unknown or revoked API key")
    allowed = handler.opt.get("roles") or frozenset()
    if principal.role not in allowed:
        raise PermissionDeniedException("this key's role may not use this endpoint")
    connection.state.principal = principal


def principal_of(connection: ASGIConnection) -> Principal:
    return connection.state.principal
