"""Background services that run inside `cdp serve` (each can also run as its own CLI worker)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from cdp.platform import Platform


@contextlib.asynccontextmanager
async def background_services(p: Platform) -> AsyncIterator[None]:
    from consent.dsr.worker import dsr_worker

    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(dsr_worker(p))
        yield
