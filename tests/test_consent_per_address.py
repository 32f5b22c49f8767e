"""Consent to email, sms and phone belongs to the address (API.md, POLICIES.md: opt-in per
address). A grant that names an email or phone is for that address only, on the channels of
its kind: an email cannot agree to texts on the customer's phones, nor a phone to mail on
their emails. Such a grant is a 400 on `channel` that stores nothing. Push and messenger
reach the profile, so a grant of those naming an address reaches the profile holding it.
Withdrawals keep reaching more (stopping is the safe side)."""

from __future__ import annotations

from cdp.db.tables import profiles
from consent.tables import consent_ledger, consent_state, suppressions
from tests.helpers import contactable, count, segment_members

EV = {"wording_id": "w-v1", "method": "checkbox"}
EMAIL = "a@example.com"
PHONE = "+79161234567"


async def customer(client, keys) -> str:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": EMAIL, "phone": PHONE, "country": "RU"},
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    return r.json()["profile_id"]


def grant(channel: str, **ident: str) -> dict:  # type: ignore[type-arg]
    return {
        **ident,
        "purpose": "marketing",
        "channel": channel,
        "status": "granted",
        "source": "web_form",
        "evidence": EV,
    }


async def test_grant_naming_an_email_does_not_reach_the_customers_phone(client, keys, platform):
    pid = await customer(client, keys)
    before = await count(platform, consent_ledger)
    r = await client.post("/v1/consents", json=grant("sms", email=EMAIL), headers=keys["ingest"])
    # API.md: consent belongs to the address the event names; the phone never agreed
    assert r.status_code == 400, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["channel"]
    assert EMAIL not in r.text and PHONE not in r.text
    assert await count(platform, consent_ledger) == before
    assert (await contactable(client, keys, pid))["marketing"]["sms"] is False
    assert (await contactable(client, keys, pid))["marketing"]["phone"] is False
    r = await client.post("/v1/consents", json=grant("phone", email=EMAIL), headers=keys["ingest"])
    assert r.status_code == 400, r.text
    assert await segment_members(client, keys, "marketing", "sms") == []
    assert await segment_members(client, keys, "marketing", "phone") == []


async def test_grant_naming_a_phone_does_not_reach_the_customers_email(client, keys, platform):
    pid = await customer(client, keys)
    before = await count(platform, consent_ledger)
    r = await client.post("/v1/consents", json=grant("email", phone=PHONE), headers=keys["ingest"])
    assert r.status_code == 400, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["channel"]
    assert await count(platform, consent_ledger) == before
    assert (await contactable(client, keys, pid))["marketing"]["email"] is False
    assert await segment_members(client, keys, "marketing", "email") == []


async def test_a_refused_grant_for_an_unseen_address_creates_no_customer(client, keys, platform):
    r = await client.post(
        "/v1/consents", json=grant("sms", email="new@example.com"), headers=keys["ingest"]
    )
    assert r.status_code == 400, r.text
    for table in (profiles, consent_ledger, consent_state, suppressions):
        assert await count(platform, table) == 0


async def test_a_grant_naming_an_address_reaches_that_address_only(client, keys):
    pid = await customer(client, keys)
    other = "+79161234568"
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": EMAIL, "phone": other},
        headers=keys["ingest"],
    )
    assert r.json()["profile_id"] == pid
    r = await client.post("/v1/consents", json=grant("sms", phone=PHONE), headers=keys["ingest"])
    assert r.status_code == 201, r.text
    assert len(r.json()["events"]) == 1
    got = await segment_members(client, keys, "marketing", "sms")
    assert [m["address"] for m in got] == [PHONE]
    view = (await client.get(f"/v1/profiles/{pid}/consents", headers=keys["admin"])).json()
    granted = {(i["channel"], i["address"]) for i in view["items"] if i["status"] == "granted"}
    assert granted == {("sms", PHONE)}


async def test_a_push_grant_naming_an_email_reaches_the_profile(client, keys):
    pid = await customer(client, keys)
    r = await client.post("/v1/consents", json=grant("push", email=EMAIL), headers=keys["ingest"])
    assert r.status_code == 201, r.text
    m = (await contactable(client, keys, pid))["marketing"]
    assert m["push"] is True
    assert m["email"] is False and m["sms"] is False


async def test_a_grant_naming_the_profile_reaches_its_addresses_of_the_kind(client, keys):
    pid = await customer(client, keys)
    r = await client.post("/v1/consents", json=grant("sms", profile_id=pid), headers=keys["ingest"])
    assert r.status_code == 201, r.text
    m = (await contactable(client, keys, pid))["marketing"]
    assert m["sms"] is True and m["email"] is False


async def test_a_withdrawal_naming_an_email_still_stops_the_customers_phones(client, keys):
    pid = await customer(client, keys)
    r = await client.post("/v1/consents", json=grant("sms", phone=PHONE), headers=keys["ingest"])
    assert r.status_code == 201, r.text
    assert (await contactable(client, keys, pid))["marketing"]["sms"] is True
    withdrawal = {**grant("sms", email=EMAIL), "status": "withdrawn"}
    del withdrawal["evidence"]
    r = await client.post("/v1/consents", json=withdrawal, headers=keys["ingest"])
    assert r.status_code == 201, r.text  # stopping more than asked is the safe side
    assert (await contactable(client, keys, pid))["marketing"]["sms"] is False
    assert await segment_members(client, keys, "marketing", "sms") == []
