"""A consent record stays with the customer it is about: after a wrong merge is undone, the
grant the other customer gave on their own number while the two were merged is theirs (their
access request, their consent events, their evidence bundle), and none of it (their number,
their IP address, their browser) appears in the first customer's."""

from __future__ import annotations

import json

from tests.test_unmerge import ANNA, OTHER, WRONG_LINK, post

OTHER_PHONE = "+79161234567"
OTHER_EVIDENCE = {
    "wording_id": "sms-v2",
    "method": "checkbox",
    "ip": "198.51.100.9",
    "user_agent": "OtherBrowser/9",
}


async def merged_then_split(client, keys):  # type: ignore[no-untyped-def]
    anna = (await post(client, keys, "/v1/profiles", ANNA))["profile_id"]
    other = (await post(client, keys, "/v1/profiles", OTHER))["profile_id"]
    link = await post(client, keys, "/v1/profiles", WRONG_LINK)
    assert link["merged_profile_ids"] == [other]
    await post(
        client,
        keys,
        "/v1/consents",
        {
            "phone": OTHER_PHONE,
            "purpose": "marketing",
            "channel": "sms",
            "status": "granted",
            "source": "web_form",
            "occurred_at": "2026-11-05T09:00:00Z",
            "evidence": OTHER_EVIDENCE,
        },
    )
    r = await client.post(f"/v1/profiles/{anna}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    return anna, other


def mentions_other(body: object) -> bool:
    text = json.dumps(body, ensure_ascii=False)
    return any(v in text for v in (OTHER_PHONE, "198.51.100.9", "OtherBrowser/9", "sms-v2"))


async def test_an_unmerged_customers_grant_is_theirs_and_not_in_the_other_half(client, keys):
    anna, other = await merged_then_split(client, keys)
    h = keys["compliance"]

    r = await client.post("/v1/access-requests", json={"email": ANNA["email"]}, headers=h)
    assert r.status_code == 200, r.text
    assert not mentions_other(r.json()), r.json()["consent_history"]
    assert other not in r.text  # not even the other customer's profile id
    [undone] = r.json()["merges"]  # the wrong merge is told, the other party is not named
    assert (undone["survivor_id"], undone["absorbed_id"]) == (anna, None)
    assert undone["undone_at"] is not None
    r = await client.get("/v1/audit/consent-events", params={"email": ANNA["email"]}, headers=h)
    assert r.status_code == 200 and r.json()["items"] == [], r.json()
    r = await client.get("/v1/audit/evidence-bundle", params={"profile_id": anna}, headers=h)
    assert r.status_code == 200 and r.json()["events"] == []

    r = await client.post("/v1/access-requests", json={"phone": OTHER_PHONE}, headers=h)
    assert r.json()["profile_id"] == other
    grants = [c for c in r.json()["consent_history"] if c["channel"] == "sms"]
    assert [(g["address"], g["evidence"]) for g in grants] == [(OTHER_PHONE, OTHER_EVIDENCE)]
    r = await client.get("/v1/audit/consent-events", params={"phone": OTHER_PHONE}, headers=h)
    [item] = r.json()["items"]
    assert item["subject"]["address"] == OTHER_PHONE and item["evidence"] == OTHER_EVIDENCE


async def test_their_proof_survives_the_erasure_of_the_customer_they_were_wrongly_merged_with(
    client, keys, platform
):
    """The grant was recorded while the two were merged, so its evidence was encrypted under the
    merged profile's key, which the first customer's erasure destroys: the other customer's
    proof of consent must not be destroyed with it."""
    from consent.dsr.worker import run_pending
    from tests.helpers import holds_plaintext, raw_database_bytes

    anna, other = await merged_then_split(client, keys)
    h = keys["compliance"]
    r = await client.post(
        "/v1/erasure-requests",
        json={"profile_id": anna, "requested_by": "customer"},
        headers=h,
    )
    assert r.status_code == 202, r.text
    await run_pending(platform)
    assert (await client.get(f"/v1/profiles/{anna}", headers=h)).status_code == 410

    r = await client.get("/v1/audit/consent-events", params={"phone": OTHER_PHONE}, headers=h)
    [item] = r.json()["items"]
    assert item["evidence_readable"] is True and item["evidence"] == OTHER_EVIDENCE
    r = await client.get("/v1/audit/evidence-bundle", params={"phone": OTHER_PHONE}, headers=h)
    [event] = r.json()["events"]
    assert event["evidence"] == OTHER_EVIDENCE and event["hash_valid"] is True
    r = await client.post("/v1/access-requests", json={"profile_id": other}, headers=h)
    [grant] = [c for c in r.json()["consent_history"] if c["channel"] == "sms"]
    assert grant["evidence"] == OTHER_EVIDENCE
    verify = (await client.get("/v1/audit/verify", headers=h)).json()
    assert verify["ok"] is True, verify
    raw = await raw_database_bytes(platform)
    assert not holds_plaintext(raw, "198.51.100.9")  # the copy is encrypted too

    # and when the other customer is erased in turn, their evidence goes with them
    r = await client.post(
        "/v1/erasure-requests",
        json={"profile_id": other, "requested_by": "customer"},
        headers=h,
    )
    await run_pending(platform)
    r = await client.get("/v1/audit/consent-events", params={"phone": OTHER_PHONE}, headers=h)
    [item] = r.json()["items"]
    assert item["evidence"] is None and item["evidence_readable"] is False
    # the erased number still leads to its own customer, not to the one it was merged with
    r = await client.get("/v1/audit/evidence-bundle", params={"phone": OTHER_PHONE}, headers=h)
    customer = r.json()["customer"]
    assert (customer["profile_id"], customer["status"]) == (other, "erased")
    assert (await client.get("/v1/audit/verify", headers=h)).json()["ok"] is True


async def test_a_reassigned_number_does_not_carry_its_former_owners_consent_record(
    client, keys, platform
):
    """Phone numbers are reassigned: after Anna's erasure the number went to Bob. Anna's grant
    on it is not Bob's consent: not in Bob's access request, nor in the consent events an
    officer reads to prove Bob's consent; Anna's record stays provable by her profile id."""
    from consent.dsr.worker import run_pending

    h = keys["compliance"]
    anna = (await post(client, keys, "/v1/profiles", {"source": "crm", "phone": OTHER_PHONE}))[
        "profile_id"
    ]
    await post(
        client,
        keys,
        "/v1/consents",
        {
            "phone": OTHER_PHONE,
            "purpose": "marketing",
            "channel": "sms",
            "status": "granted",
            "source": "web_form",
            "occurred_at": "2026-11-05T09:00:00Z",
            "evidence": OTHER_EVIDENCE,
        },
    )
    r = await client.post(
        "/v1/erasure-requests", json={"profile_id": anna, "requested_by": "customer"}, headers=h
    )
    await run_pending(platform)
    bob = (await post(client, keys, "/v1/profiles", {"source": "shop", "phone": OTHER_PHONE}))[
        "profile_id"
    ]
    assert bob != anna

    r = await client.post("/v1/access-requests", json={"phone": OTHER_PHONE}, headers=h)
    assert r.json()["profile_id"] == bob
    assert r.json()["consent_history"] == []
    r = await client.get(
        "/v1/audit/consent-events",
        params={"phone": OTHER_PHONE, "purpose": "marketing", "channel": "sms"},
        headers=h,
    )
    assert r.json()["items"] == []
    r = await client.get("/v1/audit/consent-events", params={"profile_id": anna}, headers=h)
    [grant] = r.json()["items"]
    assert grant["wording_id"] == "sms-v2" and grant["evidence_readable"] is False
    r = await client.get(f"/v1/profiles/{bob}/consents", headers=h)
    assert r.json()["contactable"]["marketing"]["sms"] is False
