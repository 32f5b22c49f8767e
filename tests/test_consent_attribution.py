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
