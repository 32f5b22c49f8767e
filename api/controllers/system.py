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
    summary="Liveness and database reachability",
    operation_id=operation_id("HealthHealth"),
)
async def health(platform: PlatformDep) -> dict[str, str]:
    await platform.db.ping()
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
