"""An opt-out of an address the platform has never seen reaches `include_address` subscribers
with the address: the sending tool does not hold the blind index key, and must stop mailing it.

The address waits in the outbox encrypted under the system key, never in plaintext; it is sent
only to subscriptions allowed to see addresses, each such delivery is in the access log, and it
is forgotten once every such subscription has it (or the customer who takes it is erased).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from cdp.db.tables import access_log
from consent.outbox.receiver import Receiver
from consent.outbox.replay import replay
from consent.outbox.tables import outbox_events
from tests.helpers import holds_plaintext, raw_database_bytes
from tests.test_webhooks_delivery import PAYLOAD_KEYS, drain, opt_out, subscribe


@pytest.fixture
async def plain() -> AsyncIterator[Receiver]:
    r = Receiver(secret="")
    await r.start()
    yield r
    await r.stop()


async def sealed(platform) -> list:  # type: ignore[no-untyped-def]
    """The sealed addresses of the opt_out events (no other kind ever holds one)."""
    oe = outbox_events.c
    async with platform.db.read() as conn:
        rows = (await conn.execute(select(oe.kind, oe.address_sealed).order_by(oe.seq))).all()
    assert all(blob is None for kind, blob in rows if kind != "opt_out")
    return [blob for kind, blob in rows if kind == "opt_out"]


async def deliveries_logged(platform) -> list:  # type: ignore[no-untyped-def]
    async with platform.db.read() as conn:
        return (
            await conn.execute(select(access_log).where(access_log.c.action == "webhook_delivery"))
        ).all()


async def test_an_unseen_email_opted_out_reaches_the_subscription_allowed_to_see_it(
    client, keys, platform, receiver, plain
):
    with_address = await subscribe(client, keys, receiver, kinds=["opt_out"], include_address=True)
    await subscribe(client, keys, plain, kinds=["opt_out"])
    await opt_out(client, keys, email="Never.Seen@Example.com")
    assert [x is not None for x in await sealed(platform)] == [True]
    raw = await raw_database_bytes(platform)
    assert not holds_plaintext(raw, "never.seen@example.com")  # encrypted while it waits
    await drain(platform)
    (got,) = [r.payload for r in receiver.accepted]
    assert got["address"] == "never.seen@example.com"
    assert set(got) == PAYLOAD_KEYS | {"address"}
    assert got["profile_id"] is None
    assert got["address_blind_index"] == platform.keys.indexer.email("never.seen@example.com").hex()
    (other,) = [r.payload for r in plain.accepted]
    assert "address" not in other and b"never.seen" not in plain.requests[0].body.lower()
    (logged,) = await deliveries_logged(platform)  # the one delivery that carried it
    assert logged.object_id == with_address["id"]
    assert await sealed(platform) == [None]  # forgotten once delivered


async def test_an_sms_stop_from_an_unknown_number_reaches_it_with_the_number(
    client, keys, platform, receiver
):
    await subscribe(client, keys, receiver, kinds=["opt_out"], include_address=True)
    r = await client.post(
        "/v1/inbound/sms", json={"from": "+7 916 555-77-88", "text": "STOP"}, headers=keys["ingest"]
    )
    assert r.status_code == 200 and r.json()["stop"] is True
    await drain(platform)
    bodies = [x.payload for x in receiver.accepted]
    assert bodies and {b["address"] for b in bodies} == {"+79165557788"}
    assert {b["channel"] for b in bodies} == {"sms"}
    assert len(await deliveries_logged(platform)) == len(bodies)
    assert set(await sealed(platform)) == {None}


async def test_without_a_subscription_allowed_to_see_it_the_address_is_forgotten_at_once(
    client, keys, platform, plain
):
    await subscribe(client, keys, plain, kinds=["opt_out"])
    await opt_out(client, keys, email="nobody.asks@example.com")
    await drain(platform)
    assert "address" not in plain.accepted[0].payload
    assert await sealed(platform) == [None]
    assert await deliveries_logged(platform) == []


async def test_a_dead_letter_keeps_it_so_that_a_replay_still_carries_it(
    client, keys, platform, receiver
):
    """Undelivered (dead), the address is kept for a replay within retention."""
    await subscribe(client, keys, receiver, kinds=["opt_out"], include_address=True)
    receiver.respond = lambda _: 503
    await opt_out(client, keys, email="later.erased@example.com")
    await drain(platform)
    assert receiver.requests and not receiver.accepted  # dead after its tries
    assert [x is not None for x in await sealed(platform)] == [True]
    receiver.respond = None
    since = receiver.requests[0].at - 60
    await replay(platform, since=datetime.fromtimestamp(since, UTC))
    await drain(platform)
    (got,) = [r.payload for r in receiver.accepted]
    assert got["address"] == "later.erased@example.com"
    assert await sealed(platform) == [None]


async def test_an_erasure_of_whoever_takes_the_address_forgets_it(client, keys, platform, receiver):
    await subscribe(client, keys, receiver, kinds=["opt_out"], include_address=True)
    receiver.respond = lambda _: 503
    await opt_out(client, keys, email="taken.later@example.com")
    await drain(platform)
    assert [x is not None for x in await sealed(platform)] == [True]
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "taken.later@example.com"},
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": "taken.later@example.com", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    assert await sealed(platform) == [None]
    raw = await raw_database_bytes(platform)
    assert not holds_plaintext(raw, "taken.later@example.com")
