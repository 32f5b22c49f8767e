"""Retention: the outbox and the delivery history do not grow forever.

- a delivered delivery (with its tries) is deleted `keep_delivered_days` after it was
  delivered (default 30);
- a dead or cancelled one `keep_dead_days` after its last scheduled try (default 90), so dead
  letters stay visible and replayable longer;
- an outbox event once it is older than `keep_delivered_days`, fanned out, without any delivery
  left, and (where this process publishes to NATS) published.
- a deleted subscription (its URL and its signing secret, encrypted) `keep_dead_days` after it
  was deleted, once none of its deliveries is left.
Pending deliveries and their events are never deleted, however old.

Deletes go in batches of `prune_batch` rows, each in its own short write transaction, so
consent writers (opt-outs must answer fast) wait at most one batch. The dispatcher runs
`housekeeping` every `prune_interval` (which also prunes segment export records older than
`keep_exports_days`, default 180); `cdp webhooks prune` runs the outbox part on demand.
Replay (`cdp webhooks replay --since`) can only resend deliveries that are still kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, delete, exists, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from cdp.db.partial import among, equals
from cdp.ids import utcnow
from cdp.platform import Platform
from consent.outbox.config import DispatchConfig
from consent.outbox.fanout import try_lock
from consent.outbox.sealed import forget_sent
from consent.outbox.subscriptions import forget_expired_secrets
from consent.outbox.tables import ENDED as ENDED_STATUSES
from consent.outbox.tables import (
    outbox_events,
    webhook_attempts,
    webhook_deliveries,
    webhook_subscriptions,
)

PRUNE_LOCK = 5_147_010_003
d = webhook_deliveries.c
oe = outbox_events.c
ws = webhook_subscriptions.c
# literal values, as in the partial indexes' predicates, so both planners can use them
DELIVERED = equals(d.status, "delivered")
ENDED = among(d.status, ENDED_STATUSES)


@dataclass(slots=True)
class Pruned:
    deliveries: int = 0
    events: int = 0
    exports: int = 0
    subscriptions: int = 0


def _days(n: float) -> timedelta:
    return timedelta(days=n)


async def _delete_deliveries(conn: AsyncConnection, ids: list) -> None:  # type: ignore[type-arg]
    await conn.execute(delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(ids)))
    await conn.execute(delete(webhook_deliveries).where(d.id.in_(ids)))


async def _prune_batches(
    p: Platform,
    oldest: Select,
    remove: Callable[[AsyncConnection, list], Awaitable[None]],
    batch: int,
) -> int:
    """Delete the rows whose ids `oldest` selects (oldest first), `batch` at a time, each batch
    in its own short write transaction; stop when another dispatcher is pruning."""
    total = 0
    while True:
        async with p.db.write() as conn:
            if not await try_lock(conn, PRUNE_LOCK):
                return total
            query = oldest.limit(batch)
            if conn.dialect.name == "postgresql":
                # locked until deleted: a row another transaction is changing (a replay making
                # a delivered delivery pending again) is passed over, and one it changed since
                # this statement began is judged again on its new values, not deleted
                query = query.with_for_update(skip_locked=True)
            ids = [i for (i,) in await conn.execute(query)]
            if ids:
                await remove(conn, ids)
        total += len(ids)
        if len(ids) < batch:
            return total


async def _prune_deliveries(
    p: Platform, finished: ColumnElement[bool], at: ColumnElement, before: datetime, batch: int
) -> int:
    oldest = select(d.id).where(finished, at < before).order_by(at)
    return await _prune_batches(p, oldest, _delete_deliveries, batch)


async def _prune_events(p: Platform, before: datetime, *, published: bool, batch: int) -> int:
    """Events recorded before `before` (by seq: up to the first one recorded since), fanned
    out, with no delivery left."""
    async with p.db.read() as conn:
        first_kept = (
            await conn.execute(
                select(oe.seq).where(oe.recorded_at >= before).order_by(oe.recorded_at).limit(1)
            )
        ).scalar()
    total, after = 0, 0
    while True:
        async with p.db.write() as conn:
            if not await try_lock(conn, PRUNE_LOCK):
                return total
            candidates = select(oe.seq).where(oe.seq > after).order_by(oe.seq).limit(batch)
            if first_kept is not None:
                candidates = candidates.where(oe.seq < first_kept)
            seqs = [s for (s,) in await conn.execute(candidates)]
            if seqs:
                unused = [
                    oe.seq.in_(seqs),
                    oe.recorded_at < before,
                    oe.fanned_out.is_(True),
                    ~exists().where(d.event_seq == oe.seq),
                ]
                if published:
                    unused.append(oe.streamed_at.is_not(None))
                gone = (
                    await conn.execute(
                        delete(outbox_events)
                        .where(*unused)
                        .returning(oe.id, oe.address_sealed.is_not(None))
                    )
                ).all()
                # a dead letter past retention took its sealed address with it
                await p.keys.destroy_shares(event_id for event_id, sealed in gone if sealed)
                total += len(gone)
        if len(seqs) < batch:
            return total
        after = seqs[-1]


async def _delete_subscriptions(conn: AsyncConnection, ids: list) -> None:  # type: ignore[type-arg]
    await conn.execute(delete(webhook_subscriptions).where(ws.id.in_(ids)))


async def _prune_subscriptions(p: Platform, before: datetime, batch: int) -> int:
    """Subscriptions deleted before `before` that no delivery refers to any more."""
    oldest = (
        select(ws.id)
        .where(ws.deleted_at < before, ~exists().where(d.subscription_id == ws.id))
        .order_by(ws.deleted_at)
    )
    return await _prune_batches(p, oldest, _delete_subscriptions, batch)


async def prune_outbox(
    p: Platform,
    cfg: DispatchConfig,
    *,
    now: datetime | None = None,
    keep_delivered_days: float | None = None,
    keep_dead_days: float | None = None,
) -> Pruned:
    """Delete delivered, dead and cancelled deliveries, unused events and deleted subscriptions
    past retention."""
    now = now or utcnow()
    delivered = _days(
        cfg.keep_delivered_days if keep_delivered_days is None else keep_delivered_days
    )
    dead = _days(cfg.keep_dead_days if keep_dead_days is None else keep_dead_days)
    batch = cfg.prune_batch
    out = Pruned()
    out.deliveries += await _prune_deliveries(p, DELIVERED, d.delivered_at, now - delivered, batch)
    out.deliveries += await _prune_deliveries(p, ENDED, d.next_attempt_at, now - dead, batch)
    out.events = await _prune_events(
        p, now - delivered, published=cfg.nats_url is not None, batch=batch
    )
    out.subscriptions = await _prune_subscriptions(p, now - dead, batch)
    async with p.db.write() as conn:
        await forget_sent(conn, p.keys)  # sealed addresses nobody may be sent any more
        await forget_expired_secrets(conn, now)  # rotated secrets past their overlap
    return out


async def housekeeping(p: Platform, cfg: DispatchConfig, *, now: datetime | None = None) -> Pruned:
    """What the dispatcher runs every `prune_interval`: the outbox, then old export records."""
    from cdp.segments.exports import prune_exports

    out = await prune_outbox(p, cfg, now=now)
    out.exports = await prune_exports(p, _days(cfg.keep_exports_days), now=now)
    return out
