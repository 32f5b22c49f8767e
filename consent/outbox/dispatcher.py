"""The dispatcher loop: fan out, claim, send, record; and publish to NATS when configured.

Run it inside the API process (`dispatcher_running(p)` around the lifespan's `yield`) and/or
as separate workers (`cdp dispatch`); any number may run at once (see `delivery`). Each pass
fans out new events, claims as many due queue heads as it has free slots, and sends them
concurrently; a finished send wakes the loop at once (the next event of that customer may now
go). An idle dispatcher looks for work every `poll_interval`. Beside it, housekeeping deletes
what is past retention (`retention`) at start and every `prune_interval`, and the grants past
their validity period are announced (`lapses`) at start and every `lapse_interval`.

    stop = asyncio.Event()
    task = asyncio.create_task(run_dispatcher(platform, stop))
    ...
    stop.set(); await task
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import structlog
from sqlalchemy import func, select

from cdp.cancellation import stop_if_cancelled
from cdp.db.partial import equals, is_not
from cdp.platform import Platform
from consent.outbox.config import DispatchConfig
from consent.outbox.delivery import (
    Claimed,
    Outcome,
    claim_in,
    prepare,
    record_in,
    send,
    work_waiting,
)
from consent.outbox.fanout import fan_out_in
from consent.outbox.lapses import announce_lapses
from consent.outbox.retention import housekeeping
from consent.outbox.stream import StreamPublisher
from consent.outbox.tables import outbox_events, webhook_deliveries
from consent.outbox.targets import private_allowed, protect

log = structlog.get_logger(__name__)


class Dispatcher:
    def __init__(
        self,
        p: Platform,
        cfg: DispatchConfig,
        http: httpx.AsyncClient,
        stream: StreamPublisher | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.p, self.cfg, self.http, self.stream = p, cfg, http, stream
        self.rng = rng or random.Random()
        self.inflight: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.busy: Counter[uuid.UUID] = Counter()  # in flight, per subscription
        self.results: list[tuple[Claimed, Outcome]] = []  # sent, to be recorded
        self.wake = asyncio.Event()
        self.sending = asyncio.Semaphore(cfg.concurrency)

    async def step(self, *, with_stream: bool = True) -> bool:
        """One pass; True when it did something (so the next pass should come soon).

        One write transaction records the answers received since the last pass, fans out new
        events and leases due deliveries (so an event can be sent in the pass that sees it);
        an idle pass is one cheap read."""
        results, self.results = self.results, []
        free = self.cfg.batch - len(self.inflight)  # claimed, not yet answered
        fanned, ids, token = 0, [], None
        if results or await work_waiting(self.p):
            try:
                async with self.p.db.write() as conn:
                    await record_in(conn, self.p.keys, self.cfg, results, self.rng)
                    fanned = await fan_out_in(conn, self.p.keys)
                    ids, token = await claim_in(conn, self.cfg, free, len(self.inflight), self.busy)
            except Exception:  # the leases of `results` run out; they are sent again
                log.error("webhook_pass_failed", answers_lost=len(results))
                raise
        claimed = await prepare(self.p, ids, token) if ids and token else []
        for item in claimed:
            self.busy[item.subscription_id] += 1
            self.inflight[item.id] = asyncio.create_task(self._deliver(item))
        streamed = 0
        if with_stream and self.stream is not None:
            streamed = await self.stream.publish_pending(self.p)
        return bool(results or fanned or claimed or streamed)

    async def _deliver(self, item: Claimed) -> None:
        try:
            waited = self.sending.locked()
            async with self.sending:  # at most `concurrency` requests on the wire
                if waited:
                    ready = await self._prepared_again(item)
                    if ready is None:
                        return
                    item = ready
                outcome = await send(self.http, self.cfg, item)
            self.results.append((item, outcome))
        finally:
            self.inflight.pop(item.id, None)
            self.busy[item.subscription_id] -= 1
            if self.busy[item.subscription_id] <= 0:
                del self.busy[item.subscription_id]
            self.wake.set()

    async def _prepared_again(self, item: Claimed) -> Claimed | None:
        """A delivery that waited for a request slot (slow receivers hold them all, for up to
        minutes) is prepared again once it has one, as `prepare` would now: an erasure that
        completed meanwhile leaves the address out, a rotated secret signs it, and one whose
        subscription was deleted (or whose lease ran out to another dispatcher) is not sent
        (None)."""
        try:
            again = await prepare(self.p, [item.id], item.token)
        except Exception as exc:  # as an unanswered send: the lease runs out, sent again
            log.error("webhook_prepare_failed", error=type(exc).__name__)
            return None
        return again[0] if again else None

    async def _idle(self, stop: asyncio.Event, seconds: float) -> None:
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def run(self, stop: asyncio.Event) -> None:
        """Webhooks in this loop; NATS in a loop of its own, so neither waits on the other."""
        streaming = asyncio.create_task(self._run_stream(stop)) if self.stream else None
        pruning = (
            asyncio.create_task(self._run_housekeeping(stop)) if self.cfg.prune_interval else None
        )
        lapsing = asyncio.create_task(self._run_lapses(stop)) if self.cfg.lapse_interval else None
        failures = 0
        while not stop.is_set():
            self.wake.clear()  # a send that ends from here on wakes the idle wait below
            try:
                busy = await self.step(with_stream=False)
                failures = 0
            except Exception as exc:  # a database hiccup must not end the dispatcher
                failures += 1
                log.error("dispatcher_step_failed", error=type(exc).__name__)
                busy = False
            if not busy:
                await self._idle(stop, self.cfg.poll_interval * (1 + min(failures, 50)))
            if not stop.is_set():  # gather a few answers and events into the next pass
                await asyncio.sleep(self.cfg.min_interval)
        await self.finish()
        for task in (pruning, lapsing):  # a cut-short batch rolls back; the next run redoes it
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if streaming is not None:
            await streaming

    async def _run_housekeeping(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                pruned = await housekeeping(self.p, self.cfg)
                if pruned.deliveries or pruned.events or pruned.exports or pruned.subscriptions:
                    log.info(
                        "retention_pruned",
                        deliveries=pruned.deliveries,
                        events=pruned.events,
                        exports=pruned.exports,
                        subscriptions=pruned.subscriptions,
                    )
            except Exception as exc:  # a database hiccup: try again next time
                log.error("retention_failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.prune_interval)

    async def _run_lapses(self, stop: asyncio.Event) -> None:
        """Announce the grants past their validity period, at start and every
        `lapse_interval`; the events written wake the loop to send them."""
        while not stop.is_set():
            try:
                announced = await announce_lapses(self.p)
                if announced:
                    log.info("consent_lapses_announced", events=announced)
                    self.wake.set()
            except Exception as exc:  # a database hiccup: the next pass takes it up
                stop_if_cancelled()
                log.error("consent_lapses_failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.cfg.lapse_interval)

    async def _run_stream(self, stop: asyncio.Event) -> None:
        assert self.stream is not None
        while not stop.is_set():
            try:
                busy = await self.stream.publish_pending(self.p)
            except Exception as exc:
                log.error("stream_step_failed", error=type(exc).__name__)
                busy = 0
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.cfg.poll_interval)

    async def finish(self) -> None:
        """Let in-flight sends end (up to the request timeout); the rest keep their lease."""
        if self.inflight:
            await asyncio.wait(list(self.inflight.values()), timeout=self.cfg.timeout + 1)
        for task in list(self.inflight.values()):
            task.cancel()
        if self.results:
            try:
                async with self.p.db.write() as conn:
                    await record_in(conn, self.p.keys, self.cfg, self.results, self.rng)
                self.results = []
            except Exception as exc:
                log.error("dispatcher_final_record_failed", error=type(exc).__name__)

    async def drain(self, *, settle: bool = False, max_seconds: float = 60.0) -> None:
        """Deliver everything due now and return (settle: also wait for retries until nothing
        is pending). For `cdp dispatch --once` and tests."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_seconds
        while loop.time() < deadline:
            busy = await self.step()
            if busy:
                continue
            if self.inflight:
                await asyncio.wait(
                    list(self.inflight.values()), return_when=asyncio.FIRST_COMPLETED
                )
                continue
            if self.results:  # answers that came in during the pass: record them first
                continue
            if not settle or not await outstanding(self.p):
                return
            await asyncio.sleep(min(self.cfg.poll_interval, 0.05))
        raise TimeoutError("the outbox did not drain in time")


