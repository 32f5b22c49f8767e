"""Senders build event ids from what they have at hand ("o-{email}"): the id is never stored in
plain text, an erasure reaches it, and idempotency, merges, unmerges and the access request
work as before (cdp.event_ids)."""

from __future__ import annotations

from sqlalchemy import update

from cdp.db.tables import events
from cdp.event_ids import event_key, plain_ids_left, seal_plain_ids
from tests.helpers import holds_plaintext, raw_database_bytes
from tests.test_import import run_cli

BOB = "bob.orders@example.org"
ORDER = f"o-{BOB}-2026-11-01"


def purchase(event_id: str, **who: str) -> dict:
    return {
        "source": "shop",
        "event_id": event_id,
        "type": "purchase",
        "occurred_at": "2026-11-01T12:00:00Z",
        "amount": "100.00",
        "currency": "RUB",
        **who,
    }


async def events_of(client, keys, **identifier: str) -> list[dict]:
    r = await client.post("/v1/access-requests", json=identifier, headers=keys["compliance"])
    assert r.status_code == 200, r.text
    return r.json()["events"]


async def test_an_event_id_holding_an_email_is_not_stored_in_plain_text(client, keys, platform):
    r = await client.post("/v1/events", json=purchase(ORDER, email=BOB), headers=keys["ingest"])
    assert r.status_code == 201, r.text
    assert r.json()["event_id"] == ORDER
    # nor in a backup: what it holds is ciphertext under a key that an erasure destroys
    assert not holds_plaintext(await raw_database_bytes(platform), BOB)
    # the customer's access request still shows the id as it was sent
    assert [e["event_id"] for e in await events_of(client, keys, email=BOB)] == [ORDER]


async def test_a_repeated_event_is_recognised_per_source(client, keys):
    first = await client.post("/v1/events", json=purchase(ORDER, email=BOB), headers=keys["ingest"])
    again = await client.post("/v1/events", json=purchase(ORDER, email=BOB), headers=keys["ingest"])
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["profile_id"] == first.json()["profile_id"]
    other = await client.post(
        "/v1/events", json={**purchase(ORDER, email=BOB), "source": "pos"}, headers=keys["ingest"]
    )
    assert other.status_code == 201, other.text  # the same id from another source is another
    view = await client.get(f"/v1/profiles/{first.json()['profile_id']}", headers=keys["admin"])
    assert view.json()["stats"]["orders_count"] == 2


async def test_event_ids_follow_a_merge_and_an_unmerge(client, keys):
    anna = "anna@example.com"
    phone = "+79161234567"
    h = keys["ingest"]
    a = (await client.post("/v1/profiles", json={"source": "crm", "email": anna}, headers=h)).json()
    b = await client.post("/v1/profiles", json={"source": "shop", "phone": phone}, headers=h)
    b = b.json()
    r = await client.post("/v1/events", json=purchase(ORDER, phone=phone), headers=h)
    assert r.json()["profile_id"] == b["profile_id"]
    link = await client.post(
        "/v1/profiles", json={"source": "crm", "email": anna, "phone": phone}, headers=h
    )
    assert link.json()["merged_profile_ids"] == [b["profile_id"]]

    # on the survivor: readable, and the repeated event is still the same event
    assert [e["event_id"] for e in await events_of(client, keys, email=anna)] == [ORDER]
    again = await client.post("/v1/events", json=purchase(ORDER, phone=phone), headers=h)
    assert (again.status_code, again.json()["profile_id"]) == (200, a["profile_id"])

    split = await client.post(f"/v1/profiles/{b['profile_id']}/unmerge", headers=keys["admin"])
    assert split.status_code == 200, split.text
    assert [e["event_id"] for e in await events_of(client, keys, phone=phone)] == [ORDER]
    assert await events_of(client, keys, email=anna) == []


async def test_events_recorded_before_sealing_are_found_then_sealed(
    client, keys, platform, tmp_path
):
    """Rows from before migration 0012 keep the id as sent: a repeat still finds them, and
    `cdp events seal` seals them without changing what the customer's access request shows."""
    h = keys["ingest"]
    r = await client.post("/v1/events", json=purchase(ORDER, email=BOB), headers=h)
    second = f"o-{BOB}-2026-11-02"
    await client.post("/v1/events", json=purchase(second, email=BOB), headers=h)
    # as an older release stored them
    for event_id in (ORDER, second):
        key = event_key(platform.keys.indexer, "shop", event_id)
        async with platform.db.write() as conn:
            await conn.execute(
                update(events)
                .where(events.c.event_key == key)
                .values(event_id=event_id, event_key=None, event_ref=None, key_id=None)
            )
    assert await plain_ids_left(platform.db)
    assert holds_plaintext(await raw_database_bytes(platform), BOB)  # what sealing is for

    again = await client.post("/v1/events", json=purchase(ORDER, email=BOB), headers=h)
    assert (again.status_code, again.json()["profile_id"]) == (200, r.json()["profile_id"])

    sealed = run_cli(["events", "seal"], platform.settings.database_url, tmp_path)
    assert sealed.returncode == 0, sealed.stderr[-2000:]
    assert "sealed 2 event ids" in sealed.stdout
    assert not await plain_ids_left(platform.db)
    assert not holds_plaintext(await raw_database_bytes(platform), BOB)
    shown = sorted(e["event_id"] for e in await events_of(client, keys, email=BOB))
    assert shown == sorted([ORDER, second])
    again = await client.post("/v1/events", json=purchase(ORDER, email=BOB), headers=h)
    assert again.status_code == 200
    assert await seal_plain_ids(platform.db, platform.keys) == 0  # resumable: nothing left
