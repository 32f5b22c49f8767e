"""Background services that run inside `cdp serve` (each can also run as its own CLI worker):
the erasure worker (`cdp dsr run`), the webhook dispatcher (`cdp dispatch`), and signed ledger
checkpoints (`cdp audit checkpoint`), every CDP_CHECKPOINT_INTERVAL seconds (default 300)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from cdp.platform import Platform


@contextlib.asynccontextmanager
async def background_services(p: Platform) -> AsyncIterator[None]:
    from consent.audit.checkpoints import checkpoint_periodically
    from consent.dsr.worker import dsr_worker
    from consent.outbox.dispatcher import dispatcher_running

    interval = float(os.environ.get("CDP_CHECKPOINT_INTERVAL", "300"))
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(dsr_worker(p))
        await stack.enter_async_context(dispatcher_running(p))  # webhooks (CDP_WEBHOOK_DISPATCHER)
        if interval > 0:
            task = asyncio.create_task(checkpoint_periodically(p, interval), name="checkpoints")
            stack.callback(task.cancel)
        yield