async def outstanding(p: Platform) -> int:
    """Events not fanned out plus deliveries still pending."""
    async with p.db.read() as conn:
        events = (
            await conn.execute(select(func.count()).where(is_not(outbox_events.c.fanned_out)))
        ).scalar_one()
        pending = (
            await conn.execute(
                select(func.count()).where(equals(webhook_deliveries.c.status, "pending"))
            )
        ).scalar_one()
    return events + pending


@contextlib.asynccontextmanager
async def open_dispatcher(
    p: Platform, cfg: DispatchConfig | None = None, rng: random.Random | None = None
) -> AsyncIterator[Dispatcher]:
    cfg = cfg or DispatchConfig.from_env()
    stream = StreamPublisher(cfg) if cfg.nats_url else None
    n = cfg.concurrency
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(follow_redirects=False, limits=limits, trust_env=False) as http:
        if not private_allowed(cfg.allow_private, production=p.settings.is_production):
            protect(http)
        try:
            yield Dispatcher(p, cfg, http, stream, rng)
        finally:
            if stream is not None:
                await stream.close()


async def run_dispatcher(
    p: Platform, stop_event: asyncio.Event, cfg: DispatchConfig | None = None
) -> None:
    """Dispatch until `stop_event` is set (the API lifespan and `cdp dispatch` run this)."""
    async with open_dispatcher(p, cfg) as dispatcher:
        log.info("dispatcher_started", nats=bool(dispatcher.stream))
        await dispatcher.run(stop_event)
        log.info("dispatcher_stopped")


@contextlib.asynccontextmanager
async def dispatcher_running(p: Platform, cfg: DispatchConfig | None = None) -> AsyncIterator[None]:
    """Run a dispatcher in the background for the duration of the block (API lifespan)."""
    cfg = cfg or DispatchConfig.from_env()
    if not cfg.in_app:
        yield
        return
    stop = asyncio.Event()
    task = asyncio.create_task(run_dispatcher(p, stop, cfg))
    try:
        yield
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, cfg.timeout + 5)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()
