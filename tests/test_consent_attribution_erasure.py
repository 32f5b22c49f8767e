"""Whose consent an entry on an erased address is: the erased customer's, not the customer
whose profile id it names because the two were merged when it was recorded (a merge since
undone). An entry recorded before an address's erasure counts as this customer's only when
that erasure was theirs."""

from __future__ import annotations

from tests.test_consent_attribution import OTHER_PHONE, mentions_other, merged_then_split
from tests.test_unmerge import ANNA


async def access(client, keys, **ident) -> dict:  # type: ignore[no-untyped-def]
    r = await client.post("/v1/access-requests", json=ident, headers=keys["compliance"])
    assert r.status_code == 200, r.text
    return r.json()


async def test_the_other_customers_grant_does_not_come_back_to_her_after_his_erasure(
    client, keys, platform
):
    from consent.dsr.worker import run_pending

    anna, other = await merged_then_split(client, keys)
    h = keys["compliance"]
    before = await access(client, keys, email=ANNA["email"])
    assert not mentions_other(before)  # right after the unmerge: not hers
    r = await client.post(
        "/v1/erasure-requests", json={"profile_id": other, "requested_by": "customer"}, headers=h
    )
    assert r.status_code == 202
    await run_pending(platform)
    after = await access(client, keys, email=ANNA["email"])
    sms = [c for c in after["consent_history"] if c["channel"] == "sms"]
    assert sms == [], sms  # his sms grant (wording sms-v2, checkbox) is not hers
    assert not mentions_other(after)
    r = await client.get("/v1/audit/consent-events", params={"email": ANNA["email"]}, headers=h)
    assert r.json()["items"] == []
    r = await client.get("/v1/audit/consent-events", params={"profile_id": anna}, headers=h)
    assert r.json()["items"] == []

    # his, by his erased number (the entry names the merged profile, hers: by his profile id
    # alone, his number deleted with him, it is not found; that is unchanged)
    r = await client.get("/v1/audit/consent-events", params={"phone": OTHER_PHONE}, headers=h)
    assert [i["wording_id"] for i in r.json()["items"]] == ["sms-v2"]
    assert (await client.get("/v1/audit/verify", headers=h)).json()["ok"] is True


async def test_her_grant_on_an_address_erased_with_her_stays_hers(client, keys, platform):
    """The other side: her own grant on her own number, her number erased with her, stays
    hers by her profile id (and her erasure's), as before."""
    from consent.dsr.worker import run_pending
    from tests.test_unmerge import post

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
            "evidence": {"wording_id": "sms-v2", "method": "checkbox"},
        },
    )
    r = await client.post(
        "/v1/erasure-requests", json={"profile_id": anna, "requested_by": "customer"}, headers=h
    )
    assert r.status_code == 202
    await run_pending(platform)
    r = await client.get("/v1/audit/consent-events", params={"profile_id": anna}, headers=h)
    assert [i["channel"] for i in r.json()["items"]] == ["sms"]
