from __future__ import annotations

from typing import Any

import structlog
from litestar import Response, route

from api.auth import PUBLIC
from api.deps import PlatformDep
from api.in_flight import NOT_COUNTED
from api.openapi import GET_AND_HEAD, operation_id

log = structlog.get_logger(__name__)

# HEAD as well: uptime monitors often probe with it (it was a 405).
METHODS = GET_AND_HEAD


@route(
    "/health",
    http_method=METHODS,
    opt={**PUBLIC, **NOT_COUNTED},
    tags=["system"],
    summary="Readiness: the database answers and the master key is current",
    operation_id=operation_id("HealthHealth"),
    response_description='The service is ready: `{"status": "ok"}`',
)
async def health(platform: PlatformDep) -> Response[dict[str, Any]] | dict[str, str]:
    """200 when this service can serve: the database and the key store answer and the key
    ring is still under this service's master key. Otherwise a 503 saying which
    (`api.errors`): the database or the key store is not reachable, the database cannot store
    changes (its disk full, or read-only), or `cdp keys rotate-master` ran and the service
    needs the new key."""
    async with platform.db.read() as conn:
        await platform.keys.check_current(conn, lock=False)  # no wait behind a rotation
        await platform.db.check_writable(conn)  # full or read-only: 503 saying which
    if platform.keys.store is not None:  # without it no customer can be read or stored
        await platform.keys.store.ping()  # KeyStoreDown: 503 naming it (api.errors)
    return {"status": "ok"}


@route(
    "/health/live",
    http_method=METHODS,
    opt={**PUBLIC, **NOT_COUNTED},
    tags=["system"],
    summary="Liveness only (no database)",
    operation_id=operation_id("HealthLiveLive"),
    response_description='The process is alive: `{"status": "ok"}`',
)
async def live() -> dict[str, str]:
    return {"status": "ok"}
