"""The erasure worker: picks up every received or in_progress request and finishes it.

Run it once (`cdp dsr run`), as a loop (`cdp dsr worker`), or inside the API process:

    from consent.dsr.worker import dsr_worker

    async with dsr_worker(platform):   # in api/app.py's lifespan, around `yield`
        yield

Because an erasure is one transaction and requests stay in_progress until it commits, a killed
process leaves work that the next pass (of any worker) completes; each pass then destroys the
key shares of erasures that committed without destroying them (consent.dsr.restore). Several
workers may run at once: a request is locked while it is processed, and a finished one is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from sqlalchemy import and_, or_, select

from cdp.cancellation import run_every, stop_if_cancelled
from cdp.platform import Platform
from consent.dsr import states
from consent.dsr.erasure import WORKER, process
from consent.dsr.requests import ERASURE
from consent.dsr.restore import destroy_erased_shares
from consent.dsr_tables import dsr_requests

log = structlog.get_logger(__name__)
DEFAULT_INTERVAL = 30.0
PAGE = 500  # open requests read per query; a pass reads page after page until none is left


@dataclass(slots=True)
class RunSummary:
    completed: int = 0
    rejected: int = 0
    failed: int = 0
    failed_ids: list[uuid.UUID] = field(default_factory=list)


async def pending(
    p: Platform, after: tuple[datetime, uuid.UUID] | None = None
) -> list[tuple[datetime, uuid.UUID]]:
    """The next page (`PAGE`) of open requests, oldest first, after `after` (received_at, id):
    (received_at, id) of each."""
    r = dsr_requests.c
    q = select(r.received_at, r.id).where(r.kind == ERASURE, r.status.in_(states.OPEN))
    if after is not None:
        at, rid = after
        q = q.where(or_(r.received_at > at, and_(r.received_at == at, r.id > rid)))
    async with p.db.read() as conn:
        rows = await conn.execute(q.order_by(r.received_at, r.id).limit(PAGE))
        return [(at, rid) for at, rid in rows]


async def run_one(p: Platform, request_id: uuid.UUID, actor: str = WORKER) -> str | None:
    """Process one request, logging (by id and error type only) instead of raising."""
    try:
        status = await process(p, request_id, actor)
    except Exception as exc:
        stop_if_cancelled()
        log.error("dsr_erasure_failed", request_id=str(request_id), error=type(exc).__name__)
        return None
    log.info("dsr_erasure_processed", request_id=str(request_id), status=status)
    return status


async def run_pending(p: Platform, actor: str = WORKER) -> RunSummary:
    """One pass over every open request, oldest first, each tried once (the pass reads them a
    page at a time, after the last one it tried: a request that fails stays open, and the
    next pass tries it again); then the key shares of erasures that committed without
    destroying them (the key store refused, or the process lost its answer, after the
    database's commit: the request reads completed) are destroyed."""
    summary = RunSummary()
    after: tuple[datetime, uuid.UUID] | None = None
    while page := await pending(p, after):
        for _, request_id in page:
            status = await run_one(p, request_id, actor)
            if status == "completed":
                summary.completed += 1
            elif status == "rejected":
                summary.rejected += 1
            elif status is None:
                summary.failed += 1
                summary.failed_ids.append(request_id)
        after = page[-1]
    try:
        await destroy_erased_shares(p)
    except Exception as exc:  # the key store down: the next pass destroys them
        stop_if_cancelled()
        log.error("dsr_share_destruction_failed", error=type(exc).__name__)
    return summary


async def run_forever(p: Platform, interval: float = DEFAULT_INTERVAL) -> None:
    # a pass that fails (the database briefly unreachable) is logged; the next one retries
    await run_every(interval, lambda: run_pending(p), failed="dsr_worker_pass_failed")


@contextlib.asynccontextmanager
async def dsr_worker(
    p: Platform, interval: float = DEFAULT_INTERVAL
) -> AsyncIterator[asyncio.Task[None]]:
    """A background task running the worker for as long as the context is open."""
    task = asyncio.create_task(run_forever(p, interval), name="dsr-worker")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
