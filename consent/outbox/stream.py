"""The same consent events on NATS JetStream, for deployments with many consumers.

With CDP_NATS_URL set, the dispatcher publishes every outbox event to the stream CDP_CONSENT
(created when missing, subjects `cdp.consent.>`) on the subject `cdp.consent.<kind>`, in seq
order. Each message carries the event id as `Nats-Msg-Id`, so JetStream drops a copy published
again within the duplicate window, and an event is marked published only after JetStream has
acknowledged it: a crash between the ack and the mark republishes it, and the copy is dropped
(at least once on our side, de-duplicated by the server). Messages never carry an address: a
stream has no per-consumer permission to see one, so consumers get the blind index.

One publisher works at a time on PostgreSQL (a try-lock held while it publishes and marks);
on SQLite a second process would publish copies that the server drops.
"""

from __future__ import annotations

import time

import msgspec
import structlog
from sqlalchemy import select, update

from cdp.ids import utcnow
from cdp.platform import Platform
from consent.outbox.config import DispatchConfig
from consent.outbox.fanout import try_lock
from consent.outbox.payload import event_payload
from consent.outbox.tables import outbox_events

log = structlog.get_logger(__name__)
STREAM_LOCK = 5_147_010_002
DUPLICATE_WINDOW = 600.0  # seconds
RECONNECT_EVERY = 5.0
RECONNECT_ATTEMPTS = 4  # then the client closes, and `connect` starts over later
oe = outbox_events.c


class StreamPublisher:
    def __init__(self, cfg: DispatchConfig, publish_timeout: float = 5.0) -> None:
        assert cfg.nats_url
        self.url = cfg.nats_url
        self.stream = cfg.nats_stream
        self.prefix = cfg.nats_subject_prefix
        self.timeout = publish_timeout
        self._nc = None
        self._js = None
        self._last_try = 0.0

    def subject(self, kind: str) -> str:
        return f"{self.prefix}.{kind}"

    async def connect(self) -> bool:
        if self._js is not None and self._nc is not None and not self._nc.is_closed:
            return True
        self._nc = self._js = None
        if self._last_try and time.monotonic() - self._last_try < RECONNECT_EVERY:
            return False
        self._last_try = time.monotonic()
        import nats
        from nats.js.api import StreamConfig
        from nats.js.errors import NotFoundError

        async def on_error(exc: Exception) -> None:  # type only: never a payload
            log.warning("nats_error", error=type(exc).__name__)

        try:
            nc = await nats.connect(
                self.url,
                connect_timeout=2,
                max_reconnect_attempts=RECONNECT_ATTEMPTS,
                reconnect_time_wait=0.5,
                error_cb=on_error,
            )
            js = nc.jetstream(timeout=self.timeout)
            try:
                await js.stream_info(self.stream)
            except NotFoundError:
                await js.add_stream(
                    StreamConfig(
                        name=self.stream,
                        subjects=[self.prefix + ".>"],
                        duplicate_window=DUPLICATE_WINDOW,
                        description="Consent changes of the customer data platform",
                    )
                )
        except Exception as exc:
            log.warning("nats_unavailable", error=type(exc).__name__)
            return False
        self._nc, self._js = nc, js
        return True

    async def publish_event(self, ev) -> bool:  # type: ignore[no-untyped-def]
        """Publish one event; True once JetStream has acknowledged it (new or duplicate)."""
        assert self._js is not None
        await self._js.publish(
            self.subject(ev.kind),
            msgspec.json.encode(event_payload(ev)),
            stream=self.stream,
            headers={"Nats-Msg-Id": str(ev.id)},
        )
        return True

    async def publish_pending(self, p: Platform, batch: int = 500) -> int:
        """Publish unpublished events in seq order; returns how many were acknowledged."""
        async with p.db.read() as probe:
            if (
                await probe.execute(select(oe.seq).where(oe.streamed_at.is_(None)).limit(1))
            ).first() is None:
                return 0
        if not await self.connect():
            return 0
        acked: list[int] = []
        async with p.db.read() as conn:
            if not await try_lock(conn, STREAM_LOCK):
                return 0
            events = (
                await conn.execute(
                    select(outbox_events)
                    .where(oe.streamed_at.is_(None))
                    .order_by(oe.seq)
                    .limit(batch)
                )
            ).all()
            try:
                for ev in events:
                    await self.publish_event(ev)
                    acked.append(ev.seq)
            except Exception as exc:  # keep what was acknowledged; the rest waits
                log.warning("nats_publish_failed", error=type(exc).__name__)
            if acked:
                async with p.db.write() as w:
                    await w.execute(
                        update(outbox_events).where(oe.seq.in_(acked)).values(streamed_at=utcnow())
                    )
        return len(acked)

    async def close(self) -> None:
        if self._nc is not None:
            nc, self._nc, self._js = self._nc, None, None
            try:
                await nc.drain()
            except Exception as exc:
                log.warning("nats_close_failed", error=type(exc).__name__)
