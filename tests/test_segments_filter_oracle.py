"""For seeded random customers and rules, a segment selects exactly the customers the rule
language of API.md describes, on SQLite and on PostgreSQL.

The oracle below is that description in plain Python, written from what the test sent (not
from what the database holds): text fields compared as ingest stores them (country and
jurisdiction upper-cased; cities and categories trimmed, inner spaces collapsed, case-folded,
in NFC: "МОСКВА" is "Москва"), traits typed (a string matches strings, in NFC and in its own
case, a number numbers, a boolean booleans), stats from the purchases and refunds sent, "days
since" as whole days elapsed (a moment ahead of now, as a client clock ahead dates an order,
is 0 days ago), and every condition two-valued (a customer without the value does not satisfy
`eq`, `gt`, `contains`..., and does satisfy `ne` and `not`).

The segment is for `service` by email, so every customer is contactable and the members are
exactly the customers the rule matches.
"""

from __future__ import annotations

import csv
import io
import json
import random
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import update

from cdp.db.tables import profiles
from cdp.segments.members import members_page
from cdp.segments.rules import to_json
from cdp.segments.service import build_definition

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)

COUNTRIES = [None, "RU", "ru", "de", "US", "KZ"]
CITIES = [
    None,
    "Moscow",
    "moscow",
    " MOSCOW ",
    "Москва",
    "москва",
    "МОСКВА",
    "Saint  Petersburg",
    "saint petersburg",
    unicodedata.normalize("NFD", "Йошкар-Ола"),
    "йошкар-ола",
    "Kazan",
    "Straße",
]
SOURCES = ["crm", "shop", "pos"]
TRAIT_NAMES = ["tier", "score", "vip", "note", "уровень"]
TRAIT_VALUES: list[Any] = [
    "gold",
    "Gold",
    "GOLD",
    "золото",
    "Золото",
    "likes red shoes",
    'say "hi" \\ 😀 ёлка',
    unicodedata.normalize("NFD", 'say "hi" \\ 😀 ёлка'),
    "7.5",
    "3",
    "true",
    "",
    0,
    3,
    -2,
    7.5,
    0.1,
    -0.0,
    1e300,
    10**15,
    2**53,
    2**53 + 1,
    2**62,
    9_223_372_036_854_775_807,
    2**64 + 1,
    -(10**30),
    10**400,
    True,
    False,
    None,
]
# a rule's whole numbers are 64-bit (cdp.segments.rules); a trait's are not bounded
RULE_VALUES = [v for v in TRAIT_VALUES if not (isinstance(v, int) and abs(v) >= 2**63)]
CATEGORIES = [" Shoes ", "SHOES", "shoes", "обувь", "ОБУВЬ", "Bags", "hats  and caps"]
ZONES = [UTC, timezone(timedelta(hours=3)), timezone(timedelta(hours=-11, minutes=-30))]
AMOUNTS = ["0.01", "10.00", "99.99", "100.00", "1999.90", "50000.50", "99999999999.99"]


def text(value: str | None) -> str | None:
    if value is None:
        return None
    value = " ".join(unicodedata.normalize("NFC", value).split())
    return value or None


def category(value: str) -> str:
    return unicodedata.normalize("NFC", " ".join(value.split()).casefold())


