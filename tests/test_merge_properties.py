"""A merge keeps everything of both customers, and an unmerge is its exact inverse, for any two
customers (hypothesis): identities, events and the stats they make (orders and total summed,
first and last order the earliest and latest, categories the union), consents, sources, every
value (the one given last) and trait (key by key). Later records and events on either side
follow their identifiers back."""

from __future__ import annotations

import itertools
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import hypothesis_on_loop

SETTINGS = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
_ns = itertools.count(1)
EVIDENCE = {"wording_id": "newsletter-v3", "method": "double_opt_in"}

FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "first_name": st.sampled_from(["Анна", "Olga"]),
        "last_name": st.sampled_from(["Иванова", "Smith"]),
        "birth_date": st.sampled_from(["1990-05-01", "1985-01-31"]),
        "postcode": st.sampled_from(["101000", "190000"]),
        "city": st.sampled_from(["Moscow", "Kazan"]),
        "country": st.sampled_from(["RU", "KZ", "US"]),
        "traits": st.dictionaries(
            st.sampled_from(["tier", "vip", "kids"]),
            st.sampled_from(["gold", "silver", True, 0]),
            max_size=2,
        ),
    },
)
# (day, amount, category, type)
EVENTS = st.lists(
    st.tuples(
        st.integers(1, 28),
        st.sampled_from(["10.00", "99.90", "0.50"]),
        st.sampled_from([None, "shoes", "Bags"]),
        st.sampled_from(["purchase", "purchase", "refund", "page_view"]),
    ),
    max_size=3,
)
CONSENT = st.sampled_from([None, "granted", "withdrawn"])


async def post(client, keys, path, body):  # type: ignore[no-untyped-def]
    r = await client.post(path, json=body, headers=keys["ingest"])
    assert r.status_code in (200, 201), r.text
    return r.json()


async def view(client, keys, pid):  # type: ignore[no-untyped-def]
    r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
    assert r.status_code == 200, r.text
    body = r.json()
    for moving in ("merged_from", "updated_at"):
        body.pop(moving)
    body["identities"] = sorted(body["identities"], key=lambda i: (i["kind"], i["value"]))
    body["consents"]["items"] = sorted(
        body["consents"]["items"], key=lambda i: (i["purpose"], i["channel"], i["address"] or "")
    )
    return body


async def customer(client, keys, ns, side, fields, events, consent):  # type: ignore[no-untyped-def]
    who = {"email": f"a{ns}@example.com"} if side == 0 else {"phone": f"+7916{ns:05d}{side}7"}
    pid = (await post(client, keys, "/v1/profiles", {"source": f"src{side}", **who, **fields}))[
        "profile_id"
    ]
    for n, (day, amount, category, kind) in enumerate(events):
        body = {
            "source": "shop",
            "event_id": f"e{ns}-{side}-{n}",
            "type": kind,
            "occurred_at": f"2026-10-{day:02d}T12:00:00Z",
            **who,
        }
        if kind != "page_view":
            body.update(amount=amount, currency="RUB")
        if category:
            body["category"] = category
        await post(client, keys, "/v1/events", body)
    if consent:
        channel = "email" if side == 0 else "sms"
        body = {
            **who,
            "purpose": "marketing",
            "channel": channel,
            "status": consent,
            "source": "web",
            "occurred_at": "2026-11-01T09:00:00Z",
        }
        if consent == "granted":
            body["evidence"] = EVIDENCE
        await post(client, keys, "/v1/consents", body)
    return pid, who


def expected_stats(one: dict, two: dict) -> dict:
    firsts = [s["first_order_at"] for s in (one, two) if s["first_order_at"]]
    lasts = [s["last_order_at"] for s in (one, two) if s["last_order_at"]]
    return {
        "orders_count": one["orders_count"] + two["orders_count"],
        "total_spent": str(Decimal(one["total_spent"]) + Decimal(two["total_spent"])),
        "first_order_at": min(firsts, default=None),
        "last_order_at": max(lasts, default=None),
        "categories": sorted(set(one["categories"]) | set(two["categories"])),
    }


async def merge_and_unmerge(client, keys, sides) -> None:  # type: ignore[no-untyped-def]
    ns = next(_ns)
    made = [await customer(client, keys, ns, n, *side) for n, side in enumerate(sides)]
    (a, a_who), (b, b_who) = made
    before = {pid: await view(client, keys, pid) for pid in (a, b)}

    link = await post(client, keys, "/v1/profiles", {"source": "cc", **a_who, **b_who})
    assert link["profile_id"] == a and link["merged_profile_ids"] == [b]
    merged = await view(client, keys, b)  # the absorbed id answers with the survivor
    assert merged["profile_id"] == a
    assert merged["identities"] == sorted(
        before[a]["identities"] + before[b]["identities"], key=lambda i: (i["kind"], i["value"])
    )
    stats = {k: v for k, v in merged["stats"].items() if k != "currency"}
    assert stats == expected_stats(before[a]["stats"], before[b]["stats"])
    items = {(c["channel"], c["address"]): c["status"] for c in merged["consents"]["items"]}
    for pid in (a, b):
        for c in before[pid]["consents"]["items"]:
            assert items[(c["channel"], c["address"])] == c["status"]
    # each value: the one given last (b's, given after a's), where b has one
    for name in ("first_name", "last_name", "birth_date", "postcode", "city", "country"):
        assert merged[name] == (before[b][name] or before[a][name]), name
    assert merged["traits"] == {**before[a]["traits"], **before[b]["traits"]}

    r = await client.post(f"/v1/profiles/{a}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    for pid in (a, b):
        assert await view(client, keys, pid) == before[pid]


async def test_a_merge_keeps_both_customers_and_an_unmerge_gives_each_back(client, keys):
    def test(run) -> None:  # type: ignore[no-untyped-def]
        side = st.tuples(FIELDS, EVENTS, CONSENT)

        @SETTINGS
        @given(side, side)
        def example(one, two) -> None:  # type: ignore[no-untyped-def]
            run(merge_and_unmerge(client, keys, [one, two]))

        example()

    await hypothesis_on_loop(test)
