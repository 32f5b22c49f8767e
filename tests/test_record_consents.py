"""Consents that records carry (POST /v1/profiles, cdp import): a grant reaches only the
record's own address, and one without a date never undoes a withdrawal or an opt-out."""

from __future__ import annotations

import csv
from datetime import UTC, datetime

from cdp.importer import run_import
from consent.suppressions import suppress
from tests.test_consent import GRANT, contactable

MARKETING_EMAIL = {
    "purpose": "marketing",
    "channel": "email",
    "status": "granted",
    "evidence": GRANT,
}
MARKETING_SMS = {**MARKETING_EMAIL, "channel": "sms", "evidence": {**GRANT, "wording_id": "sms-v1"}}


async def upsert(client, keys, **body):  # type: ignore[no-untyped-def]
    return await client.post("/v1/profiles", json={"source": "crm", **body}, headers=keys["ingest"])


async def test_a_grant_for_an_address_not_kept_reaches_no_other_address(client, keys):
    r = await upsert(
        client, keys, external_id="L-1", email="real@example.com", phone="+79167770001"
    )
    assert r.status_code == 201
    # the same customer, with an office line and a placeholder address, both not kept
    r = await upsert(
        client,
        keys,
        external_id="L-1",
        email="noreply@example.com",
        phone="+7 495 123-45-67 доб. 101",
        consents=[MARKETING_EMAIL, MARKETING_SMS],
    )
    assert r.status_code == 400
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"consents[0].channel", "consents[1].channel"}
    m = await contactable(client, keys, email="real@example.com")
    assert m["marketing"]["email"] is False and m["marketing"]["sms"] is False


async def test_a_grant_for_a_channel_the_record_has_no_address_on_is_refused(client, keys):
    await upsert(client, keys, external_id="S-1", phone="+79167770002")
    r = await upsert(
        client, keys, external_id="S-1", email="sms@example.com", consents=[MARKETING_SMS]
    )
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "consents[0].channel"
    m = await contactable(client, keys, phone="+79167770002")
    assert m["marketing"]["sms"] is False
    # a withdrawal without a phone still reaches the profile's phones: stopping is safe
    await upsert(client, keys, external_id="S-1", phone="+79167770002", consents=[MARKETING_SMS])
    assert (await contactable(client, keys, phone="+79167770002"))["marketing"]["sms"] is True
    r = await upsert(
        client,
        keys,
        external_id="S-1",
        email="sms@example.com",
        consents=[{"purpose": "marketing", "channel": "sms", "status": "withdrawn"}],
    )
    assert r.status_code in (200, 201)
    assert (await contactable(client, keys, phone="+79167770002"))["marketing"]["sms"] is False


async def test_an_undated_grant_from_a_record_never_undoes_an_opt_out(client, keys):
    r = await upsert(
        client, keys, external_id="M-1", email="ma@example.com", consents=[MARKETING_EMAIL]
    )
    assert r.status_code == 201
    assert (await contactable(client, keys, email="ma@example.com"))["marketing"]["email"] is True
    r = await client.post(
        "/v1/opt-outs", json={"email": "ma@example.com", "source": "esp"}, headers=keys["ingest"]
    )
    assert r.status_code == 200
    # the CRM syncs the same record again, its consent flag still set and undated
    r = await upsert(
        client, keys, external_id="M-1", email="ma@example.com", consents=[MARKETING_EMAIL]
    )
    assert r.status_code == 200
    assert (await contactable(client, keys, email="ma@example.com"))["marketing"]["email"] is False
    # a grant dated after the opt-out does resubscribe
    dated = {**MARKETING_EMAIL, "occurred_at": "2099-01-01T00:00:00Z"}
    r = await upsert(client, keys, external_id="M-1", email="ma@example.com", consents=[dated])
    assert r.status_code == 400  # the future is refused; now is after the opt-out
    from datetime import UTC, datetime

    dated["occurred_at"] = datetime.now(UTC).isoformat()
    r = await upsert(client, keys, external_id="M-1", email="ma@example.com", consents=[dated])
    assert r.status_code == 200
    assert (await contactable(client, keys, email="ma@example.com"))["marketing"]["email"] is True


async def test_an_undated_grant_never_undoes_a_withdrawal(client, keys):
    await upsert(client, keys, email="w@example.com", consents=[MARKETING_EMAIL])
    await upsert(
        client,
        keys,
        email="w@example.com",
        consents=[{"purpose": "marketing", "channel": "email", "status": "withdrawn"}],
    )
    await upsert(client, keys, email="w@example.com", consents=[MARKETING_EMAIL])
    assert (await contactable(client, keys, email="w@example.com"))["marketing"]["email"] is False


async def test_reimporting_a_stale_file_after_an_opt_out_keeps_the_customer_out(
    platform, tmp_path, client, keys
):
    src = tmp_path / "stale.csv"
    with src.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "email",
                "phone",
                "consent.marketing.email",
                "consent.marketing.email.wording_id",
                "consent.marketing.sms",
                "consent.marketing.sms.wording_id",
            ]
        )
        w.writerow(["stale@example.com", "", "granted", "nl-v1", "", ""])
        w.writerow(["nophone@example.com", "", "", "", "granted", "sms-v1"])
    first = await run_import(platform, src, "crm")
    assert first.consents_recorded == 1 and first.consents_rejected == 1
    rejects = src.with_name(src.name + ".rejects.csv").read_text(encoding="utf-8")
    assert "the record has no phone for this grant" in rejects
    assert (await contactable(client, keys, email="stale@example.com"))["marketing"]["email"]
    r = await client.post(
        "/v1/opt-outs", json={"email": "stale@example.com", "source": "esp"}, headers=keys["ingest"]
    )
    assert r.status_code == 200
    await run_import(platform, src, "crm")
    m = await contactable(client, keys, email="stale@example.com")
    assert m["marketing"]["email"] is False


