"""An opt-out of an address the platform has never seen reaches `include_address` subscribers
with the address: the sending tool does not hold the blind index key, and must stop mailing it.

The address waits in the outbox encrypted under a key of its own, whose share is kept in the key
store (destroyed when the address is forgotten), never in plaintext; it is sent
only to subscriptions allowed to see addresses, each such delivery is in the access log, and it
is forgotten once every such subscription has it (or the customer who takes it is erased).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from cdp.crypto.fields import CryptoError
from cdp.db.tables import access_log
from consent.outbox.receiver import Receiver
from consent.outbox.replay import replay
from consent.outbox.retention import prune_outbox
from consent.outbox.sealed import unseal_addresses
from consent.outbox.tables import outbox_events
from tests.helpers import count, holds_plaintext, raw_database_bytes
from tests.test_webhooks_delivery import FAST, PAYLOAD_KEYS, drain, opt_out, subscribe


@pytest.fixture
async def plain() -> AsyncIterator[Receiver]:
    r = Receiver(secret="")
    await r.start()
    yield r
    await r.stop()


async def sealed(platform) -> list:  # type: ignore[no-untyped-def]
    """The sealed addresses of the opt_out events (no other kind holds one in these tests)."""
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


async def nothing_opens(platform, backup) -> None:  # type: ignore[no-untyped-def]
    """Neither the sealed address's own key (its share is gone) nor the system key, which no
    erasure destroys, opens the copy a backup kept."""
    assert await unseal_addresses(platform.keys, [backup]) == {}
    with pytest.raises(CryptoError):
        platform.keys.system.decrypt(f"outbox_events.address_sealed|{backup.id}", backup[1])


async def take_and_erase(client, keys, email: str) -> None:  # type: ignore[no-untyped-def]
    """A customer takes the address, then asks for erasure."""
    r = await client.post(
        "/v1/profiles", json={"source": "crm", "email": email}, headers=keys["ingest"]
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": email, "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text


async def replayed(platform, receiver) -> dict:  # type: ignore[no-untyped-def]
    """The receiver answers again: what it missed, replayed and delivered once."""
    receiver.respond = None
    since = receiver.requests[0].at - 60
    await replay(platform, since=datetime.fromtimestamp(since, UTC))
    await drain(platform)
    (got,) = [r.payload for r in receiver.accepted]
    return got


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
    got = await replayed(platform, receiver)
    assert got["address"] == "later.erased@example.com"
    assert await sealed(platform) == [None]


async def test_an_erasure_of_whoever_takes_the_address_forgets_it(client, keys, platform, receiver):
    await subscribe(client, keys, receiver, kinds=["opt_out"], include_address=True)
    receiver.respond = lambda _: 503
    await opt_out(client, keys, email="taken.later@example.com")
    await drain(platform)
    assert [x is not None for x in await sealed(platform)] == [True]
    await take_and_erase(client, keys, "taken.later@example.com")
    assert await sealed(platform) == [None]
    raw = await raw_database_bytes(platform)
    assert not holds_plaintext(raw, "taken.later@example.com")


async def sealed_rows(platform) -> list:  # type: ignore[no-untyped-def]
    """(event id, sealed address) of the opt_out events: what a backup of the database holds."""
    oe = outbox_events.c
    async with platform.db.read() as conn:
        return (
            await conn.execute(
                select(oe.id, oe.address_sealed).where(oe.address_sealed.is_not(None))
            )
        ).all()


async def test_a_copy_taken_while_it_waited_cannot_read_it_once_it_is_delivered(
    client, keys, platform, receiver
):
    """A backup of the database made while the opt-out waited for its delivery holds the
    sealed address; once it has been delivered (and forgotten), nothing the platform holds
    opens that copy any more: its key's share is destroyed in the key store."""
    await subscribe(client, keys, receiver, kinds=["opt_out"], include_address=True)
    await opt_out(client, keys, email="backed.up@example.com")
    (backup,) = await sealed_rows(platform)
    assert await unseal_addresses(platform.keys, [backup]) == {backup.id: "backed.up@example.com"}
    await drain(platform)
    assert [r.payload["address"] for r in receiver.accepted] == ["backed.up@example.com"]
    assert await sealed_rows(platform) == []
    await nothing_opens(platform, backup)


async def test_a_copy_taken_while_it_waited_cannot_read_it_after_the_erasure(
    client, keys, platform, receiver
):
    """The same for an erasure of the customer who later takes the address, while the
    opt-out's delivery is still failing."""
    await subscribe(client, keys, receiver, kinds=["opt_out"], include_address=True)
    receiver.respond = lambda _: 503
    await opt_out(client, keys, email="erased.later@example.com")
    await drain(platform)
    (backup,) = await sealed_rows(platform)
    await take_and_erase(client, keys, "erased.later@example.com")
    assert await sealed_rows(platform) == []
    await nothing_opens(platform, backup)


async def test_a_dead_letter_pruned_by_retention_takes_its_key_with_it(
    client, keys, platform, receiver
):
    """A dead letter keeps its sealed address for a replay until retention deletes the event:
    the key's share goes with it, not left behind in the key store."""
    await subscribe(client, keys, receiver, kinds=["opt_out"], include_address=True)
    receiver.respond = lambda _: 503
    await opt_out(client, keys, email="dead.letter@example.com")
    await drain(platform)
    (backup,) = await sealed_rows(platform)
    assert await platform.keys.shares_of([backup.id])  # kept while a replay may want it
    later = datetime.now(UTC) + timedelta(minutes=5)
    await prune_outbox(platform, FAST, now=later, keep_delivered_days=0, keep_dead_days=0)
    assert await count(platform, outbox_events) == 0  # the event went by retention
    assert await platform.keys.shares_of([backup.id]) == {}
    assert await unseal_addresses(platform.keys, [backup]) == {}


async def test_an_address_sealed_under_the_system_key_before_is_still_delivered(
    client, keys, platform, receiver
):
    """Events written before the keys of their own (sealed under the system key, no share in
    the key store) are still sent with their address, then forgotten."""
    await subscribe(client, keys, receiver, kinds=["opt_out"], include_address=True)
    receiver.respond = lambda _: 503
    await opt_out(client, keys, email="sealed.before@example.com")
    await drain(platform)
    ((event_id, _),) = await sealed_rows(platform)
    await platform.keys.destroy_shares([event_id])
    older = platform.keys.system.encrypt(
        f"outbox_events.address_sealed|{event_id}", "sealed.before@example.com"
    )
    async with platform.db.write() as conn:
        await conn.execute(
            update(outbox_events).where(outbox_events.c.id == event_id).values(address_sealed=older)
        )
    got = await replayed(platform, receiver)
    assert got["address"] == "sealed.before@example.com"
    assert await sealed_rows(platform) == []
