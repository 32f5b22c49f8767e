"""Replay: send again every event recorded since a point in time.

Each delivery of those events (of every live subscription, or of one) goes back to pending
with a fresh round of tries, keeping its event id (receivers that already have it skip it) and
its history; `replays` counts how often. Only subscriptions that existed when an event was
recorded have a delivery of it, so a replay never sends a subscription what it was not due.
With `stream=True` the events are also published to NATS again (JetStream drops copies
within its duplicate window; consumers can also replay from the stream by start time).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update

from cdp.ids import utcnow
from cdp.platform import Platform
from consent.outbox.tables import outbox_events, webhook_deliveries, webhook_subscriptions

d = webhook_deliveries.c
oe = outbox_events.c
ws = webhook_subscriptions.c


@dataclass(frozen=True, slots=True)
class ReplayResult:
    deliveries: int
    streamed: int


async def replay(
    p: Platform,
    since: datetime,
    *,
    subscription_id: uuid.UUID | None = None,
    stream: bool = False,
) -> ReplayResult:
    if since.tzinfo is None:
        raise ValueError("since needs a time zone")
    events = select(oe.seq).where(oe.recorded_at >= since).scalar_subquery()
    live = select(ws.id).where(ws.deleted_at.is_(None)).scalar_subquery()
    query = (
        update(webhook_deliveries)
        .where(d.event_seq.in_(events), d.subscription_id.in_(live), d.status != "pending")
        .values(
            status="pending",
            attempts=0,
            replays=d.replays + 1,
            next_attempt_at=utcnow(),
            lease_until=None,
            claim_token=None,
        )
    )
    if subscription_id is not None:
        query = query.where(d.subscription_id == subscription_id)
    async with p.db.write() as conn:
        count = (await conn.execute(query)).rowcount
        streamed = 0
        if stream:
            streamed = (
                await conn.execute(
                    update(outbox_events).where(oe.recorded_at >= since).values(streamed_at=None)
                )
            ).rowcount
    return ReplayResult(deliveries=count, streamed=streamed)
