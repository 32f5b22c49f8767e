from __future__ import annotations

from litestar import get

from api.auth import PUBLIC
from api.deps import PlatformDep


@get("/health", opt=PUBLIC, tags=["system"], summary="Liveness and database reachability")
async def health(platform: PlatformDep) -> dict[str, str]:
    await platform.db.ping()
    return {"status": "ok"}


@get("/health/live", opt=PUBLIC, tags=["system"], summary="Liveness only (no database)")
async def live() -> dict[str, str]:
    return {"status": "ok"}
