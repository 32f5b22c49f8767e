"""`cdp demo` is what a newcomer tries the docs' lifecycle segments on (docs/segments.md): each
should pick out a part of the customer base, as it would in a real one."""

from __future__ import annotations

from cdp.demo import fill_demo

LIFECYCLE = {
    "new": {"field": "created_days", "op": "lte", "value": 30},
    "active": {"field": "last_order_days", "op": "lte", "value": 30},
    "sleeping": {
        "all": [
            {"field": "orders_count", "op": "gte", "value": 1},
            {"field": "last_order_days", "op": "gte", "value": 60},
        ]
    },
    "vip": {
        "any": [
            {"field": "total_spent", "op": "gte", "value": "50000"},
            {"field": "traits.tier", "op": "eq", "value": "gold"},
        ]
    },
    # customers' grants were all dated after they joined, within the last two years, so
    # "Re-permission" (consent two years old or more) picked out nobody
    "welcome": {"field": "consent_days", "op": "lte", "value": 7},
    "re-permission": {"field": "consent_days", "op": "gte", "value": 730},
}


async def stats(client, keys, rules) -> dict:  # type: ignore[no-untyped-def]
    definition = {"name": "s", "purpose": "marketing", "channel": "email", "rules": rules}
    made = await client.post("/v1/segments", headers=keys["marketing"], json=definition)
    assert made.status_code == 201, made.text
    r = await client.get(f"/v1/segments/{made.json()['id']}/stats", headers=keys["marketing"])
    assert r.status_code == 200, r.text
    return r.json()


async def test_the_lifecycle_segments_each_pick_out_a_part_of_the_demo_customers(
    platform, client, keys
):
    """Every demo profile was created the moment `cdp demo` ran, so 'New customers (joined in
    the last 30 days)' was the whole base, customers with orders 400 days old included. Each
    of the six lifecycle recipes of docs/segments.md picks out a part."""
    await fill_demo(platform, customers=400, seed=7)
    everyone = (await stats(client, keys, {"all": []}))["matched"]
    for name, rules in LIFECYCLE.items():
        got = await stats(client, keys, rules)
        assert 0 < got["contactable"] <= got["matched"] < everyone / 2, (name, got, everyone)
    # nobody ordered or consented before they joined
    old_orders = {"all": [LIFECYCLE["new"], {"field": "first_order_days", "op": "gt", "value": 30}]}
    assert (await stats(client, keys, old_orders))["matched"] == 0


async def test_a_demo_of_no_customers_stores_nothing_and_says_so(platform):
    assert await fill_demo(platform, customers=0) == {"customers": 0, "records": 0, "purchases": 0}


async def test_vip_is_a_small_part_of_the_demo_customers(platform, client, keys):
    """'VIP: top spenders' picked out four customers in ten: a third of the demo customers
    had the gold tier it selects (tiers were drawn evenly), and the `vip` flag disagreed with
    it. Gold now goes with the flag: a few percent, as a top tier is."""
    customers = 400
    await fill_demo(platform, customers=customers, seed=7)
    vip = await stats(client, keys, LIFECYCLE["vip"])
    assert 0 < vip["matched"] <= customers / 5, vip
    gold = {"field": "traits.tier", "op": "eq", "value": "gold"}
    flagged = {"field": "traits.vip", "op": "eq", "value": True}
    assert (await stats(client, keys, gold))["matched"] == (await stats(client, keys, flagged))[
        "matched"
    ]