async def test_an_opt_out_of_every_channel_from_one_address_stops_the_customer(client, keys):
    """ "Stop all marketing" said from an email address concerns the person: their phone and
    profile channels stop too, as a withdrawal of '*' by POST /v1/consents does."""
    every = [
        MARKETING_EMAIL,
        MARKETING_SMS,
        {**MARKETING_EMAIL, "channel": "push", "evidence": {**GRANT, "wording_id": "push-v1"}},
    ]
    for email, phone in (("all@example.com", "+79165550001"), ("one@example.com", "+79165550002")):
        r = await upsert(client, keys, email=email, phone=phone, consents=every)
        assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/opt-outs",
        json={"email": "all@example.com", "channel": "*", "source": "esp"},
        headers=keys["ingest"],
    )
    assert r.status_code == 200
    m = await contactable(client, keys, email="all@example.com")
    assert not any(m["marketing"].values())
    assert m["service"]["sms"] is True  # only the purpose named
    # an opt-out of one channel stays on that channel
    r = await client.post(
        "/v1/opt-outs",
        json={"email": "one@example.com", "channel": "email", "source": "esp"},
        headers=keys["ingest"],
    )
    m = await contactable(client, keys, email="one@example.com")
    assert m["marketing"]["email"] is False
    assert m["marketing"]["sms"] is True and m["marketing"]["push"] is True


async def test_the_consent_view_says_when_an_opt_out_outranks_a_grant(client, keys, platform):
    """After an erasure the address stays suppressed; a grant imported later that is older than
    the suppression is the address's state, but does not make it contactable: the view says
    so instead of a bare "granted"."""
    dated = {**MARKETING_EMAIL, "occurred_at": "2026-01-01T00:00:00Z"}
    r = await upsert(client, keys, email="view@example.com", consents=[dated])
    pid = r.json()["profile_id"]

    async def items():  # type: ignore[no-untyped-def]
        r = await client.get(f"/v1/profiles/{pid}/consents", headers=keys["admin"])
        return [(i["status"], i["suppressed"]) for i in r.json()["items"]]

    assert await items() == [("granted", False)]
    async with platform.db.write() as conn:  # what an erased customer's opt-out leaves behind
        await suppress(
            conn,
            platform.keys.indexer.email("view@example.com"),
            "marketing",
            "*",
            reason="erasure",
            source="test",
            at=datetime(2026, 6, 1, tzinfo=UTC),
        )
    assert await items() == [("granted", True)]
    assert (await contactable(client, keys, email="view@example.com"))["marketing"][
        "email"
    ] is False


async def test_the_ledger_and_the_state_still_verify_after_undated_grants_and_opt_outs(
    client, keys
):
    """An undated grant kept from the state (the address had opted out or withdrawn) is in the
    ledger as not effective: audit verification, which re-derives the state from the ledger,
    must not take it for a grant the state lost."""
    r = await upsert(
        client,
        keys,
        external_id="V-1",
        email="v@example.com",
        phone="+79161110001",
        consents=[MARKETING_EMAIL, MARKETING_SMS],
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/opt-outs", json={"email": "v@example.com", "source": "esp"}, headers=keys["ingest"]
    )
    assert r.status_code == 200
    await upsert(client, keys, external_id="V-1", email="v@example.com", consents=[MARKETING_EMAIL])
    withdrawn = {"purpose": "marketing", "channel": "email", "status": "withdrawn"}
    await upsert(client, keys, email="w2@example.com", consents=[MARKETING_EMAIL])
    await upsert(client, keys, email="w2@example.com", consents=[withdrawn])
    await upsert(client, keys, email="w2@example.com", consents=[MARKETING_EMAIL])
    body = (await client.get("/v1/audit/verify", headers=keys["compliance"])).json()
    assert body["ok"] is True, body
    assert body["state_mismatches"] == 0


async def test_a_grant_of_a_record_whose_merge_was_refused_does_not_reach_the_other_customer(
    client, keys
):
    """The guards refused to join the record to the customer holding its phone (another CRM
    customer): the record is stored without that phone, so its sms grant is not Bob's consent
    and must not make Bob's phone contactable, nor be recorded on it."""
    alice = await upsert(client, keys, external_id="C-1", email="alice@example.com")
    bob = await upsert(client, keys, external_id="C-2", phone="+79160000222")
    r = await client.post(
        "/v1/profiles",
        headers=keys["ingest"],
        json={
            "source": "shop",
            "email": "alice@example.com",
            "phone": "+79160000222",
            "consents": [MARKETING_SMS],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["profile_id"] == alice.json()["profile_id"] and body["review_id"]
    assert {"field": "consents", "message": "a sms grant: its address was not kept"} in [
        {"field": e["field"], "message": e["message"]} for e in body["ignored"]
    ]
    assert (await contactable(client, keys, phone="+79160000222"))["marketing"]["sms"] is False
    r = await client.get(
        "/v1/audit/consent-events", params={"phone": "+79160000222"}, headers=keys["compliance"]
    )
    assert r.json()["items"] == []
    assert bob.json()["profile_id"] != body["profile_id"]
