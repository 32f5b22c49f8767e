"""Purchase stats as a marketer reads them: one currency, any spelling of the type and category."""

from __future__ import annotations

import dataclasses

EMAIL = "buyer@example.com"


async def send(client, keys, n, type_="purchase", amount="100.00", currency="RUB", **extra):  # type: ignore[no-untyped-def]
    body = {
        "source": "shop",
        "event_id": f"ord-{n}",
        "type": type_,
        "occurred_at": f"2026-11-{n:02d}T12:00:00Z",
        "email": EMAIL,
        **({} if amount is None else {"amount": amount, "currency": currency}),
        **extra,
    }
    r = await client.post("/v1/events", json=body, headers=keys["ingest"])
    assert r.status_code in (200, 201), r.text
    return r.json()


async def stats(client, keys):  # type: ignore[no-untyped-def]
    r = await client.get(f"/v1/profiles?email={EMAIL}", headers=keys["admin"])
    assert r.status_code == 200, r.text
    return r.json()["stats"]


async def matches(client, keys, rules) -> bool:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/segments/query",
        json={"purpose": "service", "channel": "email", "rules": rules},
        headers=keys["marketing"],
    )
    assert r.status_code == 200, r.text
    return [m["address"] for m in r.json()["items"]] == [EMAIL]


async def test_total_spent_adds_only_the_stats_currency(client, keys, platform):
    rub = await send(client, keys, 1, amount="4500.00")
    usd = await send(client, keys, 2, amount="100.00", currency="USD")
    await send(client, keys, 3, "refund", amount="500.00")
    await send(client, keys, 4, "refund", amount="20.00", currency="USD")
    s = await stats(client, keys)
    assert s["total_spent"] == "4000.00"  # not 4080 (4500 + 100 - 500 - 20)
    assert s["orders_count"] == 2  # the dollar purchase is an order all the same
    assert s["last_order_at"] == "2026-11-02T12:00:00Z"
    assert (rub["stats_currency"], rub["in_total_spent"]) == ("RUB", True)
    assert (usd["stats_currency"], usd["in_total_spent"]) == ("RUB", False)
    again = await send(client, keys, 2, amount="100.00", currency="USD")  # a replay says so too
    assert again["created"] is False and again["in_total_spent"] is False
    view = await send(client, keys, 5, "page_view", amount=None)
    assert "in_total_spent" not in view
    assert await matches(client, keys, {"field": "total_spent", "op": "eq", "value": "4000"})
    assert await matches(client, keys, {"field": "orders_count", "op": "eq", "value": 2})

    # an operator whose stats are in dollars: the policy's [stats] currency
    platform.policy = dataclasses.replace(platform.policy, stats_currency="USD")
    usd = await send(client, keys, 6, amount="50.00", currency="USD")
    assert (usd["stats_currency"], usd["in_total_spent"]) == ("USD", True)
    assert (await stats(client, keys))["total_spent"] == "4050.00"


async def test_event_types_are_compared_trimmed_and_in_any_case(client, keys):
    await send(client, keys, 1, "Purchase", amount="1000.00", category="Shoes")
    await send(client, keys, 2, " PURCHASE ", amount="250.00")
    await send(client, keys, 3, "Refund", amount="100.00")
    s = await stats(client, keys)
    assert (s["orders_count"], s["total_spent"]) == (2, "1150.00")
    assert s["categories"] == ["shoes"]
    no_amount = await client.post(
        "/v1/events",
        json={
            "source": "shop",
            "event_id": "ord-9",
            "type": "Purchase",
            "occurred_at": "2026-11-09T12:00:00Z",
            "email": EMAIL,
        },
        headers=keys["ingest"],
    )
    assert no_amount.status_code == 400 and no_amount.json()["errors"][0]["field"] == "amount"


async def test_categories_are_one_whatever_their_spelling(client, keys):
    await send(client, keys, 1, category=" shoes ")
    await send(client, keys, 2, category="SHOES")
    await send(client, keys, 3, category="Running   Shoes")
    await send(client, keys, 4, category="Обувь")
    assert (await stats(client, keys))["categories"] == ["running shoes", "shoes", "обувь"]
    for value in (" shoes ", "Shoes", "running shoes", "ОБУВЬ"):
        rule = {"field": "categories", "op": "contains", "value": value}
        assert await matches(client, keys, rule), value
    rule = {"field": "categories", "op": "in", "value": ["HATS", " Running Shoes"]}
    assert await matches(client, keys, rule)
    assert not await matches(
        client, keys, {"field": "categories", "op": "contains", "value": "hats"}
    )


async def test_an_unmerge_recomputes_stats_by_the_same_rule(client, keys):
    await send(client, keys, 1, amount="1000.00")
    await send(client, keys, 2, amount="30.00", currency="EUR")
    r = await client.post(
        "/v1/events",
        json={
            "source": "shop",
            "event_id": "ord-3",
            "type": "purchase",
            "occurred_at": "2026-11-03T12:00:00Z",
            "phone": "+79161234567",
            "amount": "200.00",
            "currency": "RUB",
        },
        headers=keys["ingest"],
    )
    other = r.json()["profile_id"]
    link = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": EMAIL, "phone": "+79161234567"},
        headers=keys["ingest"],
    )
    assert link.json()["merged_profile_ids"] == [other]
    assert (await stats(client, keys))["total_spent"] == "1200.00"
    split = await client.post(f"/v1/profiles/{other}/unmerge", headers=keys["admin"])
    assert split.status_code == 200, split.text
    s = await stats(client, keys)
    assert (s["orders_count"], s["total_spent"]) == (2, "1000.00")  # the euros stay out


