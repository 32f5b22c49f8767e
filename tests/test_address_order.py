"""A withdrawal of every address appends its ledger entries in the order the profile lists its
addresses, on both databases alike.

The query for a profile's addresses had no ORDER BY: each database answered in its storage
order. After a merge PostgreSQL stores the absorbed profile's identities anew (an UPDATE writes
a new row version at the end of the table), SQLite updates them in place, so the same
"withdraw everything" came out in the compliance officer's audit trail in one order on SQLite
and another on PostgreSQL."""

from __future__ import annotations


async def upsert(client, keys, **record) -> str:  # type: ignore[no-untyped-def]
    r = await client.post("/v1/profiles", json={"source": "crm", **record}, headers=keys["ingest"])
    assert r.status_code in (200, 201), r.text
    return r.json()["profile_id"]


async def test_the_ledger_lists_a_merged_customers_addresses_in_the_profiles_order(client, keys):
    first = await upsert(client, keys, email="one@example.com")
    await upsert(client, keys, phone="+7 916 000-11-22")
    await upsert(client, keys, email="one@example.com", phone="+7 916 000-33-44")
    # the record that links both: the phone's profile is absorbed into the older one
    await upsert(client, keys, email="one@example.com", phone="+7 916 000-11-22")
    profile = (await client.get(f"/v1/profiles/{first}", headers=keys["admin"])).json()
    listed = [i["value"] for i in profile["identities"] if i["kind"] in ("email", "phone")]
    assert set(listed) == {"one@example.com", "+79160001122", "+79160003344"}

    r = await client.post(
        "/v1/consents",
        json={
            "profile_id": first,
            "purpose": "marketing",
            "channel": "*",
            "status": "withdrawn",
            "source": "crm",
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    r = await client.get(
        "/v1/audit/consent-events", params={"profile_id": first}, headers=keys["compliance"]
    )
    subjects = [e["subject"].get("address") for e in r.json()["items"]]
    subjects = [s for s in subjects if s in listed]
    assert subjects == listed
