"""Two customers' order totals that together exceed what is kept (13 digits before the point):
linking them is refused and queued for review, as the other merge guards are, instead of a 500
(PostgreSQL: numeric overflow) or, on SQLite, a total that no event could have made."""

from __future__ import annotations

from decimal import Decimal

BIG = "6000000000000.00"  # 6 * 10^12: each is allowed, their sum is not


async def purchase(client, keys, event_id: str, **who) -> str:  # type: ignore[no-untyped-def]
    body = {
        "source": "shop",
        "event_id": event_id,
        "type": "purchase",
        "occurred_at": "2026-11-01T12:00:00Z",
        "amount": BIG,
        "currency": "RUB",
        **who,
    }
    r = await client.post("/v1/events", json=body, headers=keys["ingest"])
    assert r.status_code == 201, r.text
    return r.json()["profile_id"]


async def total(client, keys, profile_id: str) -> Decimal:  # type: ignore[no-untyped-def]
    r = await client.get(f"/v1/profiles/{profile_id}", headers=keys["admin"])
    assert r.status_code == 200, r.text
    assert r.json()["profile_id"] == profile_id  # not merged away
    return Decimal(r.json()["stats"]["total_spent"])


async def two_big_spenders(client, keys) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    a = await purchase(client, keys, "o-1", email="big.a@example.com")
    b = await purchase(client, keys, "o-2", phone="+79160001122")
    return a, b


async def link_them(client, keys) -> dict:  # type: ignore[no-untyped-def]
    """A record naming both customers' identifiers (the one merge there could be)."""
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "big.a@example.com", "phone": "+79160001122"},
        headers=keys["ingest"],
    )
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_record_linking_two_big_spenders_is_stored_and_the_merge_queued(client, keys):
    a, b = await two_big_spenders(client, keys)
    linked = await link_them(client, keys)
    assert linked["profile_id"] == a  # the oldest it matched
    assert [e["field"] for e in linked["ignored"]] == ["phone"]
    assert (await total(client, keys, a), await total(client, keys, b)) == (
        Decimal(BIG),
        Decimal(BIG),
    )
    (review,) = (await client.get("/v1/merge-reviews", headers=keys["admin"])).json()["items"]
    assert review["reason"]["code"] == "totals_too_large"
    assert review["attached_to"] == a and sorted(review["profile_ids"]) == sorted([a, b])


async def test_accepting_that_review_is_a_conflict_that_merges_nothing(client, keys):
    a, b = await two_big_spenders(client, keys)
    await link_them(client, keys)
    (review,) = (await client.get("/v1/merge-reviews", headers=keys["admin"])).json()["items"]
    r = await client.post(f"/v1/merge-reviews/{review['review_id']}/accept", headers=keys["admin"])
    assert r.status_code == 409, r.text
    assert "total_spent" in r.json()["detail"]
    assert (await total(client, keys, a), await total(client, keys, b)) == (
        Decimal(BIG),
        Decimal(BIG),
    )
