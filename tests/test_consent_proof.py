"""'Prove this customer consented to advertising SMS on this number on that date': the officer
gets, for one number, every ledger entry with its evidence (wording, method, time, source, who
recorded it, the policy version), after the profile was merged with another, the number opted
out and granted again, an import carried an older grant, and the master key was rotated; the
ledger verifies throughout."""

from __future__ import annotations

from api.app import create_app
from cdp.crypto.master import MasterKey
from cdp.keyring import rotate_master_key
from cdp.platform import open_platform
from tests.conftest import make_settings

PHONE = "+79035550101"
GRANT = {
    "wording_id": "sms-ads-v4",
    "method": "double_opt_in",
    "ip": "203.0.113.41",
    "user_agent": "ProofBrowser/2",
    "page_url": "https://shop.example/sms",
}


async def post(client, keys, path: str, body: dict) -> dict:  # type: ignore[no-untyped-def]
    r = await client.post(path, json=body, headers=keys["ingest"])
    assert r.status_code in (200, 201), r.text
    return r.json()


async def sms_events(client, headers) -> list[dict]:  # type: ignore[no-untyped-def]
    params = {"phone": "8 903 555-01-01", "purpose": "marketing", "channel": "sms"}
    r = await client.get("/v1/audit/consent-events", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def test_the_proof_of_an_sms_grant_survives_what_happens_to_the_customer(
    client, keys, platform, tmp_path
):
    shop = await post(client, keys, "/v1/profiles", {"source": "shop", "phone": PHONE})
    await post(
        client,
        keys,
        "/v1/consents",
        {
            "phone": PHONE,
            "purpose": "marketing",
            "channel": "sms",
            "status": "granted",
            "source": "web_form",
            "occurred_at": "2026-10-01T10:00:00Z",
            "evidence": GRANT,
        },
    )
    crm = await post(client, keys, "/v1/profiles", {"source": "crm", "email": "proof@example.com"})
    # a record that links the two: the younger profile is merged into the older one
    link = await post(
        client,
        keys,
        "/v1/profiles",
        {"source": "callcenter", "phone": PHONE, "email": "proof@example.com"},
    )
    assert link["profile_id"] == shop["profile_id"]
    assert link["merged_profile_ids"] == [crm["profile_id"]]
    await post(
        client,
        keys,
        "/v1/opt-outs",
        {"phone": PHONE, "channel": "sms", "source": "sms", "occurred_at": "2026-10-10T08:00:00Z"},
    )
    # an import of last year's CRM file, carrying an older grant: recorded, not effective
    old = await post(
        client,
        keys,
        "/v1/profiles",
        {
            "source": "crm-2025",
            "phone": PHONE,
            "consents": [
                {
                    "purpose": "marketing",
                    "channel": "sms",
                    "status": "granted",
                    "occurred_at": "2025-06-01T00:00:00Z",
                    "evidence": {"wording_id": "sms-ads-v1", "method": "import"},
                }
            ],
        },
    )
    assert old["profile_id"] == shop["profile_id"]
    await post(
        client,
        keys,
        "/v1/consents",
        {
            "phone": PHONE,
            "purpose": "marketing",
            "channel": "sms",
            "status": "granted",
            "source": "web_form",
            "occurred_at": "2026-11-01T10:00:00Z",
            "evidence": {**GRANT, "wording_id": "sms-ads-v5"},
        },
    )

    new_key = MasterKey.generate_base64()
    await rotate_master_key(platform.db, platform.keys.master, MasterKey.from_base64(new_key))
    rotated = await open_platform(
        make_settings(platform.settings.database_url, tmp_path, master_key=new_key),
        run_migrations=False,
    )
    try:
        import httpx

        transport = httpx.ASGITransport(app=create_app(platform=rotated))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            items = await sms_events(c, keys["compliance"])
            verify = (await c.get("/v1/audit/verify", headers=keys["compliance"])).json()
            consents = (
                await c.get(
                    f"/v1/profiles/{shop['profile_id']}/consents", headers=keys["compliance"]
                )
            ).json()
    finally:
        await rotated.close()

    assert [(i["status"], i["method"], i["wording_id"], i["effective"]) for i in items] == [
        ("granted", "double_opt_in", "sms-ads-v4", True),
        ("withdrawn", "opt_out", None, True),
        ("granted", "import", "sms-ads-v1", False),
        ("granted", "double_opt_in", "sms-ads-v5", True),
    ]
    first = items[0]
    assert first["occurred_at"] == "2026-10-01T10:00:00Z"
    assert first["source"] == "web_form" and first["actor"] == "ingest-key"
    assert first["policy_version"] and first["recorded_at"]
    assert first["evidence"] == GRANT and first["evidence_readable"] is True
    assert {i["subject"]["address"] for i in items} == {PHONE}
    assert items[-1]["evidence"]["wording_id"] == "sms-ads-v5"
    assert verify["ok"] is True, verify
    assert consents["contactable"]["marketing"]["sms"] is True
