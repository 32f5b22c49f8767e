"""Audit queries over HTTP: consent events by customer, evidence bundles fit for a regulator,
the access log, and chain verification."""

from __future__ import annotations

import base64
import hashlib
import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from consent.audit.paging import encode_cursor
from consent.audit.signing import signer_for
from consent.dsr.worker import run_pending
from tests.test_audit_chain import ANNA, ANNA_PHONE, BOB, EVIDENCE, seed_ledger, set_column


async def events(client, keys, role="compliance", **params):  # type: ignore[no-untyped-def]
    r = await client.get("/v1/audit/consent-events", headers=keys[role], params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def test_consent_events_of_a_customer_by_any_identifier(client, keys):
    ids = await seed_ledger(client, keys)
    by_email = await events(client, keys, email=ANNA.upper())
    by_phone = await events(client, keys, phone="8 916 123-45-67")
    by_id = await events(client, keys, role="admin", profile_id=ids["anna"])
    # Anna: email grant, sms grant, email opt-out, push grant; not Bob, not the unknown address
    assert [e["seq"] for e in by_email["items"]] == [1, 2, 4, 5]
    assert by_phone["items"] == by_email["items"] == by_id["items"]
    first = by_email["items"][0]
    assert first["subject"] == {
        "kind": "email",
        "address": ANNA,
        "profile_id": ids["anna"],
        "via_profile": False,  # the grant named this address
    }
    assert first["evidence"] == EVIDENCE and first["evidence_readable"] is True
    assert (first["purpose"], first["channel"], first["status"]) == (
        "marketing",
        "email",
        "granted",
    )
    assert first["occurred_at"] == "2026-11-20T09:00:00Z"
    assert first["wording_id"] == "newsletter-v3" and first["policy_version"]
    assert first["prev_hash"] == "00" * 32 and len(first["hash"]) == 64
    assert by_email["items"][1]["occurred_at"] == "2026-11-20T07:00:00Z"  # stored in UTC
    assert by_email["items"][3]["subject"]["kind"] == "profile"
    bob = await events(client, keys, email=BOB)
    assert [e["seq"] for e in bob["items"]] == [3]


async def test_an_opt_out_recorded_before_the_address_was_linked_belongs_to_the_customer(
    client, keys
):
    h = keys["ingest"]
    r = await client.post(
        "/v1/opt-outs", headers=h, json={"email": "early@example.com", "source": "web"}
    )
    assert r.json()["profile_ids"] == []
    r = await client.post(
        "/v1/profiles", headers=h, json={"source": "crm", "email": "early@example.com"}
    )
    pid = r.json()["profile_id"]
    found = await events(client, keys, profile_id=pid)
    assert [(e["seq"], e["status"], e["profile_id"]) for e in found["items"]] == [
        (1, "withdrawn", None)
    ]
    assert found["items"][0]["subject"]["address"] == "early@example.com"


async def test_consent_events_filter_by_purpose_channel_and_time(client, keys):
    await seed_ledger(client, keys)
    sms = await events(client, keys, email=ANNA, channel="sms")
    assert [e["seq"] for e in sms["items"]] == [2]
    email = await events(client, keys, channel="email")  # an opt-out of every channel counts
    assert [e["seq"] for e in email["items"]] == [1, 3, 4, 6]
    assert [e["channel"] for e in email["items"]] == ["email", "email", "email", "*"]
    none = await events(client, keys, purpose="service")
    assert none == {"items": [], "next_cursor": None}
    window = await events(
        client, keys, since="2026-11-20T07:00:00Z", until="2026-11-20T11:00:00.250000Z"
    )
    assert [e["seq"] for e in window["items"]] == [1, 2]


async def test_consent_events_are_paginated_in_ledger_order(client, keys):
    await seed_ledger(client, keys)
    seen, cursor = [], None
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = await events(client, keys, **params)
        assert len(page["items"]) <= 4
        seen += [e["seq"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [1, 2, 3, 4, 5, 6]


async def test_bad_audit_queries_are_400(client, keys):
    h = keys["compliance"]
    for params, field in [
        ({"purpose": "spam"}, "purpose"),
        ({"channel": "fax"}, "channel"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": encode_cursor([2**70])}, "cursor"),  # a seq beyond 64 bits: was a 500
        ({"cursor": encode_cursor([True])}, "cursor"),
        ({"since": "2026-11-20T09:00:00"}, "since"),
        ({"email": "not an email"}, "email"),
        ({"profile_id": "nope"}, "profile_id"),
    ]:
        r = await client.get("/v1/audit/consent-events", headers=h, params=params)
        assert r.status_code == 400, (params, r.text)
        assert r.json()["errors"][0]["field"] == field, params
    r = await client.get(
        "/v1/audit/consent-events", headers=h, params={"email": ANNA, "phone": ANNA_PHONE}
    )
    assert r.status_code == 400
    r = await client.get("/v1/audit/access-log", headers=h, params={"cursor": "eyJ4Ijox"})
    assert r.status_code == 400


async def test_a_number_is_not_a_time_in_an_audit_filter(client, keys):
    """`until=2026` (a year) was read as 2026 seconds after 1970 and answered an empty page,
    and `since=1700000000` as a Unix time: a filter is an RFC 3339 time or a 400 naming it."""
    await seed_ledger(client, keys)
    h = keys["compliance"]
    for path in ("/v1/audit/consent-events", "/v1/audit/access-log"):
        for params, field in [
            ({"until": "2026"}, "until"),
            ({"since": "1700000000"}, "since"),
            ({"since": "-5"}, "since"),
            ({"until": "0.5"}, "until"),
        ]:
            r = await client.get(path, headers=h, params=params)
            assert r.status_code == 400, (path, params, r.text)
            assert [e["field"] for e in r.json()["errors"]] == [field], (path, params)
    assert (await events(client, keys, until="2026-12-01T00:00:00+03:00"))["items"]


async def test_an_evidence_bundle_can_be_checked_without_our_software(client, keys):
    ids = await seed_ledger(client, keys)
    r = await client.post("/v1/audit/checkpoints", headers=keys["compliance"])
    assert r.status_code == 201, r.text
    r = await client.get(
        "/v1/audit/evidence-bundle", headers=keys["compliance"], params={"email": ANNA}
    )
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["customer"]["profile_id"] == ids["anna"]
    assert bundle["customer"]["identifier"] == {"kind": "email", "value": ANNA}
    assert [e["seq"] for e in bundle["events"]] == [1, 2, 4, 5]
    assert bundle["chain"]["ok"] is True and bundle["chain"]["entries"] == 6
    assert len(bundle["how_to_verify"]) >= 5

    for event in bundle["events"]:  # step 2 of the instructions, with nothing but hashlib
        digest = hashlib.sha256(
            bytes.fromhex(event["prev_hash"]) + event["canonical"].encode()
        ).hexdigest()
        assert digest == event["hash"] and event["hash_valid"] is True
        names, values = bundle["chain"]["hashed_fields"], json.loads(event["canonical"])
        if event["subject"]["via_profile"] is not None:  # hashed last where recorded
            names = [*names, *bundle["chain"]["trailing_fields"]]
        fields = dict(zip(names, values, strict=True))
        assert fields.get("via_profile") == event["subject"]["via_profile"]
        assert fields["seq"] == event["seq"] and fields["status"] == event["status"]
        assert fields["wording_id"] == event["wording_id"]
        assert fields["policy_version"] == event["policy_version"]
    assert bundle["events"][0]["evidence"]["ip"] == "203.0.113.7"
    # the grants and the opt-out named her addresses; push is her profile's own
    reached = [(e["subject"]["kind"], e["subject"]["via_profile"]) for e in bundle["events"]]
    assert reached == [("email", False), ("phone", False), ("email", False), ("profile", None)]

    cp = bundle["checkpoint"]  # step 5: the signed statement
    assert cp["entries"] == 6 and cp["covers_all_events"] is True
    assert cp["head_hash"] == bundle["chain"]["head_hash"]
    Ed25519PublicKey.from_public_bytes(base64.b64decode(cp["public_key"])).verify(
        base64.b64decode(cp["signature"]), cp["statement"].encode()
    )

    log = (
        await client.get(
            "/v1/audit/access-log",
            headers=keys["admin"],
            params={"profile_id": ids["anna"], "actor": "compliance-key"},
        )
    ).json()
    reads = [i for i in log["items"] if i["action"] == "audit.evidence_bundle"]
    assert len(reads) == 1
    assert reads[0]["rows"] == 4 and reads[0]["role"] == "compliance"
    assert ANNA not in json.dumps(log)  # the log holds ids, never the address


async def test_an_erased_customer_keeps_a_provable_record_without_personal_data(
    client, keys, platform
):
    ids = await seed_ledger(client, keys)
    r = await client.post(
        "/v1/erasure-requests",
        headers=keys["admin"],
        json={"profile_id": ids["anna"], "requested_by": "customer"},
    )
    assert r.status_code == 202
    await run_pending(platform)  # in case the API left it to the worker
    r = await client.get(
        "/v1/audit/evidence-bundle", headers=keys["compliance"], params={"email": ANNA}
    )
    bundle = r.json()
    assert bundle["customer"]["status"] == "erased"
    assert [e["seq"] for e in bundle["events"]] == [1, 2, 4, 5]
    for event in bundle["events"]:
        assert event["evidence"] is None and event["hash_valid"] is True
        assert event["subject"]["address"] is None
    assert bundle["chain"]["ok"] is True
    assert "203.0.113.7" not in r.text and ANNA not in json.dumps(bundle["events"])


async def test_an_unknown_customer_has_no_bundle(client, keys):
    r = await client.get(
        "/v1/audit/evidence-bundle",
        headers=keys["compliance"],
        params={"email": "nobody@example.com"},
    )
    assert r.status_code == 404
    r = await client.get("/v1/audit/evidence-bundle", headers=keys["compliance"])
    assert r.status_code == 400


async def test_the_access_log_is_filtered_and_paginated(client, keys):
    ids = await seed_ledger(client, keys)
    for _ in range(3):
        r = await client.get(f"/v1/profiles/{ids['anna']}", headers=keys["admin"])
        assert r.status_code == 200
    r = await client.get(f"/v1/profiles/{ids['bob']}", headers=keys["compliance"])
    assert r.status_code == 200
    anna = (
        await client.get(
            "/v1/audit/access-log", headers=keys["compliance"], params={"profile_id": ids["anna"]}
        )
    ).json()
    assert [(i["action"], i["actor"]) for i in anna["items"]] == [("profile.read", "admin-key")] * 3
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (
            await client.get("/v1/audit/access-log", headers=keys["compliance"], params=params)
        ).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 4 and len({i["id"] for i in seen}) == 4
    assert [i["at"] for i in seen] == sorted(i["at"] for i in seen)
    later = (
        await client.get(
            "/v1/audit/access-log",
            headers=keys["compliance"],
            params={"since": seen[-1]["at"], "actor": "compliance-key"},
        )
    ).json()
    assert [i["profile_id"] for i in later["items"]] == [ids["bob"]]


async def test_reading_consent_events_is_logged(client, keys):
    ids = await seed_ledger(client, keys)
    await events(client, keys, profile_id=ids["bob"])
    log = (await client.get("/v1/audit/access-log", headers=keys["admin"])).json()
    entry = [i for i in log["items"] if i["action"] == "audit.consent_events"]
    assert len(entry) == 1
    assert (entry[0]["profile_id"], entry[0]["rows"]) == (ids["bob"], 1)


async def test_verify_names_the_first_bad_entry(client, keys, platform):
    await seed_ledger(client, keys)
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    body = r.json()
    assert body["ok"] is True and body["entries"] == 6 and body["first_invalid_seq"] is None
    assert len(body["head_hash"]) == 64
    await set_column(platform, 4, "purpose", "service")
    body = (await client.get("/v1/audit/verify", headers=keys["admin"])).json()
    assert (body["ok"], body["first_invalid_seq"], body["entries"]) == (False, 4, 3)


async def test_stored_checkpoints_are_listed_with_the_public_key(client, keys, platform):
    await seed_ledger(client, keys)
    await client.post("/v1/audit/checkpoints", headers=keys["admin"])
    body = (await client.get("/v1/audit/checkpoints", headers=keys["compliance"])).json()
    signer = signer_for(platform.settings)
    assert body["public_key"] == signer.public_key_b64
    assert [c["entries"] for c in body["items"]] == [6]
    assert body["items"][0]["key_id"] == signer.key_id


async def test_an_access_log_cursor_time_beyond_the_calendar_in_utc_is_a_400(client, keys):
    """A cursor is opaque but not signed: one naming 0001-01-01T00:00+10:56 (before year 1 in
    UTC) or 9999-12-31T23:59-05:00 (after 9999) was a 500 (OverflowError when bound), as the
    `since` filter once was; now a 400 naming the cursor."""
    for at in ("0001-01-01T00:00:00+10:56", "9999-12-31T23:59:59-05:00"):
        cursor = encode_cursor([at, "00000000-0000-0000-0000-000000000000"])
        r = await client.get(
            "/v1/audit/access-log", headers=keys["compliance"], params={"cursor": cursor}
        )
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["field"] == "cursor"
