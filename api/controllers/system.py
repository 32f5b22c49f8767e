from __future__ import annotations

from litestar import get, head

from api.auth import PUBLIC
from api.deps import PlatformDep

# uptime monitors often probe with HEAD (RFC 9110 §9.3.2: GET without the body); it was a 405
_HEAD = "As GET, without the body: 200 when"


@get("/health", opt=PUBLIC, tags=["system"], summary="Liveness and database reachability")
async def health(platform: PlatformDep) -> dict[str, str]:
    await platform.db.ping()
    return {"status": "ok"}


@head("/health", opt=PUBLIC, tags=["system"], summary=f"{_HEAD} the database is reachable")
async def health_head(platform: PlatformDep) -> None:
    await platform.db.ping()


@get("/health/live", opt=PUBLIC, tags=["system"], summary="Liveness only (no database)")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@head("/health/live", opt=PUBLIC, tags=["system"], summary=f"{_HEAD} the service runs")
async def live_head() -> None:
    return None
