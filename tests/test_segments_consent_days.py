"""`consent_days`: days since the customer's newest grant for the segment's purpose on its
channel, for a welcome series (new subscribers) or a re-permission campaign (old consent)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

NOW = datetime.now(UTC)


def ago(days: int) -> str:
    return (NOW - timedelta(days=days, minutes=5)).isoformat()


async def customer(client, keys, **identifiers: str) -> str:
    r = await client.post(
        "/v1/profiles",
        json={"source": "shop", "country": "RU", **identifiers},
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    return r.json()["profile_id"]


async def consent(client, keys, status: str, days: int, channel: str = "email", **who: str):
    body = {
        "purpose": "marketing",
        "channel": channel,
        "status": status,
        "source": "web_form",
        "occurred_at": ago(days),
        "evidence": {"wording_id": "news-v1", "method": "checkbox"},
        **who,
    }
    r = await client.post("/v1/consents", json=body, headers=keys["ingest"])
    assert r.status_code == 201, r.text


async def members(client, keys, rules: dict, channel: str = "email") -> set[str]:
    r = await client.post(
        "/v1/segments/query",
        json={"purpose": "marketing", "channel": channel, "rules": rules, "limit": 100},
        headers=keys["marketing"],
    )
    assert r.status_code == 200, r.text
    return {m["profile_id"] for m in r.json()["items"]}


def days(op: str, value: int | bool) -> dict:
    return {"field": "consent_days", "op": op, "value": value}


@pytest.fixture
async def base(client, keys) -> dict[str, str]:
    ids = {
        "fresh": await customer(client, keys, email="fresh@example.com"),
        "old": await customer(client, keys, email="old@example.com"),
        "withdrawn": await customer(client, keys, email="withdrawn@example.com"),
        "never": await customer(client, keys, email="never@example.com"),
        "two": await customer(client, keys, email="two.old@example.com"),
        "mobile": await customer(client, keys, email="mobile@example.com", phone="+79161234567"),
    }
    await consent(client, keys, "granted", 2, email="fresh@example.com")
    await consent(client, keys, "granted", 800, email="old@example.com")
    await consent(client, keys, "granted", 800, email="withdrawn@example.com")
    await consent(client, keys, "withdrawn", 10, email="withdrawn@example.com")
    # a second address of the same customer, granted lately: their newest grant counts
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "external_id": "T-2", "email": "two.old@example.com"},
        headers=keys["ingest"],
    )
    assert r.json()["profile_id"] == ids["two"]
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "external_id": "T-2", "email": "two.new@example.com"},
        headers=keys["ingest"],
    )
    assert r.json()["profile_id"] == ids["two"]
    await consent(client, keys, "granted", 900, email="two.old@example.com")
    await consent(client, keys, "granted", 3, email="two.new@example.com")
    # consent on each channel is its own: email long ago, sms yesterday
    await consent(client, keys, "granted", 500, email="mobile@example.com")
    await consent(client, keys, "granted", 1, channel="sms", phone="+79161234567")
    return ids


async def test_new_subscribers_and_old_consent(client, keys, base):
    b = base
    assert await members(client, keys, days("lte", 7)) == {b["fresh"], b["two"]}
    assert await members(client, keys, days("gte", 730)) == {b["old"]}
    assert await members(client, keys, days("gt", 400)) == {b["old"], b["mobile"]}
    assert await members(client, keys, days("eq", 2)) == {b["fresh"]}
    everyone = {b["fresh"], b["old"], b["two"], b["mobile"]}  # the contactable ones
    assert await members(client, keys, days("exists", True)) == everyone
    assert await members(client, keys, {"not": days("lte", 7)}) == {b["old"], b["mobile"]}
    # the channel's own consent: on sms, the mobile customer subscribed yesterday
    assert await members(client, keys, days("lte", 7), channel="sms") == {b["mobile"]}


async def test_stats_count_customers_without_a_grant_in_force(client, keys, base):
    """Matched by `exists: false`: no grant in force (never given, or withdrawn since), and
    so none of them contactable."""
    r = await client.post(
        "/v1/segments",
        json={
            "name": "no consent",
            "purpose": "marketing",
            "channel": "email",
            "rules": days("exists", False),
        },
        headers=keys["marketing"],
    )
    assert r.status_code == 201, r.text
    stats = await client.get(f"/v1/segments/{r.json()['id']}/stats", headers=keys["marketing"])
    body = stats.json()
    assert (body["matched"], body["contactable"]) == (2, 0)
    assert body["excluded"]["no_consent"] + body["excluded"]["withdrawn"] == 2


async def test_consent_on_the_profile_itself_for_push(client, keys):
    pid = await customer(client, keys, email="app.user@example.com")
    other = await customer(client, keys, email="app.old@example.com")
    await consent(client, keys, "granted", 5, channel="push", profile_id=pid)
    await consent(client, keys, "granted", 90, channel="push", profile_id=other)
    assert await members(client, keys, days("lte", 7), channel="push") == {pid}
    assert await members(client, keys, days("gte", 30), channel="push") == {other}


async def test_an_op_that_does_not_fit_is_a_400_naming_it(client, keys):
    r = await client.post(
        "/v1/segments/query",
        json={"purpose": "marketing", "channel": "email", "rules": days("contains", 3)},
        headers=keys["marketing"],
    )
    assert r.status_code == 400, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["rules.op"]


async def test_a_nightly_sync_repeating_a_grant_without_its_date_does_not_make_it_new(client, keys):
    """A CRM sync sends every subscriber's consent column again, undated (when it was given is
    unknown): it says nothing new about when the customer subscribed, so it neither puts old
    subscribers in the welcome series nor keeps them out of a re-permission campaign."""
    pid = await customer(client, keys, email="loyal@example.com")
    await consent(client, keys, "granted", 800, email="loyal@example.com")
    assert await members(client, keys, days("gte", 730)) == {pid}
    synced = {
        "source": "crm",
        "email": "loyal@example.com",
        "consents": [
            {
                "purpose": "marketing",
                "channel": "email",
                "status": "granted",
                "evidence": {"wording_id": "news-v1"},
            }
        ],
    }
    for _night in range(2):
        r = await client.post("/v1/profiles", json=synced, headers=keys["ingest"])
        assert r.status_code in (200, 201), r.text
        assert r.json()["profile_id"] == pid
    assert await members(client, keys, days("lte", 7)) == set()
    assert await members(client, keys, days("gte", 730)) == {pid}
    # a new customer's undated grant is their first known one: welcome
    new = {**synced, "email": "newcomer@example.com"}
    r = await client.post("/v1/profiles", json=new, headers=keys["ingest"])
    assert await members(client, keys, days("lte", 7)) == {r.json()["profile_id"]}
