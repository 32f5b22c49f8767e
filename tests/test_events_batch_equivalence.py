"""A batch of events (`cdp events import`'s chunks) is stored as if its events had been sent one
after another to POST /v1/events: the same events recorded, recognised or refused, the same
stats and categories for every customer (`cdp.events.store_events`)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from cdp.db.tables import events, profile_categories, profile_stats
from cdp.errors import DomainError
from cdp.events import checked, record_event, store_events
from cdp.profiles.identifiers import find_profile, parse_identifier
from cdp.profiles.schemas import EventIn
from tests.helpers import hypothesis_on_loop

_ns = itertools.count(1)
CUSTOMERS = 3
EVENT = st.fixed_dictionaries(
    {
        "event_id": st.sampled_from(["e1", "e2", "e3", "e4", "e5"]),  # repeats, on purpose
        "type": st.sampled_from(["purchase", "Purchase", "refund", "page_view"]),
        "day": st.integers(1, 28),
        "customer": st.integers(0, CUSTOMERS - 1),
        "by_phone": st.booleans(),  # the same customer named by either identifier
        # the last one takes a total beyond what is kept: that event alone is refused
        "amount": st.sampled_from(["10.00", "0.50", "2500.00", "9999999999990.00"]),
        "currency": st.sampled_from(["RUB", "RUB", "USD"]),
        "category": st.sampled_from([None, "shoes", " SHOES ", "bags"]),
    }
)


def body(e: dict[str, Any], run: str, known: set[int]) -> EventIn:
    c = e["customer"]
    who = (
        {"phone": f"+7916{run}{c:02d}"}
        if e["by_phone"] and c in known  # a phone only for customers who have one
        else {"email": f"c{c}.{run}@example.com"}
    )
    return EventIn(
        source=f"shop-{run}",
        event_id=e["event_id"],
        type=e["type"],
        occurred_at=datetime(2026, 10, e["day"], 12, tzinfo=UTC),
        amount=Decimal(e["amount"]) if e["type"] != "page_view" else None,
        currency=e["currency"] if e["type"] != "page_view" else None,
        category=e["category"],
        **who,
    )


def outcome(result: Any) -> tuple:
    if isinstance(result, DomainError):
        return ("refused", [x.field for x in result.errors])
    return ("recorded" if result.created else "repeated", result.in_total_spent)


async def state(p, run: str) -> dict[int, tuple]:  # type: ignore[no-untyped-def]
    """Per customer: their events (id, type, amount), stats and categories."""
    out = {}
    for c in range(CUSTOMERS):
        ident = parse_identifier(p.policy, p.keys.indexer, email=f"c{c}.{run}@example.com")
        async with p.db.read() as conn:
            pid = await find_profile(conn, ident)
            if pid is None:
                out[c] = None
                continue
            evs = sorted(
                (t, str(a), str(cur))
                for t, a, cur in await conn.execute(
                    select(events.c.type, events.c.amount, events.c.currency).where(
                        events.c.profile_id == pid
                    )
                )
            )
            st_row = (
                await conn.execute(
                    select(
                        profile_stats.c.orders_count,
                        profile_stats.c.total_spent,
                        profile_stats.c.first_order_at,
                        profile_stats.c.last_order_at,
                    ).where(profile_stats.c.profile_id == pid)
                )
            ).first()
            cats = sorted(
                x
                for (x,) in await conn.execute(
                    select(profile_categories.c.category).where(
                        profile_categories.c.profile_id == pid
                    )
                )
            )
        out[c] = (evs, None if st_row is None else tuple(st_row), cats)
    return out


async def known_customers(client, keys, run: str, known: set[int]) -> None:  # type: ignore[no-untyped-def]
    for c in sorted(known):
        r = await client.post(
            "/v1/profiles",
            json={
                "source": "crm",
                "email": f"c{c}.{run}@example.com",
                "phone": f"+7916{run}{c:02d}",
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text


async def test_a_batch_is_stored_as_its_events_one_after_another(client, keys, platform):
    p = platform

    def test(run_on_loop) -> None:  # type: ignore[no-untyped-def]
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
        )
        @given(
            batch=st.lists(EVENT, min_size=1, max_size=14),
            known=st.sets(st.integers(0, CUSTOMERS - 1)),
        )
        def example(batch: list[dict], known: set[int]) -> None:
            n = next(_ns)
            one, many = f"1{n:04d}", f"2{n:04d}"
            run_on_loop(known_customers(client, keys, one, known))
            run_on_loop(known_customers(client, keys, many, known))

            async def one_by_one() -> list[tuple]:
                results = []
                for e in batch:
                    try:
                        results.append(outcome(await record_event(p, body(e, one, known), "t")))
                    except DomainError as exc:
                        results.append(outcome(exc))
                return results

            async def in_one_batch() -> list[tuple]:
                prepared = [checked(p, body(e, many, known)) for e in batch]
                async with p.db.write() as conn:
                    return [outcome(r) for r in await store_events(conn, p, prepared, "t")]

            assert run_on_loop(in_one_batch()) == run_on_loop(one_by_one())
            assert run_on_loop(state(p, many)) == run_on_loop(state(p, one))

        example()

    await hypothesis_on_loop(test)
