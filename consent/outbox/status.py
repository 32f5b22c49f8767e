"""Delivery status of one subscription: attempts, response codes and lag, newest first."""

from __future__ import annotations

import base64
import binascii
from collections import defaultdict

from sqlalchemy import select

from cdp.errors import InvalidInput
from cdp.platform import Platform
from cdp.segments.cursor import check_limit
from consent.outbox import subscriptions
from consent.outbox.schemas import AttemptOut, DeliveryList, DeliveryOut
from consent.outbox.tables import outbox_events, webhook_attempts, webhook_deliveries

STATUSES = ("pending", "delivered", "dead", "cancelled")
d = webhook_deliveries.c
oe = outbox_events.c
wa = webhook_attempts.c


def encode_seq(seq: int) -> str:
    return base64.urlsafe_b64encode(b"s" + str(seq).encode()).rstrip(b"=").decode()


def decode_seq(text: str | None) -> int | None:
    if not text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        if raw[:1] == b"s":
            return int(raw[1:])
    except (binascii.Error, ValueError):
        pass
    raise InvalidInput.field("cursor", "not a cursor this endpoint returned")


def _ms(later, earlier) -> int | None:  # type: ignore[no-untyped-def]
    if later is None or earlier is None:
        return None
    return int((later - earlier).total_seconds() * 1000)


async def deliveries(
    p: Platform,
    subscription_id: str,
    *,
    status: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> DeliveryList:
    n = check_limit(limit)
    before = decode_seq(cursor)
    if status is not None and status not in STATUSES:
        raise InvalidInput.field("status", "one of " + ", ".join(STATUSES))
    async with p.db.read() as conn:
        sub = await subscriptions.load(conn, subscription_id)
        query = (
            select(webhook_deliveries, oe.kind, oe.occurred_at, oe.recorded_at)
            .join(outbox_events, oe.seq == d.event_seq)
            .where(d.subscription_id == sub.id)
        )
        if status is not None:
            query = query.where(d.status == status)
        if before is not None:
            query = query.where(d.event_seq < before)
        rows = (await conn.execute(query.order_by(d.event_seq.desc()).limit(n + 1))).all()
        more = len(rows) > n
        rows = rows[:n]
        history: dict = defaultdict(list)
        if rows:
            attempts = await conn.execute(
                select(webhook_attempts)
                .where(wa.delivery_id.in_([r.id for r in rows]))
                .order_by(wa.at, wa.number)
            )
            for a in attempts:
                history[a.delivery_id].append(
                    AttemptOut(
                        number=a.number,
                        at=a.at,
                        status_code=a.status_code,
                        error=a.error,
                        duration_ms=a.duration_ms,
                    )
                )
    items = [
        DeliveryOut(
            delivery_id=str(r.id),
            event_id=str(r.event_id),
            kind=r.kind,
            status=r.status,
            attempts=r.attempts,
            total_attempts=r.total_attempts,
            replays=r.replays,
            last_status_code=r.last_status_code,
            last_error=r.last_error,
            occurred_at=r.occurred_at,
            recorded_at=r.recorded_at,
            delivered_at=r.delivered_at,
            next_attempt_at=r.next_attempt_at if r.status == "pending" else None,
            lag_ms=_ms(r.delivered_at, r.occurred_at),
            dispatch_lag_ms=_ms(r.delivered_at, r.recorded_at),
            history=history[r.id],
        )
        for r in rows
    ]
    return DeliveryList(items=items, next_cursor=encode_seq(rows[-1].event_seq) if more else None)