async def test_an_event_naming_no_country_is_400_and_creates_no_customer(client, keys, platform):
    """An event for an unknown customer creates the profile, with the event's country: one
    that names no country (ZZ, UK for GB, 1A) is refused naming the field, as a record's is.
    It used to make a profile of country "ZZ" under the default jurisdiction's law."""
    from cdp.db.tables import events, profiles
    from tests.helpers import count

    for country in ("ZZ", "uk", "1A"):
        body = {
            "source": "shop",
            "event_id": f"c-{country}",
            "type": "page_view",
            "occurred_at": "2026-11-01T12:00:00Z",
            "email": f"new.{country}@example.com",
            "country": country,
        }
        r = await client.post("/v1/events", json=body, headers=keys["ingest"])
        assert r.status_code == 400, r.text
        assert [e["field"] for e in r.json()["errors"]] == ["country"]
    assert await count(platform, profiles) == 0
    assert await count(platform, events) == 0
    ok = {**body, "event_id": "c-kz", "country": "kz"}
    r = await client.post("/v1/events", json=ok, headers=keys["ingest"])
    assert r.status_code == 201, r.text
    view = await client.get(f"/v1/profiles/{r.json()['profile_id']}", headers=keys["admin"])
    assert (view.json()["country"], view.json()["jurisdiction"]) == ("KZ", "RU")


async def test_a_purchase_taking_the_total_past_what_is_kept_is_400_and_stores_nothing(
    client, keys, platform
):
    """Each amount may have 13 digits before the point, the customer's total_spent too: a
    purchase taking the total past them was a 500 on PostgreSQL (numeric overflow) and stored
    on SQLite."""
    from cdp.db.tables import events
    from tests.helpers import count

    await send(client, keys, 1, amount="6000000000000.00")
    await send(client, keys, 2, amount="3000000000000.00")
    body = {
        "source": "shop",
        "event_id": "ord-3",
        "type": "purchase",
        "occurred_at": "2026-11-03T12:00:00Z",
        "email": EMAIL,
        "amount": "1000000000000.00",
        "currency": "RUB",
    }
    r = await client.post("/v1/events", json=body, headers=keys["ingest"])
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["field"] == "amount"
    assert await count(platform, events) == 2
    assert (await stats(client, keys))["total_spent"] == "9000000000000.00"
    refund = {**body, "event_id": "ref-1", "type": "refund", "amount": "1.00"}
    r = await client.post("/v1/events", json=refund, headers=keys["ingest"])
    assert r.status_code == 201, r.text


async def test_the_largest_amount_is_kept_to_the_cent_and_a_larger_one_refused(client, keys):
    """SQLite keeps a number as a double (15 significant digits): an amount of 16 digits and 2
    decimals, accepted before, read back a cent less (found by review on 2026-12-07)."""
    await send(client, keys, 1, amount="9999999999999.99")
    assert (await stats(client, keys))["total_spent"] == "9999999999999.99"
    body = {
        "source": "shop",
        "event_id": "ord-big",
        "type": "purchase",
        "occurred_at": "2026-11-02T12:00:00Z",
        "email": "other.big@example.com",
        "amount": "99999999999999.99",
        "currency": "RUB",
    }
    r = await client.post("/v1/events", json=body, headers=keys["ingest"])
    assert r.status_code == 400, r.text
    assert r.json()["errors"] == [
        {"field": "amount", "message": "at most 13 digits and 2 decimals"}
    ]


async def test_another_event_under_a_recorded_event_id_is_409_not_taken_for_a_replay(
    client, keys, tmp_path, platform
):
    """(source, event_id) names one event: sent again as it was, it is a replay (200); a
    refund sent under its order's id, or the order with another amount, is another event,
    and is refused (409, naming the fields that differ) instead of being dropped while the
    answer spoke of the order (`in_total_spent` of the purchase, for the refund)."""
    from cdp.events_import import run_event_import

    await send(client, keys, 1, amount="4500.00", category="Shoes")
    again = await send(client, keys, 1, amount="4500.0", category=" shoes ")  # the same order
    assert again["created"] is False
    body = {
        "source": "shop",
        "event_id": "ord-1",
        "type": "refund",
        "occurred_at": "2026-11-05T12:00:00Z",
        "email": EMAIL,
        "amount": "4500.00",
        "currency": "RUB",
    }
    for changed, fields in (
        ({}, "(type not as sent)"),
        ({"type": "purchase", "amount": "450.00"}, "(amount not as sent)"),
        ({"amount": "4500.00", "currency": "USD"}, "(type, currency not as sent)"),
    ):
        r = await client.post("/v1/events", json={**body, **changed}, headers=keys["ingest"])
        assert r.status_code == 409, r.text
        assert fields in r.json()["detail"]
    s = await stats(client, keys)
    assert (s["orders_count"], s["total_spent"]) == (1, "4500.00")

    # an order history holding the refund under the order's id: the row is rejected, saying so
    path = tmp_path / "orders.ndjson"
    path.write_text(
        '{"event_id": "ord-1", "type": "refund", "occurred_at": "2026-11-05T12:00:00Z",'
        f' "email": "{EMAIL}", "amount": "4500.00", "currency": "RUB"}}\n',
        encoding="utf-8",
    )
    summary = await run_event_import(platform, path, source="shop", actor="test")
    assert summary.rejected_rows == 1
    assert "type," in summary.rejects_path.read_text(encoding="utf-8")
    assert (await stats(client, keys))["total_spent"] == "4500.00"
