"""From committed outbox events to deliveries: one per (event, subscription).

Done by the dispatcher, not in the consent transaction, so a consent change writes a single
small row whatever the number of subscriptions. A subscription gets an event when it wants the
kind and existed when the event was recorded (created_at <= recorded_at) and is not deleted.

One fan-out runs at a time (PostgreSQL: a transaction-scoped try-lock, others skip; SQLite: the
write transaction), and events are taken in seq order, so a customer's deliveries are created in
the order their changes committed.
"""

from __future__ import annotations

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.engine import xact_lock
from cdp.db.partial import is_not
from cdp.db.upsert import insert_ignore
from cdp.ids import new_id, utcnow
from cdp.keyring import Keyring
from cdp.platform import Platform
from consent.outbox.sealed import forget_sent
from consent.outbox.tables import outbox_events, webhook_deliveries, webhook_subscriptions

FANOUT_LOCK = 5_147_010_001
BATCH = 1000
oe = outbox_events.c
ws = webhook_subscriptions.c


async def try_lock(conn: AsyncConnection, key: int) -> bool:
    if conn.dialect.name != "postgresql":
        return True
    return bool((await conn.execute(text(f"SELECT pg_try_advisory_xact_lock({key})"))).scalar())


async def hold_fan_out(conn: AsyncConnection) -> None:
    """Until the caller's transaction ends, no fan-out runs (PostgreSQL; on SQLite the
    caller's write transaction already keeps every other writer out)."""
    await xact_lock(conn, FANOUT_LOCK)


async def fan_out(p: Platform, batch: int = BATCH) -> int:
    """Create the deliveries of up to `batch` events; returns how many events it handled."""
    async with p.db.write() as conn:
        return await fan_out_in(conn, p.keys, batch)


async def fan_out_in(conn: AsyncConnection, keys: Keyring, batch: int = BATCH) -> int:
    """`fan_out` inside the caller's write transaction (the dispatcher's pass); `keys` forgets
    the sealed addresses nobody allowed to see them wants."""
    if not await try_lock(conn, FANOUT_LOCK):
        return 0
    events = (
        await conn.execute(
            select(
                oe.seq,
                oe.id,
                oe.kind,
                oe.order_key,
                oe.recorded_at,
                oe.address_sealed.is_not(None).label("sealed"),
            )
            .where(is_not(oe.fanned_out))
            .order_by(oe.seq)
            .limit(batch)
        )
    ).all()
    if not events:
        return 0
    live = select(ws.id, ws.kinds, ws.created_at).where(ws.deleted_at.is_(None))
    if conn.dialect.name == "postgresql":
        # a delete waits for this fan-out to commit, and so cancels the deliveries made here
        # too (else they would stay pending and go to a subscription deleted meanwhile)
        live = live.with_for_update(read=True)
    subs = (await conn.execute(live)).all()
    now = utcnow()
    rows = [
        {
            "id": new_id(),
            "subscription_id": sub.id,
            "event_seq": ev.seq,
            "event_id": ev.id,
            "order_key": ev.order_key,
            "status": "pending",
            "attempts": 0,
            "total_attempts": 0,
            "replays": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for ev in events
        for sub in subs
        if ev.kind in sub.kinds and sub.created_at <= ev.recorded_at
    ]
    for start in range(0, len(rows), 1000):
        await conn.execute(insert_ignore(conn, webhook_deliveries), rows[start : start + 1000])
    await conn.execute(
        update(outbox_events)
        .where(oe.seq.in_([ev.seq for ev in events]))  # exactly these: not one that
        .values(fanned_out=True)  # committed meanwhile inside their range (PostgreSQL)
    )
    sealed = [ev.seq for ev in events if ev.sealed]
    if sealed:  # nobody allowed to see it wants it: forgotten at once
        await forget_sent(conn, keys, seqs=sealed)
    return len(events)
