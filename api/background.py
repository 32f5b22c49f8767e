"""Background services that run inside `cdp serve` (each can also run as its own CLI worker)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from cdp.platform import Platform


@contextlib.asynccontextmanager
async def background_services(p: Platform) -> AsyncIterator[None]:
    from consent.dsr.worker import dsr_worker
    from consent.outbox.dispatcher import dispatcher_running

    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(dsr_worker(p))
        await stack.enter_async_context(dispatcher_running(p))  # webhooks (CDP_WEBHOOK_DISPATCHER)
        yield
