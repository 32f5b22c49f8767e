"""Retention of the outbox: delivered deliveries go after 30 days, dead and cancelled ones after
90, events once nothing refers to them; pending ones and recent ones stay (SQLite and
PostgreSQL). The dispatcher prunes by itself, `cdp webhooks prune` on demand."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from cdp.db.tables import segment_exports
from cdp.ids import utcnow
from consent.outbox.dispatcher import run_dispatcher
from consent.outbox.replay import replay
from consent.outbox.retention import prune_outbox
from consent.outbox.tables import (
    outbox_events,
    webhook_attempts,
    webhook_deliveries,
    webhook_subscriptions,
)
from tests.helpers import count
from tests.test_webhooks_delivery import FAST, ROOT, drain, opt_out, subscribe

d = webhook_deliveries.c
oe = outbox_events.c


async def deliveries_by_event(platform) -> list:  # type: ignore[no-untyped-def]
    async with platform.db.read() as conn:
        return list(
            (await conn.execute(select(d.id, d.event_seq, d.status).order_by(d.event_seq))).all()
        )


async def age(platform, delivery, *, days: float, **values) -> None:  # type: ignore[no-untyped-def]
    """Move a delivery `days` into the past, with new `values`, and its event with every
    earlier one (events are recorded in seq order)."""
    then = utcnow() - timedelta(days=days)
    async with platform.db.write() as conn:
        await conn.execute(
            update(webhook_deliveries)
            .where(d.id == delivery.id)
            .values(**{"created_at": then} | values)
        )
        await conn.execute(
            update(outbox_events)
            .where(oe.seq <= delivery.event_seq, oe.recorded_at > then)
            .values(recorded_at=then)
        )


async def remaining(platform) -> tuple[set, set]:  # type: ignore[no-untyped-def]
    async with platform.db.read() as conn:
        ids = {i for (i,) in await conn.execute(select(d.id))}
        seqs = {s for (s,) in await conn.execute(select(oe.seq))}
    return ids, seqs


async def test_pruning_deletes_old_finished_deliveries_and_keeps_the_rest(
    client, keys, platform, receiver
):
    sub = await subscribe(client, keys, receiver, kinds=["opt_out"])
    for n in range(6):
        await opt_out(client, keys, email=f"r{n}@example.com")
    await drain(platform)
    rows = await deliveries_by_event(platform)
    assert [r.status for r in rows] == ["delivered"] * 6
    assert await count(platform, webhook_attempts) == 6
    now = utcnow()
    old_delivered, late_delivered, old_pending, old_dead, young_dead, old_cancelled = rows
    await age(platform, old_delivered, days=31, delivered_at=now - timedelta(days=31))
    # an old event delivered only lately (a replay): kept for 30 days after that delivery
    await age(platform, late_delivered, days=40, delivered_at=now - timedelta(days=29))
    await age(
        platform,
        old_pending,
        days=100,
        status="pending",
        delivered_at=None,
        next_attempt_at=now + timedelta(hours=1),
    )
    await age(platform, old_dead, days=95, status="dead", next_attempt_at=now - timedelta(days=91))
    await age(
        platform, young_dead, days=65, status="dead", next_attempt_at=now - timedelta(days=60)
    )
    await age(
        platform,
        old_cancelled,
        days=95,
        status="cancelled",
        next_attempt_at=now - timedelta(days=91),
    )
    await opt_out(client, keys, email="late@example.com")  # not fanned out yet, made old
    async with platform.db.write() as conn:
        await conn.execute(
            update(outbox_events)
            .where(oe.fanned_out.is_(False))
            .values(recorded_at=now - timedelta(days=60))
        )
    async with platform.db.read() as conn:
        unfanned = {s for (s,) in await conn.execute(select(oe.seq).where(~oe.fanned_out))}
    assert unfanned

    pruned = await prune_outbox(platform, dataclasses.replace(FAST, prune_batch=2))
    assert pruned.deliveries == 3
    ids, seqs = await remaining(platform)
    assert ids == {late_delivered.id, old_pending.id, young_dead.id}
    # every event is old now: those still delivered to someone stay, and those not fanned out
    kept = {late_delivered.event_seq, old_pending.event_seq, young_dead.event_seq}
    assert seqs == kept | unfanned
    assert pruned.events > 3  # with the kinds nobody subscribed to
    async with platform.db.read() as conn:
        attempts = {i for (i,) in await conn.execute(select(webhook_attempts.c.delivery_id))}
    assert attempts == {late_delivered.id, old_pending.id, young_dead.id}

    r = await client.get(f"/v1/webhooks/{sub['id']}/deliveries", headers=keys["admin"])
    assert r.status_code == 200
    assert len(r.json()["items"]) == 3
    assert await prune_outbox(platform, FAST) == type(pruned)()  # nothing more to do
    # replay reaches only what is kept
    result = await replay(platform, now - timedelta(days=120))
    assert result.deliveries == 2  # the two kept finished ones; the pending one already waits


async def test_the_dispatcher_prunes_by_itself(client, keys, platform, receiver):
    await subscribe(client, keys, receiver, kinds=["opt_out"])
    await opt_out(client, keys, email="old@example.com")
    await opt_out(client, keys, email="new@example.com")
    await drain(platform)
    old, new = await deliveries_by_event(platform)
    await age(platform, old, days=31, delivered_at=utcnow() - timedelta(days=31))
    r = await client.post(
        "/v1/segments",
        json={"name": "all", "purpose": "marketing", "channel": "email", "rules": {"all": []}},
        headers=keys["marketing"],
    )
    sid = r.json()["id"]
    for _ in range(2):
        r = await client.get(f"/v1/segments/{sid}/export", headers=keys["marketing"])
        assert r.status_code == 200
    async with platform.db.write() as conn:  # one export record is 181 days old
        first = (await conn.execute(select(segment_exports.c.id).limit(1))).scalar_one()
        await conn.execute(
            update(segment_exports)
            .where(segment_exports.c.id == first)
            .values(started_at=utcnow() - timedelta(days=181))
        )

    stop = asyncio.Event()
    task = asyncio.create_task(
        run_dispatcher(platform, stop, dataclasses.replace(FAST, prune_interval=0.05))
    )
    try:
        for _ in range(200):
            ids, _ = await remaining(platform)
            if ids == {new.id} and await count(platform, segment_exports) == 1:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert (await remaining(platform))[0] == {new.id}
    async with platform.db.read() as conn:
        kept = [i for (i,) in await conn.execute(select(segment_exports.c.id))]
    assert len(kept) == 1 and kept[0] != first


async def test_cdp_webhooks_prune(client, keys, platform, receiver):
    await subscribe(client, keys, receiver, kinds=["opt_out"])
    await opt_out(client, keys, email="a@example.com")
    await opt_out(client, keys, email="b@example.com")
    await drain(platform)
    week_old, fresh = await deliveries_by_event(platform)
    await age(platform, week_old, days=7, delivered_at=utcnow() - timedelta(days=7))
    env = {
        **os.environ,
        "CDP_DATABASE_URL": platform.settings.database_url,
        "CDP_MASTER_KEY": platform.settings.master_key or "",
        "CDP_DEV_KEY_DIR": str(platform.settings.dev_key_dir),
    }
    env.pop("CDP_NATS_URL", None)

    async def cdp(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cdp.cli", *args, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()[-2000:]
        return out.decode()

    assert "deleted 0 deliveries and 0 events" in await cdp("webhooks", "prune")  # 30 days
    out = await cdp("webhooks", "prune", "--older-than", "5")
    assert "deleted 1 deliveries and " in out
    ids, seqs = await remaining(platform)
    assert ids == {fresh.id}
    assert week_old.event_seq not in seqs and fresh.event_seq in seqs


async def test_a_deleted_subscription_is_pruned_once_its_deliveries_are(
    client, keys, platform, receiver
):
    """A deleted subscription (its URL, its encrypted signing secret) stays while a delivery
    still refers to it and for 90 days after its deletion, then goes; live ones stay."""
    live = await subscribe(client, keys, receiver, kinds=["opt_out"])
    gone = await subscribe(client, keys, receiver, kinds=["opt_out"])
    recent = await subscribe(client, keys, receiver, kinds=["consent.granted"])
    await opt_out(client, keys, email="s@example.com")
    await drain(platform)
    for sub in (gone, recent):
        r = await client.delete(f"/v1/webhooks/{sub['id']}", headers=keys["admin"])
        assert r.status_code == 204
    now = utcnow()
    ws, gone_id = webhook_subscriptions.c, uuid.UUID(gone["id"])
    async with platform.db.write() as conn:  # deleted 100 days ago, delivered 10 days ago
        await conn.execute(
            update(webhook_subscriptions)
            .where(ws.id == gone_id)
            .values(deleted_at=now - timedelta(days=100))
        )
        await conn.execute(
            update(webhook_deliveries)
            .where(d.subscription_id == gone_id)
            .values(status="delivered", delivered_at=now - timedelta(days=10))
        )

    async def subscriptions() -> set[str]:
        async with platform.db.read() as conn:
            return {str(i) for (i,) in await conn.execute(select(ws.id))}

    assert (await prune_outbox(platform, FAST)).subscriptions == 0  # its delivery is kept
    assert await subscriptions() == {live["id"], gone["id"], recent["id"]}
    async with platform.db.write() as conn:
        await conn.execute(
            update(webhook_deliveries)
            .where(d.subscription_id == gone_id)
            .values(delivered_at=now - timedelta(days=31))
        )
    pruned = await prune_outbox(platform, FAST)
    assert (pruned.deliveries, pruned.subscriptions) == (1, 1)
    assert await subscriptions() == {live["id"], recent["id"]}  # deleted today: kept


async def test_a_delivery_replayed_while_pruning_runs_is_sent_or_said_not_to_be(
    client, keys, platform, receiver
):
    """Pruning selects old delivered deliveries, then deletes them. A replay committing in
    between (PostgreSQL: READ COMMITTED) made one pending again, and pruning then deleted it:
    the replay said "requeued 1" and nothing was sent. Now the replay waits for the pruning
    and requeues what is left: what it reports is what stays pending."""
    from consent.outbox import retention

    if platform.db.is_sqlite:
        pytest.skip("SQLite has one writer: the replay cannot commit inside the pruning")
    await subscribe(client, keys, receiver, kinds=["opt_out"])
    await opt_out(client, keys, email="old@example.com")
    await drain(platform)
    old = utcnow() - timedelta(days=40)
    async with platform.db.write() as conn:  # delivered 40 days ago
        await conn.execute(update(webhook_deliveries).values(delivered_at=old))
        await conn.execute(update(outbox_events).values(recorded_at=old))
    real = retention._delete_deliveries
    racing: list[asyncio.Task] = []

    async def replay_between(conn, ids):  # type: ignore[no-untyped-def]
        racing.append(asyncio.create_task(replay(platform, old - timedelta(days=1))))
        await asyncio.sleep(0.5)  # the replay commits now, unless it waits for this pruning
        await real(conn, ids)

    retention._delete_deliveries = replay_between
    try:
        await prune_outbox(platform, FAST)
    finally:
        retention._delete_deliveries = real
    requeued = (await racing[0]).deliveries
    async with platform.db.read() as conn:
        pending = (
            await conn.execute(
                select(webhook_deliveries.c.id).where(webhook_deliveries.c.status == "pending")
            )
        ).all()
    assert len(pending) == requeued
