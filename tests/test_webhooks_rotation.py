"""POST /v1/webhooks/{id}/rotate-secret: a new secret without a second subscription.

During the overlap every request is signed with both secrets, so a receiver still holding the
old one goes on accepting while the new one is rolled out; after it, only the new one signs
and the old one is forgotten.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from sqlalchemy import select, text, update

from cdp.db.tables import access_log
from cdp.ids import utcnow
from consent.outbox.config import DispatchConfig
from consent.outbox.receiver import Receiver
from consent.outbox.retention import housekeeping
from consent.outbox.tables import webhook_subscriptions
from tests.helpers import holds_plaintext, raw_database_bytes
from tests.test_webhooks_delivery import drain, opt_out, subscribe


def accepts(secret: str, request) -> bool:  # type: ignore[no-untyped-def]
    """Whether the project's receiver, holding only `secret`, accepts this request."""
    return Receiver(secret=secret).handle(request.headers, request.body).valid


async def rotate(client, keys, sid: str, **body):  # type: ignore[no-untyped-def]
    return await client.post(
        f"/v1/webhooks/{sid}/rotate-secret", json=body or None, headers=keys["admin"]
    )


async def test_both_secrets_sign_during_the_overlap_and_only_the_new_one_after(
    client, keys, platform, receiver
):
    sub = await subscribe(client, keys, receiver, kinds=["opt_out"])
    old = sub["secret"]
    r = await rotate(client, keys, sub["id"], overlap_seconds=3600)
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert new.startswith("whsec_") and new != old
    assert r.json()["id"] == sub["id"] and r.json()["kinds"] == ["opt_out"]
    ends = r.json()["previous_secret_expires_at"]
    shown = await client.get(f"/v1/webhooks/{sub['id']}", headers=keys["admin"])
    assert "secret" not in shown.json()  # shown once
    assert shown.json()["previous_secret_expires_at"] == ends

    receiver.secret = new
    await opt_out(client, keys, email="during@example.com")
    await drain(platform)
    (during,) = receiver.accepted
    assert len(during.headers["webhook-signature"].split()) == 2
    assert accepts(old, during) and accepts(new, during)

    async with platform.db.write() as conn:  # the hour has passed
        await conn.execute(
            update(webhook_subscriptions).values(
                previous_secret_until=utcnow() - timedelta(seconds=1)
            )
        )
    await opt_out(client, keys, email="after@example.com")
    await drain(platform)
    after = receiver.accepted[1]
    assert len(after.headers["webhook-signature"].split()) == 1
    assert not accepts(old, after) and accepts(new, after)

    await housekeeping(platform, DispatchConfig())
    async with platform.db.read() as conn:
        row = (await conn.execute(select(webhook_subscriptions))).one()
    assert (row.previous_secret, row.previous_secret_until) == (None, None)  # forgotten
    gone = await client.get(f"/v1/webhooks/{sub['id']}", headers=keys["admin"])
    assert "previous_secret_expires_at" not in gone.json()
    raw = await raw_database_bytes(platform)
    assert not holds_plaintext(raw, new.removeprefix("whsec_"))  # encrypted as before
    async with platform.db.read() as conn:
        actions = (await conn.execute(select(access_log.c.action))).scalars().all()
    assert "webhook_rotate_secret" in actions


async def test_the_overlap_defaults_to_a_day_and_zero_switches_at_once(
    client, keys, platform, receiver
):
    sub = await subscribe(client, keys, receiver, kinds=["opt_out"])
    old = sub["secret"]
    before = utcnow()
    r = await rotate(client, keys, sub["id"])
    assert r.status_code == 200, r.text
    from datetime import datetime

    ends = datetime.fromisoformat(r.json()["previous_secret_expires_at"].replace("Z", "+00:00"))
    assert timedelta(hours=23, minutes=59) < ends - before < timedelta(hours=24, minutes=1)
    r = await rotate(client, keys, sub["id"], overlap_seconds=0)
    assert r.status_code == 200 and "previous_secret_expires_at" not in r.json()
    receiver.secret = r.json()["secret"]
    await opt_out(client, keys, email="switched@example.com")
    await drain(platform)
    (req,) = receiver.accepted
    assert not accepts(old, req)


async def test_bad_overlap_unknown_id_and_roles(client, keys, platform, receiver):
    sub = await subscribe(client, keys, receiver, kinds=["opt_out"])
    for bad in (-1, 7 * 86400 + 1, "a day"):
        r = await rotate(client, keys, sub["id"], overlap_seconds=bad)
        assert r.status_code == 400, r.text
        assert [e["field"] for e in r.json()["errors"]] == ["overlap_seconds"]
    assert (await rotate(client, keys, sub["id"], overlap_seconds=7 * 86400)).status_code == 200
    unknown = await rotate(client, keys, "0196f6c0-0000-7000-8000-000000000000")
    assert unknown.status_code == 404
    for role in ("ingest", "marketing", "compliance"):
        r = await client.post(f"/v1/webhooks/{sub['id']}/rotate-secret", headers=keys[role])
        assert r.status_code == 403
    await client.delete(f"/v1/webhooks/{sub['id']}", headers=keys["admin"])
    assert (await rotate(client, keys, sub["id"])).status_code == 404


async def lock_waits(platform) -> int:  # type: ignore[no-untyped-def]
    async with platform.db.engine.connect() as conn:
        return await conn.scalar(
            text(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE NOT l.granted AND a.datname = current_database()"
            )
        )


async def test_two_rotations_at_once_keep_the_secret_each_answered(
    client, keys, platform, receiver
):
    """Two rotations of one subscription at the same time (an admin and a secrets manager's
    schedule): each answers a secret, and each answered secret signs; the second replaces the
    first, it does not write over it as if the first had never happened. SQLite runs one
    writer at a time, so there the two cannot interleave."""
    if not platform.db.is_postgres:
        return
    sub = await subscribe(client, keys, receiver, kinds=["opt_out"])
    async with platform.db.write() as held:  # someone else is writing the subscription
        await held.execute(
            select(webhook_subscriptions.c.id)
            .where(webhook_subscriptions.c.id == uuid.UUID(sub["id"]))
            .with_for_update()
        )
        first = asyncio.ensure_future(rotate(client, keys, sub["id"], overlap_seconds=3600))
        for _ in range(2000):
            if first.done() or await lock_waits(platform) >= 1:
                break
            await asyncio.sleep(0.005)
        second = asyncio.ensure_future(rotate(client, keys, sub["id"], overlap_seconds=3600))
        for _ in range(2000):
            if second.done() or await lock_waits(platform) >= 2:
                break
            await asyncio.sleep(0.005)
    answered = [(await task).json()["secret"] for task in (first, second)]
    receiver.secret = answered[0]
    await opt_out(client, keys, email="both@example.com")
    await drain(platform)
    req = receiver.requests[0]
    assert [accepts(secret, req) for secret in answered] == [True, True]
    assert not accepts(sub["secret"], req)  # at most two sign: the original is replaced
