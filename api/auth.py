"""Bearer API keys and roles. Every route declares its roles in `opt`; a route that declares
none is refused (fail closed). Public routes say `opt={"public": True}`; so is the framework's
OPTIONS answer on every path (`api.options`)."""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler

from api.options import is_framework_options
from cdp.apikeys import Principal, authenticate


def roles(*names: str) -> dict[str, object]:
    return {"roles": frozenset(names)}


PUBLIC: dict[str, object] = {"public": True}
# RFC 9110 §11.6.1: a 401 names the scheme the client should use
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cdp"'}


async def auth_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    if handler.opt.get("public") or is_framework_options(handler):
        return
    if handler.opt.get("metrics"):  # its own token, not an API key (api.controllers.metrics)
        from api.controllers.metrics import check_metrics_token

        check_metrics_token(connection)
        return
    if connection.url.path.startswith("/schema"):
        return
    header = connection.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise NotAuthorizedException("missing bearer API key", headers=CHALLENGE)
    principal = await authenticate(connection.app.state.platform.db, key.strip())
    if principal is None:
        raise NotAuthorizedException("unknown or revoked API key", headers=CHALLENGE)
    allowed = handler.opt.get("roles") or frozenset()
    if principal.role not in allowed:
        raise PermissionDeniedException("this key's role may not use this endpoint")
    connection.state.principal = principal


def principal_of(connection: ASGIConnection) -> Principal:
    return connection.state.principal
