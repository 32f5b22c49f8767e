"""Subscriptions created, replaced and deleted while opt-outs are recorded and a dispatcher
runs: a new one gets exactly the events recorded from its creation on, the documented way of
replacing one loses nothing, and a deletion beside a dispatcher's pass undoes neither."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlalchemy import select

from consent.outbox import subscriptions
from consent.outbox.delivery import claim, record_in, send
from consent.outbox.fanout import fan_out, fan_out_in
from consent.outbox.tables import outbox_events, webhook_deliveries, webhook_subscriptions
from tests.test_webhooks_delivery import FAST, drain, opt_out, subscribe


async def test_an_event_recorded_while_a_subscription_is_created_reaches_it_if_later(
    client, keys, platform, receiver
):
    """The subscription's time was taken before its transaction began; an opt-out recorded
    after that time, committed and fanned out before the subscription committed, reached no
    one (the operator, told the subscription covers events from its creation on, might then
    delete the subscription it replaces)."""
    body = {"url": receiver.url, "kinds": ["opt_out"]}
    if platform.db.is_sqlite:
        # one writer: a busy one (an import chunk) holds it while an opt-out, a fan-out and
        # the subscription queue for it, in that order
        async with platform.db._write_lock:
            opting = asyncio.create_task(opt_out(client, keys, email="raced@example.com"))
            await asyncio.sleep(0.1)
            fanning = asyncio.create_task(fan_out(platform))
            await asyncio.sleep(0.1)
            creating = asyncio.create_task(
                client.post("/v1/webhooks", json=body, headers=keys["admin"])
            )
            await asyncio.sleep(0.1)
        await opting
        await fanning
        r = await creating
    else:
        # the subscription's transaction is slow (here, its access-log entry); meanwhile an
        # opt-out commits and a dispatcher passes
        gate, inside = asyncio.Event(), asyncio.Event()
        real = subscriptions.log_access

        async def slow(*args, **kwargs):  # type: ignore[no-untyped-def]
            inside.set()
            await gate.wait()
            return await real(*args, **kwargs)

        subscriptions.log_access = slow
        try:
            creating = asyncio.create_task(
                client.post("/v1/webhooks", json=body, headers=keys["admin"])
            )
            await inside.wait()
            await opt_out(client, keys, email="raced@example.com")
            await fan_out(platform)
            gate.set()
            r = await creating
        finally:
            subscriptions.log_access = real
    assert r.status_code == 201, r.text
    receiver.secret = r.json()["secret"]
    await drain(platform)
    async with platform.db.read() as conn:
        (recorded_at,) = (
            await conn.execute(
                select(outbox_events.c.recorded_at).where(outbox_events.c.kind == "opt_out")
            )
        ).one()
        created_at = (await conn.execute(select(webhook_subscriptions.c.created_at))).scalar_one()
    delivered = [q for q in receiver.requests if q.payload["kind"] == "opt_out"]
    assert len(delivered) == (1 if recorded_at >= created_at else 0), (recorded_at, created_at)
    if not platform.db.is_sqlite:  # there, the event was recorded after the creation began
        assert len(delivered) == 1


async def test_changing_a_url_as_documented_loses_no_event_while_the_dispatcher_is_behind(
    client, keys, platform, receiver
):
    """docs/webhooks.md, "Changing url": an event recorded before the new subscription and not
    yet queued (the dispatcher down or behind) is on neither's pending list; deleting the old
    one then lost it. `unqueued_since` on the old one says to wait."""
    old = await subscribe(client, keys, receiver, kinds=["opt_out"])
    await opt_out(client, keys, email="between@example.com")  # not queued: no dispatcher yet
    r = await client.post(
        "/v1/webhooks", json={"url": receiver.url, "kinds": ["opt_out"]}, headers=keys["admin"]
    )
    assert r.status_code == 201, r.text
    new_created = r.json()["created_at"]
    pending = await client.get(
        f"/v1/webhooks/{old['id']}/deliveries", params={"status": "pending"}, headers=keys["admin"]
    )
    assert pending.json()["items"] == []  # the old check alone would say: delete it now
    shown = (await client.get(f"/v1/webhooks/{old['id']}", headers=keys["admin"])).json()
    assert shown["unqueued_since"] < new_created  # wait: the dispatcher has not queued it
    await drain(platform)
    shown = (await client.get(f"/v1/webhooks/{old['id']}", headers=keys["admin"])).json()
    assert "unqueued_since" not in shown
    assert [q.payload["kind"] for q in receiver.requests] == ["opt_out"]  # the old one's
    assert (
        await client.delete(f"/v1/webhooks/{old['id']}", headers=keys["admin"])
    ).status_code == 204


async def test_a_subscription_deleted_during_a_dispatchers_pass_undoes_neither(
    client, keys, platform, receiver
):
    """PostgreSQL: a pass locks the deliveries whose answers it records, then (fanning out) the
    subscriptions; a DELETE locked the subscription, then its deliveries: a deadlock, and the
    DELETE answered 503 or the pass's answers were lost (those deliveries sent again)."""
    if platform.db.is_sqlite:
        pytest.skip("SQLite has one writer: the two cannot interleave")
    sub = await subscribe(client, keys, receiver, kinds=["opt_out"])
    await opt_out(client, keys, email="a@example.com")
    await fan_out(platform)
    [item] = await claim(platform, FAST, 10)
    async with httpx.AsyncClient() as http:
        outcome = await send(http, FAST, item)
    await opt_out(client, keys, email="b@example.com")  # for the pass's fan-out
    async with platform.db.write() as conn:  # the dispatcher's pass (Dispatcher.step)
        await record_in(conn, platform.keys, FAST, [(item, outcome)])
        deleting = asyncio.create_task(
            client.delete(f"/v1/webhooks/{sub['id']}", headers=keys["admin"])
        )
        await asyncio.sleep(0.5)  # the DELETE is under way
        await fan_out_in(conn, platform.keys)
    r = await deleting
    assert r.status_code == 204, r.text
    async with platform.db.read() as conn:
        status = (
            await conn.execute(
                select(webhook_deliveries.c.status).where(webhook_deliveries.c.id == item.id)
            )
        ).scalar_one()
    assert status == "delivered"  # the pass's answer was recorded
