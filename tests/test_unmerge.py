"""Exact unmerge: a wrong merge splits back into the profiles the recorded links support."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from cdp.db.tables import merges, profile_keys
from cdp.matching.tables import merge_snapshots
from tests.helpers import count

EVIDENCE = {"wording_id": "newsletter-v3", "method": "double_opt_in"}
ANNA = {
    "source": "crm",
    "external_id": "C-1",
    "email": "anna@example.com",
    "first_name": "Анна",
    "last_name": "Иванова",
    "birth_date": "1990-05-01",
    "postcode": "101000",
    "city": "Moscow",
    "country": "RU",
    "traits": {"tier": "gold"},
}
OTHER = {
    "source": "shop",
    "phone": "+7 916 123-45-67",
    "first_name": "Anna",
    "last_name": "Petrova",
    "city": "Kazan",
    "country": "RU",
    "traits": {"tier": "silver", "vip": True},
}
WRONG_LINK = {"source": "callcenter", "email": "anna@example.com", "phone": "+79161234567"}


async def post(client, keys, path, body, status=(200, 201)):  # type: ignore[no-untyped-def]
    r = await client.post(path, json=body, headers=keys["ingest"])
    assert r.status_code in status, r.text
    return r.json()


async def view(client, keys, pid):  # type: ignore[no-untyped-def]
    r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
    assert r.status_code == 200, r.text
    body = r.json()
    for moving in ("merged_from", "updated_at"):
        body.pop(moving)
    body["identities"] = sorted(body["identities"], key=lambda i: (i["kind"], i["value"]))
    body["consents"]["items"] = sorted(
        body["consents"]["items"], key=lambda i: (i["purpose"], i["channel"], i["address"] or "")
    )
    return body


async def event(client, keys, n, type_, amount, category=None, **who):  # type: ignore[no-untyped-def]
    body = {
        "source": "shop",
        "event_id": f"ord-{n}",
        "type": type_,
        "occurred_at": f"2026-10-{10 + n:02d}T12:00:00Z",
        "amount": amount,
        "currency": "RUB",
        **who,
    }
    if category:
        body["category"] = category
    await post(client, keys, "/v1/events", body)


async def two_customers(client, keys):  # type: ignore[no-untyped-def]
    anna = (await post(client, keys, "/v1/profiles", ANNA))["profile_id"]
    other = (await post(client, keys, "/v1/profiles", OTHER))["profile_id"]
    consents = [
        {"email": "anna@example.com", "channel": "email", "status": "granted"},
        {"profile_id": anna, "channel": "push", "status": "granted"},
        {"phone": "+79161234567", "channel": "sms", "status": "granted"},
        {"profile_id": other, "channel": "push", "status": "withdrawn"},
        {"profile_id": other, "channel": "messenger", "status": "granted"},
    ]
    for n, c in enumerate(consents):
        await post(
            client,
            keys,
            "/v1/consents",
            {
                "purpose": "marketing",
                "source": "web_form",
                "occurred_at": f"2026-11-0{n + 1}T09:00:00Z",
                "evidence": EVIDENCE if c["status"] == "granted" else None,
                **c,
            },
        )
    await event(client, keys, 1, "purchase", "100.00", "shoes", email="anna@example.com")
    await event(client, keys, 2, "purchase", "50.00", "bags", phone="+79161234567")
    await event(client, keys, 3, "refund", "10.00", phone="+79161234567")
    return anna, other


async def test_unmerge_restores_the_original_profiles_exactly(client, keys, platform):
    anna, other = await two_customers(client, keys)
    before = {pid: await view(client, keys, pid) for pid in (anna, other)}

    merged = await post(client, keys, "/v1/profiles", WRONG_LINK)
    assert merged["profile_id"] == anna and merged["merged_profile_ids"] == [other]
    joined = await view(client, keys, anna)
    assert len(joined["identities"]) == 3
    assert joined["stats"]["orders_count"] == 2
    assert joined["consents"]["contactable"]["marketing"]["push"] is False  # withdrawn wins

    r = await client.post(f"/v1/profiles/{anna}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    assert r.json()["profile_ids"] == [anna, other]
    after = {pid: await view(client, keys, pid) for pid in (anna, other)}
    for pid in (anna, other):
        assert after[pid] == before[pid]
    assert after[anna]["stats"]["orders_count"] == 1
    assert after[other]["stats"]["total_spent"] == "40.00"
    assert after[anna]["consents"]["contactable"]["marketing"]["push"] is True
    assert after[other]["consents"]["contactable"]["marketing"]["sms"] is True

    # Recorded in the merge history; nothing is left to undo; the snapshot is gone.
    async with platform.db.read() as conn:
        (row,) = (await conn.execute(select(merges))).all()
    assert row.undone_at is not None and row.undone_by == "admin-key"
    assert await count(platform, merge_snapshots) == 0
    again = await client.post(f"/v1/profiles/{anna}/unmerge", headers=keys["admin"])
    assert again.status_code == 409


async def test_identifiers_linked_after_the_merge_follow_their_evidence(client, keys):
    anna, other = await two_customers(client, keys)
    await post(client, keys, "/v1/profiles", WRONG_LINK)
    # After the merge, a record reaches the profile through the shop customer's phone.
    later = await post(
        client, keys, "/v1/profiles", {"source": "app", "phone": "+79161234567", "email": "p@x.ru"}
    )
    assert later["profile_id"] == anna

    r = await client.post(f"/v1/profiles/{other}/unmerge", headers=keys["admin"])  # absorbed id
    assert r.status_code == 200, r.text
    assert r.json()["profile_ids"] == [anna, other]
    values = {i["value"] for i in (await view(client, keys, other))["identities"]}
    assert values == {"+79161234567", "p@x.ru"}
    found = await client.get("/v1/profiles?email=p@x.ru", headers=keys["admin"])
    assert found.json()["profile_id"] == other


async def test_events_after_the_merge_follow_the_identifier_that_named_them(client, keys):
    """After a wrong merge, the shop customer buys again, named by their phone (and by an
    email a later record linked through it); the other customer buys by email; an event
    named by the profile id stays with the profile that kept the id. The unmerge gives each
    side its purchases and stats: the shop customer's used to stay with Anna (an event did
    not record which identifier named it), in her stats and segments."""
    anna, other = await two_customers(client, keys)
    before = {pid: (await view(client, keys, pid))["stats"] for pid in (anna, other)}
    await post(client, keys, "/v1/profiles", WRONG_LINK)
    await post(
        client, keys, "/v1/profiles", {"source": "app", "phone": "+79161234567", "email": "p@x.ru"}
    )
    await event(client, keys, 4, "purchase", "70.00", "hats", phone="+79161234567")
    await event(client, keys, 5, "purchase", "5.00", "toys", email="p@x.ru")
    await event(client, keys, 6, "purchase", "20.00", "socks", email="anna@example.com")
    await event(client, keys, 7, "page_view", None, profile_id=anna)
    merged = (await view(client, keys, anna))["stats"]
    assert (merged["orders_count"], merged["total_spent"]) == (5, "235.00")

    r = await client.post(f"/v1/profiles/{anna}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    theirs = (await view(client, keys, other))["stats"]
    assert (theirs["orders_count"], theirs["total_spent"]) == (3, "115.00")
    assert theirs["categories"] == ["bags", "hats", "toys"]
    assert theirs["first_order_at"] == before[other]["first_order_at"]
    assert theirs["last_order_at"] == "2026-10-15T12:00:00Z"
    hers = (await view(client, keys, anna))["stats"]
    assert (hers["orders_count"], hers["total_spent"]) == (2, "120.00")
    assert hers["categories"] == ["shoes", "socks"]

    # the events as an access request lists them
    async def event_ids(email):  # type: ignore[no-untyped-def]
        r = await client.post("/v1/access-requests", json={"email": email}, headers=keys["admin"])
        assert r.status_code == 200, r.text
        return sorted(e["event_id"] for e in r.json()["events"])

    assert await event_ids("anna@example.com") == ["ord-1", "ord-6", "ord-7"]
    assert await event_ids("p@x.ru") == ["ord-2", "ord-3", "ord-4", "ord-5"]


async def test_unmerge_answers_404_409_and_403(client, keys):
    unknown = await client.post(
        "/v1/profiles/0190aaaa-0000-7000-8000-000000000000/unmerge", headers=keys["admin"]
    )
    assert unknown.status_code == 404
    alone = (await post(client, keys, "/v1/profiles", ANNA))["profile_id"]
    nothing = await client.post(f"/v1/profiles/{alone}/unmerge", headers=keys["admin"])
    assert nothing.status_code == 409
    role = await client.post(f"/v1/profiles/{alone}/unmerge", headers=keys["ingest"])
    assert role.status_code == 403


async def test_erasure_of_a_merged_customer_leaves_no_snapshot_or_kept_key(client, keys, platform):
    anna, other = await two_customers(client, keys)
    await post(client, keys, "/v1/profiles", WRONG_LINK)
    assert await count(platform, merge_snapshots) == 1
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": "anna@example.com", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    status = await client.get(
        f"/v1/erasure-requests/{r.json()['request_id']}", headers=keys["compliance"]
    )
    assert status.json()["status"] == "completed"
    assert await count(platform, merge_snapshots) == 0
    async with platform.db.read() as conn:
        kept = (
            await conn.execute(
                select(profile_keys.c.profile_id).where(
                    profile_keys.c.profile_id.in_([uuid.UUID(anna), uuid.UUID(other)])
                )
            )
        ).all()
    assert kept == []
    gone = await client.post(f"/v1/profiles/{other}/unmerge", headers=keys["admin"])
    assert gone.status_code == 410
