"""The access request: everything held about a customer, decrypted, and itself logged."""

from __future__ import annotations

from sqlalchemy import select

from cdp.db.tables import access_log
from tests.test_erasure import EMAIL, PHONE, create_anna


async def test_access_request_returns_everything_held(client, keys, platform):
    ids = await create_anna(client, keys)
    r = await client.get(f"/v1/profiles/{ids['survivor']}", headers=keys["admin"])
    assert r.status_code == 200

    r = await client.post("/v1/access-requests", json={"phone": PHONE}, headers=keys["compliance"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["profile_id"] == ids["survivor"]
    assert set(body["profile_ids"]) == set(ids.values())  # the merged-away profile too

    profile = body["profile"]
    assert profile["first_name"] == "Анна"
    assert profile["postal_address"] == "ул. Забвения, 7, кв. 42"
    assert profile["merged_from"] == [ids["absorbed"]]
    assert sorted((i["kind"], i["value"], i["source"]) for i in body["identities"]) == [
        ("email", EMAIL, "crm"),
        ("external_id", "C-1001", "crm"),
        ("phone", PHONE, "shop"),
    ]

    grants = [c for c in body["consent_history"] if c["status"] == "granted"]
    assert {(c["channel"], c["address"]) for c in grants} == {("email", EMAIL), ("sms", PHONE)}
    for c in grants:
        assert c["evidence_readable"] is True
        assert c["evidence"]["ip"] == "203.0.113.77"
        assert c["evidence"]["user_agent"] == "AnnaBrowser/1.0"
        assert c["wording_id"] == "newsletter-v3"
        assert c["seq"] >= 1 and c["policy_version"]

    assert [(e["event_id"], e["amount"], e["properties"]) for e in body["events"]] == [
        ("ord-erase-1", "4500.00", {"size": "38"})
    ]
    assert body["segments"] == []  # no segment membership function exists yet
    readers = {(a["actor"], a["action"]) for a in body["access_log"]}
    assert ("admin-key", "profile.read") in readers
    assert ("compliance-key", "profile.consents") in readers
    assert body["erasure_requests"] == []

    # the access request itself is in the access log
    async with platform.db.read() as conn:
        rows = (
            await conn.execute(
                select(access_log.c.actor, access_log.c.profile_id).where(
                    access_log.c.action == "access_request.export"
                )
            )
        ).all()
    assert [(a, str(p)) for a, p in rows] == [("compliance-key", ids["survivor"])]


async def test_access_request_names_the_customer_like_every_endpoint(client, keys):
    ids = await create_anna(client, keys)
    for body in (
        {"email": "  Anna.Erasure@EXAMPLE.com "},
        {"identifier": {"source": "crm", "external_id": "C-1001"}},
        {"profile_id": ids["absorbed"]},  # a merged-away id answers with the survivor
    ):
        r = await client.post("/v1/access-requests", json=body, headers=keys["admin"])
        assert r.status_code == 200, (body, r.text)
        assert r.json()["profile_id"] == ids["survivor"]
    r = await client.post(
        "/v1/access-requests", json={"email": "nobody@example.com"}, headers=keys["admin"]
    )
    assert r.status_code == 404
    r = await client.post("/v1/access-requests", json={"phone": "12"}, headers=keys["admin"])
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "phone"
    for role in ("ingest", "marketing"):
        r = await client.post("/v1/access-requests", json={"email": EMAIL}, headers=keys[role])
        assert r.status_code == 403


async def test_access_request_lists_the_segments_the_customer_is_in(client, keys):
    grant = {
        "purpose": "marketing",
        "channel": "email",
        "status": "granted",
        "evidence": {"wording_id": "nl-v1", "method": "checkbox"},
    }
    await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "seg@example.com", "country": "RU", "consents": [grant]},
        headers=keys["ingest"],
    )
    inside = await client.post(
        "/v1/segments",
        headers=keys["marketing"],
        json={
            "name": "russia",
            "purpose": "marketing",
            "channel": "email",
            "rules": {"field": "country", "op": "eq", "value": "RU"},
        },
    )
    await client.post(
        "/v1/segments",
        headers=keys["marketing"],
        json={
            "name": "germany",
            "purpose": "marketing",
            "channel": "email",
            "rules": {"field": "country", "op": "eq", "value": "DE"},
        },
    )
    r = await client.post(
        "/v1/access-requests", json={"email": "seg@example.com"}, headers=keys["compliance"]
    )
    assert r.status_code == 200
    assert [s["name"] for s in r.json()["segments"]] == ["russia"]
    assert r.json()["segments"][0]["id"] == inside.json()["id"]


async def test_access_request_names_the_sources_and_the_merges(client, keys):
    """Where the data came from (GDPR art. 15(1)(g)) and which records were joined into the
    customer, when and on what."""
    ids = await create_anna(client, keys)
    r = await client.post("/v1/access-requests", json={"email": EMAIL}, headers=keys["compliance"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert sorted(s["source"] for s in body["sources"]) == ["callcenter", "crm", "shop"]
    assert all(s["first_seen_at"] for s in body["sources"])
    [merge] = body["merges"]
    assert (merge["survivor_id"], merge["absorbed_id"]) == (ids["survivor"], ids["absorbed"])
    assert merge["matched_on"] == ["phone"] and merge["source"] == "callcenter"
    assert merge["provenance"] == "deterministic" and merge["at"] and merge["undone_at"] is None


async def test_access_request_says_for_what_and_how_long_her_data_are_kept(client, keys, platform):
    """GDPR art. 15(1)(a), (d) and 152-FZ art. 14(7) ask the answer to name the purposes, their
    legal basis and the storage period, not the data alone: the export held none of them."""
    from tests.test_retention import with_retention

    await create_anna(client, keys)
    r = await client.post("/v1/access-requests", json={"email": EMAIL}, headers=keys["compliance"])
    assert r.status_code == 200, r.text
    processing = r.json()["processing"]
    assert processing["jurisdiction"] == "RU" and processing["laws"]
    assert processing["policy_version"] == platform.policy.version
    purposes = {p["purpose"]: p for p in processing["purposes"]}
    assert purposes["marketing"]["advertising"] is True
    assert purposes["marketing"]["legal_basis"]["email"] == "opt_in"
    assert set(purposes["service"]["legal_basis"].values()) == {"contract"}
    assert purposes["service"]["description"]
    assert processing["retention"] == {"inactive_days": None}  # kept until she asks
    assert processing["request_deadlines"]["erasure"] == {
        "period": 10,
        "unit": "working_days",
        "extension": 5,
        "extension_unit": "working_days",
    }

    platform.policy = with_retention(platform.policy, RU=1095)
    r = await client.post("/v1/access-requests", json={"email": EMAIL}, headers=keys["compliance"])
    assert r.json()["processing"]["retention"] == {"inactive_days": 1095}
