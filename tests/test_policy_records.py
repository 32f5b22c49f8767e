"""Which policy decided what: every hand-out of contacts (members pages, ad-hoc queries,
exports) names in the access log the policy version it was decided under, as consent events
name theirs in the ledger."""

from __future__ import annotations

GRANT = {
    "email": "anna@example.com",
    "purpose": "marketing",
    "channel": "email",
    "status": "granted",
    "source": "web_form",
    "evidence": {"wording_id": "newsletter-v3", "method": "double_opt_in"},
}
SEGMENT = {"name": "all", "purpose": "marketing", "channel": "email", "rules": {"all": []}}


async def test_every_hand_out_of_contacts_names_the_policy_version_that_decided(
    client, keys, platform
):
    r = await client.post("/v1/consents", json=GRANT, headers=keys["ingest"])
    assert r.status_code == 201, r.text
    sid = (await client.post("/v1/segments", json=SEGMENT, headers=keys["marketing"])).json()["id"]
    page = await client.get(f"/v1/segments/{sid}/members", headers=keys["marketing"])
    assert [m["address"] for m in page.json()["items"]] == ["anna@example.com"]
    query = {k: SEGMENT[k] for k in ("purpose", "channel", "rules")}
    r = await client.post("/v1/segments/query", json=query, headers=keys["marketing"])
    assert len(r.json()["items"]) == 1
    export = await client.get(f"/v1/segments/{sid}/export?format=ndjson", headers=keys["admin"])
    assert export.status_code == 200 and "anna@example.com" in export.text

    log = (await client.get("/v1/audit/access-log", headers=keys["compliance"])).json()["items"]
    decided = {i["action"]: i["detail"] for i in log if i["action"].startswith("segment.")}
    assert {"segment.members", "segment.query", "segment.export"} <= set(decided)
    for action, detail in decided.items():
        assert detail["policy_version"] == platform.policy.version, action
    events = await client.get(
        "/v1/audit/consent-events", params={"email": "anna@example.com"}, headers=keys["admin"]
    )
    assert events.json()["items"][0]["policy_version"] == platform.policy.version
