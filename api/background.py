"""Background services that run inside `cdp serve` (each can also run as its own CLI worker):
the erasure worker (`cdp dsr run`), the webhook dispatcher (`cdp dispatch`), and signed ledger
checkpoints (`cdp audit checkpoint`), every CDP_CHECKPOINT_INTERVAL seconds (default 300), and
the query planner's statistics, at start and every CDP_STATISTICS_INTERVAL seconds (default 600),
and, where a jurisdiction's policy sets `[retention] inactive_days`, the retention run (`cdp
retention run`), at start and once a day.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from cdp.cancellation import run_every
from cdp.platform import Platform

log = structlog.get_logger(__name__)


async def refresh_statistics_periodically(p: Platform, interval_s: float) -> None:
    """Keep planner statistics current as tables grow (see Database.refresh_statistics)."""
    await run_every(interval_s, p.db.refresh_statistics, failed="statistics_refresh_failed")


@contextlib.asynccontextmanager
async def background_services(p: Platform) -> AsyncIterator[None]:
    from consent.audit.checkpoints import checkpoint_periodically
    from consent.dsr.retention import any_period, retention_periodically
    from consent.dsr.worker import dsr_worker
    from consent.outbox.dispatcher import dispatcher_running

    interval = p.settings.checkpoint_interval
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(dsr_worker(p))
        await stack.enter_async_context(dispatcher_running(p))  # webhooks (CDP_WEBHOOK_DISPATCHER)
        if interval > 0:
            task = asyncio.create_task(checkpoint_periodically(p, interval), name="checkpoints")
            stack.callback(task.cancel)
        stats_interval = p.settings.statistics_interval
        if stats_interval > 0:
            stats = asyncio.create_task(
                refresh_statistics_periodically(p, stats_interval), name="statistics"
            )
            stack.callback(stats.cancel)
        if any_period(p):  # the erasure worker above completes the requests it records
            retention = asyncio.create_task(retention_periodically(p), name="retention")
            stack.callback(retention.cancel)
        yield
