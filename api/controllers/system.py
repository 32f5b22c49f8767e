from __future__ import annotations

from typing import Any

from litestar import route

from api.auth import PUBLIC
from api.deps import PlatformDep

# HEAD as well: uptime monitors often probe with it (it was a 405). The server sends HEAD's
# answer without the body, with GET's headers (Content-Length included, RFC 9110 §9.3.2).
METHODS = ["GET", "HEAD"]


def operation_id(get_id: str) -> Any:
    """GET keeps the operationId it had before HEAD was added; HEAD's ends in Head."""
    return lambda _handler, method, _path: get_id if method == "GET" else f"{get_id}Head"


@route(
    "/health",
    http_method=METHODS,
    opt=PUBLIC,
    tags=["system"],
    summary="Readiness: the database answers and the master key is current",
    operation_id=operation_id("HealthHealth"),
)
async def health(platform: PlatformDep) -> dict[str, str]:
    """200 when this service can serve: the database answers and the key ring is still under
    this service's master key. Otherwise a 503 saying which (`api.errors`): the database is
    not reachable, or `cdp keys rotate-master` ran and the service needs the new key."""
    async with platform.db.read() as conn:
        await platform.keys.check_current(conn, lock=False)  # no wait behind a rotation
    return {"status": "ok"}


@route(
    "/health/live",
    http_method=METHODS,
    opt=PUBLIC,
    tags=["system"],
    summary="Liveness only (no database)",
    operation_id=operation_id("HealthLiveLive"),
)
async def live() -> dict[str, str]:
    return {"status": "ok"}
