from __future__ import annotations

from litestar import get

from api.auth import PUBLIC
from cdp.platform import Platform


@get("/health", opt=PUBLIC, tags=["system"], summary="Liveness and database reachability")
async def health(platform: Platform) -> dict[str, str]:
    await platform.db.ping()
    return {"status": "ok"}
