"""Writes that race a merge on PostgreSQL (SQLite runs one write transaction at a time).

A record that links two profiles merges the younger into the older. A write that reached the
younger one by another of its identifiers while the merge was committing must land on the
survivor, not on the absorbed profile, where nobody sees it again: each test holds the merge's
transaction open, lets the other request run until it waits for a lock (or finishes), then
commits the merge.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

from cdp.ids import utcnow
from cdp.profiles.service import prepare, store_prepared_in
from tests.test_erasure_races import iso, waiting_for_a_lock

EMAIL = "merge.race@example.com"
PHONE = "+79161230077"


async def two_profiles(client, keys) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    older = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": EMAIL, "first_name": "Анна"},
        headers=keys["ingest"],
    )
    younger = await client.post(
        "/v1/profiles",
        json={"source": "shop", "external_id": "S-1", "phone": PHONE},
        headers=keys["ingest"],
    )
    assert older.status_code == younger.status_code == 201
    return older.json()["profile_id"], younger.json()["profile_id"]


async def during_merge(platform, request: Callable[[], Awaitable]):  # type: ignore[no-untyped-def]
    """Run `request` while a record linking EMAIL and PHONE is merging their profiles."""
    linking = prepare({"source": "web", "email": EMAIL, "phone": PHONE}, platform)
    async with platform.db.write() as conn:
        outcome = (await store_prepared_in(conn, platform, [linking], "test"))[0]
        assert outcome.merged_profile_ids
        task = asyncio.ensure_future(request())
        for _ in range(2000):  # until the request waits for a lock the merge holds, or is done
            if task.done() or await waiting_for_a_lock(platform):
                break
            await asyncio.sleep(0.005)
    return await task


async def test_a_purchase_recorded_while_its_profile_is_merged_counts_for_the_survivor(
    client, keys, platform
):
    if not platform.db.is_postgres:
        return
    survivor, absorbed = await two_profiles(client, keys)
    event = {
        "source": "shop",
        "event_id": "ord-merge-race",
        "type": "purchase",
        "occurred_at": iso(utcnow() - timedelta(hours=1)),
        "external_id": "S-1",
        "amount": "100.00",
        "currency": "RUB",
    }
    r = await during_merge(
        platform, lambda: client.post("/v1/events", json=event, headers=keys["ingest"])
    )
    assert r.status_code == 201, r.text
    assert r.json()["profile_id"] == survivor
    profile = (await client.get(f"/v1/profiles/{absorbed}", headers=keys["admin"])).json()
    assert profile["profile_id"] == survivor
    assert profile["stats"]["orders_count"] == 1


async def test_a_record_stored_while_its_profile_is_merged_is_kept_by_the_survivor(
    client, keys, platform
):
    if not platform.db.is_postgres:
        return
    survivor, _ = await two_profiles(client, keys)
    record = {"source": "shop", "external_id": "S-1", "phone": "+79161230078", "city": "Tver"}
    r = await during_merge(
        platform, lambda: client.post("/v1/profiles", json=record, headers=keys["ingest"])
    )
    assert r.status_code == 200, r.text
    assert r.json()["profile_id"] == survivor
    profile = (await client.get(f"/v1/profiles/{survivor}", headers=keys["admin"])).json()
    assert profile["city"] == "Tver"
    assert "+79161230078" in {i["value"] for i in profile["identities"]}
    found = await client.get(
        "/v1/profiles", params={"phone": "+79161230078"}, headers=keys["admin"]
    )
    assert found.json()["profile_id"] == survivor


async def test_an_opt_out_made_while_its_profile_is_merged_away_stops_the_survivor(
    client, keys, platform
):
    """'Stop all marketing' for the younger profile, answered while a record merges it into
    the older one, must stop push on the merged customer too (the older profile had granted
    it): before, the merge had read the younger profile's push state before the opt-out wrote
    it, and the customer stayed contactable by push."""
    if not platform.db.is_postgres:
        return
    survivor, absorbed = await two_profiles(client, keys)
    grant = {
        "profile_id": survivor,
        "purpose": "marketing",
        "channel": "push",
        "status": "granted",
        "source": "app",
        "occurred_at": iso(utcnow() - timedelta(days=1)),
        "evidence": {"wording_id": "push-v1", "method": "checkbox"},
    }
    r = await client.post("/v1/consents", json=grant, headers=keys["ingest"])
    assert r.status_code == 201, r.text
    opt_out = {"profile_id": absorbed, "purpose": "marketing", "channel": "*", "source": "app"}
    r = await during_merge(
        platform, lambda: client.post("/v1/opt-outs", json=opt_out, headers=keys["ingest"])
    )
    assert r.status_code == 200, r.text
    matrix = await client.get(f"/v1/profiles/{survivor}/consents", headers=keys["admin"])
    assert matrix.json()["contactable"]["marketing"]["push"] is False
