"""EU soft opt-in (ePrivacy art. 13(2)), where the operator enables it: an existing customer
may get advertising email without a grant, until they object."""

from __future__ import annotations

import pytest

from consent.policy import load_policy
from tests.test_advertisers import policies_with_partner
from tests.test_rule import with_soft_opt_in

ALL = {"field": "jurisdiction", "op": "eq", "value": "EU"}


async def add(client, keys, email, *, bought: bool):  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/profiles",
        json={"source": "shop", "email": email, "country": "DE"},
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    if bought:
        r = await client.post(
            "/v1/events",
            json={
                "source": "shop",
                "event_id": f"o-{email}",
                "type": "purchase",
                "email": email,
                "amount": "40.00",
                "currency": "EUR",
                "occurred_at": "2026-11-01T10:00:00Z",
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text


async def members(client, keys, purpose: str = "marketing") -> set[str]:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/segments/query",
        json={"purpose": purpose, "channel": "email", "rules": ALL, "limit": 100},
        headers=keys["marketing"],
    )
    assert r.status_code == 200, r.text
    return {m["address"] for m in r.json()["items"]}


@pytest.mark.parametrize("enabled", [False, True])
async def test_existing_customers_get_advertising_email_only_where_enabled(
    client, keys, platform, enabled
):
    if enabled:
        platform.policy = with_soft_opt_in(platform.policy)
    await add(client, keys, "buyer@example.de", bought=True)
    await add(client, keys, "browser@example.de", bought=False)
    await add(client, keys, "objector@example.de", bought=True)
    r = await client.post(
        "/v1/opt-outs",
        json={"email": "objector@example.de", "source": "esp"},
        headers=keys["ingest"],
    )
    assert r.status_code == 200
    assert await members(client, keys) == ({"buyer@example.de"} if enabled else set())
    r = await client.get("/v1/profiles?email=buyer@example.de", headers=keys["admin"])
    contactable = r.json()["consents"]["contactable"]
    assert contactable["marketing"]["email"] is enabled
    assert contactable["marketing"]["sms"] is False
    r = await client.post(
        "/v1/segments",
        json={"name": "EU", "purpose": "marketing", "channel": "email", "rules": ALL},
        headers=keys["marketing"],
    )
    stats = await client.get(f"/v1/segments/{r.json()['id']}/stats", headers=keys["marketing"])
    body = stats.json()
    assert (body["matched"], body["contactable"]) == (3, 1 if enabled else 0)
    assert body["excluded"].get("no_consent") == (1 if enabled else 2)
    assert sum(body["excluded"].values()) == body["matched"] - body["contactable"]


async def test_soft_opt_in_never_reaches_a_partners_advertising(client, keys, platform, tmp_path):
    """ePrivacy art. 13(2) lets the seller advertise *its own* similar products to its customer
    by email: never another advertiser's. With EU soft opt-in on and a partner's advertising as
    a purpose of its own (policies/policy.toml's template), a buyer gets the shop's advertising
    email without a grant, and the partner's only with one."""
    directory = policies_with_partner(tmp_path)
    eu = directory / "jurisdictions" / "EU.toml"
    text = eu.read_text(encoding="utf-8")
    assert "soft_opt_in = false" in text
    eu.write_text(text.replace("soft_opt_in = false", "soft_opt_in = true", 1), encoding="utf-8")
    platform.policy = load_policy(directory)
    await add(client, keys, "buyer@example.de", bought=True)

    r = await client.get("/v1/profiles?email=buyer@example.de", headers=keys["admin"])
    contactable = r.json()["consents"]["contactable"]
    assert contactable["marketing"]["email"] is True
    assert contactable["marketing_partner"]["email"] is False
    assert await members(client, keys) == {"buyer@example.de"}
    assert await members(client, keys, purpose="marketing_partner") == set()
