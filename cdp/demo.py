"""A realistic synthetic customer base for trying the platform (`cdp demo`).

Russian and English names, customers known to several systems (a CRM with emails, a shop with
phones, a call centre with both), purchases, and consents with evidence on some addresses.
Customers joined over the last three years (profiles are dated so; their consents and orders
come after), so the lifecycle segments of docs/segments.md each pick out a part of them, the
re-permission one (consent two years old or more) too.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, func, select, update

from cdp.db.tables import identities, profiles
from cdp.errors import Conflict
from cdp.events import checked, store_events
from cdp.platform import Platform
from cdp.profiles.schemas import EventIn
from cdp.profiles.service import prepare, store_prepared

RU_FIRST_F = ["Анна", "Мария", "Елена", "Ольга", "Наталья", "Татьяна", "Ирина", "Светлана"]
RU_FIRST_M = ["Иван", "Алексей", "Дмитрий", "Сергей", "Андрей", "Михаил", "Николай", "Павел"]
RU_LAST = ["Иванов", "Смирнов", "Кузнецов", "Попов", "Васильев", "Петров", "Соколов", "Волков"]
RU_LATIN = {
    "Иванов": "ivanov",
    "Смирнов": "smirnov",
    "Кузнецов": "kuznetsov",
    "Попов": "popov",
    "Васильев": "vasiliev",
    "Петров": "petrov",
    "Соколов": "sokolov",
    "Волков": "volkov",
}
EN_FIRST = ["James", "Emma", "Olivia", "Liam", "Sophia", "Noah", "Ava", "Lucas"]
EN_LAST = ["Smith", "Johnson", "Brown", "Taylor", "Wilson", "Davies", "Evans", "Walker"]
RU_CITIES = ["Moscow", "Saint Petersburg", "Kazan", "Novosibirsk", "Yekaterinburg"]
EU_CITIES = [("DE", "Berlin"), ("FR", "Paris"), ("NL", "Amsterdam")]
US_CITIES = [("US-CA", "Los Angeles"), ("US-CA", "San Francisco"), ("US", "New York")]
RU_MOBILE = ["903", "905", "906", "909", "910", "915", "916", "917", "925", "926", "985"]
US_AREA = ["415", "212", "310", "646", "213"]
CATEGORIES = ["shoes", "outerwear", "accessories", "sport", "kids"]
DOMAINS = ["example.com", "example.org", "example.net"]
JOINED_WITHIN_DAYS = 1095  # three years: over two, some consents are two years old
JOINED_DRAW = 730  # the draw of a joining day, as when they joined within two years (below)
ORDERS_WITHIN = timedelta(days=400)


def _between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    return start + (end - start) * rng.random()


def _customer(rng: random.Random, n: int) -> dict[str, Any]:
    region = rng.choices(["RU", "EU", "US"], weights=[70, 15, 15])[0]
    if region == "RU":
        female = rng.random() < 0.5
        first = rng.choice(RU_FIRST_F if female else RU_FIRST_M)
        last = rng.choice(RU_LAST) + ("а" if female else "")
        latin = RU_LATIN[last.removesuffix("а") if female else last] + ("a" if female else "")
        phone = f"+7{rng.choice(RU_MOBILE)}{rng.randint(1000000, 9999999)}"
        country, jurisdiction, city = "RU", "RU", rng.choice(RU_CITIES)
    else:
        first, last = rng.choice(EN_FIRST), rng.choice(EN_LAST)
        latin = last.lower()
        if region == "EU":
            country, city = rng.choice(EU_CITIES)
            jurisdiction = "EU"
            phone = f"+49151{rng.randint(10000000, 99999999)}"
        else:
            jurisdiction, city = rng.choice(US_CITIES)
            country = "US"
            phone = f"+1{rng.choice(US_AREA)}{rng.randint(2000000, 9999999)}"
    return {
        "first_name": first,
        "last_name": last,
        "country": country,
        "jurisdiction": jurisdiction,
        "city": city,
        "phone": phone,
        "email": f"{latin}.{n}@{rng.choice(DOMAINS)}",
        "birth_date": (date(1960, 1, 1) + timedelta(days=rng.randint(0, 15000))).isoformat(),
    }


def _traits(rng: random.Random) -> dict[str, Any]:
    """A loyalty tier and the `vip` flag. Gold is the top tier: the few flagged VIP (5%), not
    a third of the customers (tiers were once drawn evenly, so docs/segments.md's "VIP" took
    four customers in ten). The draws are as they were, so the rest of the demo is too."""
    tier = rng.choice(["bronze", "silver", "gold"])
    vip = rng.random() < 0.05
    if vip:
        tier = "gold"
    elif tier == "gold":
        tier = "silver"
    return {"tier": tier, "vip": vip}


async def fill_demo(p: Platform, *, customers: int = 3000, seed: int = 7) -> dict[str, int]:
    async with p.db.read() as conn:
        if (await conn.execute(select(func.count()).select_from(profiles))).scalar():
            raise Conflict("the database is not empty; `cdp demo` fills an empty one")
    rng = random.Random(seed)
    now = datetime.now(UTC)
    prepared, events = [], []
    joined_at: list[datetime] = []  # per prepared record, when its customer joined
    for n in range(customers):
        c = _customer(rng, n)
        # drawn as it was and stretched, so the rest of the demo (names, orders, the matches of
        # `cdp match`) stays as it was for a seed; within two years no consent was old enough
        # for docs/segments.md's "Re-permission"
        days = rng.randint(0, JOINED_DRAW) * JOINED_WITHIN_DAYS / JOINED_DRAW
        joined = now - timedelta(days=days, hours=rng.randint(0, 23))
        base = {k: c[k] for k in ("first_name", "last_name", "country", "jurisdiction", "city")}
        consents = []
        if rng.random() < 0.55:
            consents.append(
                {
                    "purpose": "marketing",
                    "channel": "email",
                    "status": "granted",
                    "occurred_at": _between(rng, joined, now).isoformat(),
                    "evidence": {"wording_id": "newsletter-v3", "method": "double_opt_in"},
                }
            )
        sms_consents = []  # given at the shop's checkout, for the phone it knows
        if rng.random() < 0.25:
            sms_consents.append(
                {
                    "purpose": "marketing",
                    "channel": "sms",
                    "status": "granted",
                    "occurred_at": _between(rng, joined, now).isoformat(),
                    "evidence": {"wording_id": "sms-promo-v1", "method": "checkbox"},
                }
            )
        crm = {
            **base,
            "source": "crm",
            "external_id": f"C-{100000 + n}",
            "email": c["email"],
            "birth_date": c["birth_date"],
            "consents": consents,
            "traits": _traits(rng),
        }
        prepared.append(prepare(crm, p))
        joined_at.append(joined)
        if rng.random() < 0.6:  # also a shop customer, known by phone
            prepared.append(
                prepare(
                    {
                        **base,
                        "source": "shop",
                        "phone": c["phone"],
                        "external_id": f"S-{n}",
                        "consents": sms_consents,
                    },
                    p,
                )
            )
            joined_at.append(joined)
            if rng.random() < 0.3:  # the call centre links phone and email
                prepared.append(
                    prepare({"source": "callcenter", "phone": c["phone"], "email": c["email"]}, p)
                )
                joined_at.append(joined)
            for k in range(rng.choices([0, 1, 2, 4, 8], weights=[30, 30, 20, 15, 5])[0]):
                events.append(
                    EventIn(
                        source="shop",
                        event_id=f"ord-{n}-{k}",
                        type="purchase",
                        occurred_at=_between(rng, max(joined, now - ORDERS_WITHIN), now),
                        external_id=f"S-{n}",
                        amount=Decimal(rng.randint(500, 25000)).quantize(Decimal("1.00")),
                        currency="RUB",
                        category=rng.choice(CATEGORIES),
                    )
                )
    created: dict[object, datetime] = {}
    for start in range(0, len(prepared), 1000):
        outcomes = await store_prepared(p, prepared[start : start + 1000], "demo")
        for outcome, joined in zip(outcomes, joined_at[start : start + 1000], strict=True):
            for pid in (outcome.profile_id, *outcome.merged_profile_ids):
                created[pid] = min(joined, created.get(pid, joined))
    await _date_profiles(p, created)
    checked_events = [checked(p, ev) for ev in events]
    for start in range(0, len(checked_events), 500):
        async with p.db.write() as conn:
            for result in await store_events(conn, p, checked_events[start : start + 500], "demo"):
                if isinstance(result, Exception):  # the demo's own data: never refused
                    raise result
    return {"customers": customers, "records": len(prepared), "purchases": len(events)}


async def _date_profiles(p: Platform, created: dict[object, datetime]) -> None:
    """Each customer's profiles and identities dated when the customer joined."""
    rows = [{"pid": pid, "at": at} for pid, at in created.items()]
    if not rows:
        return
    async with p.db.write() as conn:
        for table, key in ((profiles, profiles.c.id), (identities, identities.c.profile_id)):
            stmt = update(table).where(key == bindparam("pid")).values(created_at=bindparam("at"))
            await conn.execute(stmt, rows)