@dataclass
class Customer:
    name: str
    country: str | None
    city: str | None
    jurisdiction: str
    sources: set[str]
    traits: dict[str, Any]
    created_at: datetime
    orders: list[datetime] = field(default_factory=list)
    spent: Decimal = Decimal(0)
    categories: set[str] = field(default_factory=set)

    def days(self, name: str) -> int | None:
        at = {
            "created_days": self.created_at,
            "first_order_days": min(self.orders, default=None),
            "last_order_days": max(self.orders, default=None),
        }[name]
        return None if at is None else max(0, (NOW - at) // DAY)  # ahead of now: today


def near_day_boundary(rng: random.Random) -> timedelta:
    """Some whole days ago, give or take up to a few minutes (the boundaries are exact)."""
    days = rng.choice([0, 1, 2, 29, 30, 31, 59, 60, 61, 365])
    return days * DAY + timedelta(seconds=rng.choice([-300, -1, 1, 300, 3600, 43200]))


# the oracle ---------------------------------------------------------------------------------
def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def same_value(stored: Any, wanted: Any) -> bool:
    """A trait equals a rule value of its own type only (True is not 1, "5" is not 5)."""
    if isinstance(wanted, bool) or isinstance(stored, bool):
        return isinstance(wanted, bool) and isinstance(stored, bool) and stored == wanted
    if isinstance(wanted, str) or isinstance(stored, str):
        return isinstance(wanted, str) and isinstance(stored, str) and nfc(stored) == nfc(wanted)
    return stored is not None and stored == wanted


def number(stored: Any) -> bool:
    return isinstance(stored, int | float) and not isinstance(stored, bool)


def compare(op: str, a: Any, b: Any) -> bool:
    return {
        "eq": a == b,
        "ne": a != b,
        "gt": a > b,
        "gte": a >= b,
        "lt": a < b,
        "lte": a <= b,
    }[op]


def holds(rule: dict, c: Customer) -> bool:
    if "all" in rule:
        return all(holds(x, c) for x in rule["all"])
    if "any" in rule:
        return any(holds(x, c) for x in rule["any"])
    if "not" in rule:
        return not holds(rule["not"], c)
    f, op, v = rule["field"], rule["op"], rule.get("value", True)
    if f in ("country", "jurisdiction", "city"):
        stored = {"country": c.country, "jurisdiction": c.jurisdiction, "city": c.city}[f]
        key = (lambda s: s.strip().upper()) if f != "city" else category  # one folding
        stored = None if stored is None else key(stored)
        if op == "exists":
            return (stored is not None) == v
        if op == "in":
            return stored is not None and stored in {key(x) for x in v}
        return (stored is not None and stored == key(v)) == (op == "eq")
    if f == "source":
        wanted = set(v) if op == "in" else {v}
        return bool(c.sources & wanted) != (op == "ne")
    if f == "categories":
        if op == "exists":
            return bool(c.categories) == v
        wanted = {category(x) for x in (v if op == "in" else [v])}
        return bool(c.categories & wanted)
    if f in ("orders_count", "total_spent"):
        stored = len(c.orders) if f == "orders_count" else c.spent
        if op == "in":
            return stored in v
        return compare(op, stored, Decimal(str(v)) if f == "total_spent" else v)
    if f.endswith("_days"):
        d = c.days(f)
        if op == "exists":
            return (d is not None) == v
        if d is None:
            return op == "ne"
        return compare(op, d, v)
    name = f.removeprefix("traits.")
    stored = c.traits.get(name)
    if op == "exists":
        return (stored is not None) == v
    if op in ("eq", "ne"):
        return same_value(stored, v) == (op == "eq")
    if op == "in":
        return any(same_value(stored, x) for x in v)
    if op == "contains":
        return isinstance(stored, str) and nfc(v) in nfc(stored)
    return number(stored) and compare(op, stored, v)


# random rules --------------------------------------------------------------------------------
def random_leaf(rng: random.Random) -> dict:
    f = rng.choice(
        [
            "country",
            "city",
            "jurisdiction",
            "source",
            "traits",
            "traits",
            "traits",
            "orders_count",
            "total_spent",
            "last_order_days",
            "first_order_days",
            "created_days",
            "categories",
        ]
    )
    if f in ("country", "city", "jurisdiction"):
        pool = {
            "country": ["RU", "ru", "DE", "US", "KZ", "FR"],
            "city": [c for c in CITIES if c] + ["Berlin"],
            "jurisdiction": ["RU", "EU", "us", "US-CA"],
        }[f]
        op = rng.choice(["eq", "ne", "in", "exists"])
    elif f == "source":
        pool, op = [*SOURCES, "web"], rng.choice(["eq", "ne", "in"])
    elif f == "categories":
        pool, op = [*CATEGORIES, "Hats and Caps", "toys"], rng.choice(["contains", "in", "exists"])
    elif f == "orders_count":
        pool, op = [0, 1, 2, 3, 5], rng.choice(["eq", "ne", "gt", "gte", "lt", "lte", "in"])
    elif f == "total_spent":
        pool = ["0", "0.01", 10, 99.99, "100.00", "1999.9", "50000.5", "-10", "1e6"]
        op = rng.choice(["eq", "ne", "gt", "gte", "lt", "lte"])
    elif f.endswith("_days") or f == "created_days":
        pool = [0, 1, 2, 29, 30, 31, 60, 365]
        ops = ["eq", "ne", "gt", "gte", "lt", "lte"]
        op = rng.choice(ops + (["exists"] if f != "created_days" else []))
    else:
        f = "traits." + rng.choice([*TRAIT_NAMES, "missing"])
        op = rng.choice(["eq", "ne", "in", "gt", "gte", "lt", "lte", "contains", "exists"])
        if op in ("gt", "gte", "lt", "lte"):
            pool = [v for v in RULE_VALUES if number(v)] + [7, 2**53 - 1, 5e-324, 1e308]
        elif op == "contains":
            pool = ["red", "RED", "old", "ОЛО", "оло", "7", "gold", '"hi" \\', "😀", "ёлка"]
        else:
            pool = [v for v in RULE_VALUES if v is not None] + [1, 1.0, 2**53 + 2]
    if op == "exists":
        return {"field": f, "op": op, "value": rng.choice([True, False])}
    if op == "in":
        return {"field": f, "op": op, "value": rng.sample(pool, rng.randint(1, 3))}
    return {"field": f, "op": op, "value": rng.choice(pool)}


def random_rule(rng: random.Random, depth: int = 0) -> dict:
    kind = rng.random()
    if depth >= 3 or kind < 0.45:
        return random_leaf(rng)
    if kind < 0.65:
        return {"not": random_rule(rng, depth + 1)}
    items = [random_rule(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {"all" if kind < 0.85 else "any": items}


# random customers ---------------------------------------------------------------------------
async def random_customers(client, keys, p, rng: random.Random) -> list[Customer]:  # type: ignore[no-untyped-def]
    customers = []
    for i in range(36):
        name = f"P{i}"
        country = rng.choice(COUNTRIES)
        jurisdiction = rng.choice(["RU", "EU", "US", "US-CA"])
        traits = {t: rng.choice(TRAIT_VALUES) for t in rng.sample(TRAIT_NAMES, rng.randint(0, 4))}
        sources = set(rng.sample(SOURCES, rng.randint(1, 2)))
        city = rng.choice(CITIES)
        for n, source in enumerate(sorted(sources)):
            body: dict[str, Any] = {"source": source, "email": f"p{i}@ex.com", "first_name": name}
            if n == 0:
                body |= {"country": country, "jurisdiction": jurisdiction, "traits": traits}
                if city is not None:
                    body["city"] = city
            r = await client.post("/v1/profiles", json=body, headers=keys["ingest"])
            assert r.status_code in (200, 201), r.text
        pid = r.json()["profile_id"]
        created = NOW - near_day_boundary(rng)
        async with p.db.write() as conn:
            await conn.execute(
                update(profiles).where(profiles.c.id == uuid.UUID(pid)).values(created_at=created)
            )
        c = Customer(
            name,
            None if country is None else country.strip().upper(),
            text(city),
            jurisdiction,
            sources,
            {k: v for k, v in traits.items()},
            created,
        )
        for e in range(rng.choice([0, 0, 1, 2, 3, 4])):
            kind = rng.choice(["purchase", "purchase", "Purchase ", "refund"])
            currency = rng.choice(["RUB", "RUB", "USD"])
            amount = rng.choice(AMOUNTS)
            at = NOW - near_day_boundary(rng)
            body = {
                "source": "shop",
                "event_id": f"{name}-{e}",
                "type": kind,
                "occurred_at": at.astimezone(rng.choice(ZONES)).isoformat(),
                "email": f"p{i}@ex.com",
                "amount": amount,
                "currency": currency,
            }
            cat = rng.choice([*CATEGORIES, None])
            if cat is not None:
                body["category"] = cat
            r = await client.post("/v1/events", json=body, headers=keys["ingest"])
            assert r.status_code == 201, r.text
            sign = -1 if kind == "refund" else 1
            if currency == "RUB":
                c.spent += sign * Decimal(amount)
            if sign > 0:
                c.orders.append(at)
                if cat is not None:
                    c.categories.add(category(cat))
        customers.append(c)
    return customers


async def members(p, rules: dict) -> set[str]:  # type: ignore[no-untyped-def]
    d = build_definition(p, "service", "email", rules)
    async with p.db.read() as conn:
        page = await members_page(conn, p, d, after=None, limit=1000, now=NOW)
    return {m.first_name for m in page.items}


async def test_random_rules_select_what_the_rule_language_says(client, keys, platform):
    rng = random.Random(20261206)
    customers = await random_customers(client, keys, platform, rng)
    failures = []
    for _ in range(400):
        rule = random_rule(rng)
        expected = {c.name for c in customers if holds(rule, c)}
        got = await members(platform, rule)
        d = build_definition(platform, "service", "email", rule)
        saved = json.loads(json.dumps(to_json(d.condition)))  # as stored and shown
        assert build_definition(platform, "service", "email", saved) == d, rule
        if got != expected:
            failures.append((rule, sorted(expected - got), sorted(got - expected)))
    assert not failures, "\n".join(map(str, failures[:10])) + f"\n{len(failures)} failed"


async def test_members_stats_export_and_query_agree_for_random_rules(client, keys, platform):
    """Saved members (walked in small pages), stats, both export formats and the ad-hoc query
    give the rule's customers, for rules without "days since" (read at the request's own now)."""
    rng = random.Random(1206)
    customers = await random_customers(client, keys, platform, rng)
    checked = 0
    while checked < 25:
        rule = random_rule(rng)
        if "_days" in str(rule):
            continue
        checked += 1
        expected = {c.name for c in customers if holds(rule, c)}
        body = {"purpose": "service", "channel": "email", "rules": rule}
        r = await client.post("/v1/segments", json=body | {"name": "r"}, headers=keys["marketing"])
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        paged, cursor = [], None
        while True:
            params = {"limit": 4} | ({"cursor": cursor} if cursor else {})
            page = await client.get(
                f"/v1/segments/{sid}/members", params=params, headers=keys["marketing"]
            )
            paged += [m["first_name"] for m in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert sorted(paged) == sorted(expected), rule  # each customer once
        stats = (await client.get(f"/v1/segments/{sid}/stats", headers=keys["marketing"])).json()
        assert (stats["matched"], stats["contactable"]) == (len(expected), len(expected)), rule
        ndjson = await client.get(f"/v1/segments/{sid}/export", headers=keys["marketing"])
        exported = [json.loads(line)["first_name"] for line in ndjson.text.splitlines()]
        assert sorted(exported) == sorted(expected), rule
        csv_text = await client.get(
            f"/v1/segments/{sid}/export?format=csv", headers=keys["marketing"]
        )
        rows = list(csv.DictReader(io.StringIO(csv_text.text)))
        assert sorted(row["first_name"] for row in rows) == sorted(expected), rule
        adhoc = await client.post(
            "/v1/segments/query", json=body | {"limit": 1000}, headers=keys["marketing"]
        )
        assert {m["first_name"] for m in adhoc.json()["items"]} == expected, rule
