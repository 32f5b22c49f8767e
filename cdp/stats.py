"""Customer order stats (`profile_stats`, `profile_categories`): the one rule, kept on write.

- An event's type is compared trimmed and lower-cased (`event_type`): "Purchase" is a purchase.
- A purchase is an order: it adds 1 to orders_count and moves first/last order, whatever its
  currency. Its category joins the customer's categories (cdp.labels.normalise_category).
- total_spent is money in one currency, the policy's `[stats] currency` (RUB unless the
  operator sets another): a purchase in it adds its amount, a refund in it subtracts its amount.
  An event in another currency is stored with its amount and currency (access requests show
  it) but adds nothing to total_spent: without exchange rates amounts in two currencies cannot
  be summed, and a total that mixed them (100 USD + 4,500 RUB = "4,600") would put customers in
  the wrong segments.
- Merges add the stats of both profiles (cdp.profiles.merge); an unmerge recomputes both halves
  from their events (`recompute`), by the same rule.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.tables import events, profile_categories, profile_stats
from cdp.db.upsert import insert_ignore
from cdp.errors import InvalidInput

MONEY_EVENTS = {"purchase": 1, "refund": -1}  # the sign of the amount in total_spent


def event_type(raw: str) -> str:
    """The form an event type is stored and decided on."""
    return raw.strip().lower()


def counts_in_total(kind: str, currency: str | None, stats_currency: str) -> bool | None:
    """Whether a money event's amount is in total_spent; None for other events."""
    return None if kind not in MONEY_EVENTS else currency == stats_currency


# Money (an event's amount, a customer's total_spent) holds 13 digits before the point and 2
# after: what both databases keep exactly. SQLite keeps a number as a double, which holds 15
# significant digits: an amount of 16 digits and 2 decimals read back a cent less (found by
# review on 2026-12-07); a total beyond PostgreSQL's numeric(18, 2) was an overflow (a 500).
MONEY_DIGITS = 13
MONEY_LIMIT = Decimal(10) ** MONEY_DIGITS
TOTAL_TOO_LARGE = f"would take the customer's total_spent beyond {MONEY_DIGITS} digits"


def beyond_kept(total: Decimal) -> bool:
    """Whether a total_spent (an event's, or two merged customers') is more than is kept."""
    return abs(total) >= MONEY_LIMIT


class Change(NamedTuple):
    orders: int  # 1 for a purchase
    spent: Decimal  # what total_spent moves by


def change(
    kind: str, amount: Decimal | None, currency: str | None, stats_currency: str
) -> Change | None:
    """What an event (its type already normalised) does to the stats; None: nothing."""
    sign = MONEY_EVENTS.get(kind)
    if sign is None or amount is None:
        return None
    spent = sign * amount if counts_in_total(kind, currency, stats_currency) else Decimal(0)
    return Change(1 if sign > 0 else 0, spent)


class Totals(NamedTuple):
    """A profile's stats row."""

    orders: int
    spent: Decimal
    first_order_at: datetime | None
    last_order_at: datetime | None


NO_TOTALS = Totals(0, Decimal(0), None, None)


def folded(t: Totals, c: Change, at: datetime) -> Totals:
    """The stats after one more event's change. Raises InvalidInput (on `amount`) where
    total_spent would grow beyond what is kept: that event is not stored."""
    total = t.spent + c.spent
    if beyond_kept(total):
        raise InvalidInput.field("amount", TOTAL_TOO_LARGE)
    if not c.orders:
        return t._replace(spent=total)
    first = min(d for d in (t.first_order_at, at) if d is not None)
    last = max(d for d in (t.last_order_at, at) if d is not None)
    return Totals(t.orders + c.orders, total, first, last)


_ps = profile_stats.c
# Statements built once: building one per call cost more than the driver's whole round trip.
_TOTALS = select(
    _ps.profile_id, _ps.orders_count, _ps.total_spent, _ps.first_order_at, _ps.last_order_at
).where(_ps.profile_id.in_(bindparam("ids", expanding=True)))
_CHANGE_TOTALS = (
    update(profile_stats)
    .where(_ps.profile_id == bindparam("pid"))
    .values(
        orders_count=bindparam("o"),
        total_spent=bindparam("s"),
        first_order_at=bindparam("f"),
        last_order_at=bindparam("l"),
    )
)


async def load(conn: AsyncConnection, pids: Iterable[uuid.UUID]) -> dict[uuid.UUID, Totals]:
    """The stats rows of these profiles (the caller holds their locks); absent: none yet."""
    wanted = sorted(set(pids))
    found: dict[uuid.UUID, Totals] = {}
    for start in range(0, len(wanted), 500):
        rows = await conn.execute(_TOTALS, {"ids": wanted[start : start + 500]})
        found.update((r[0], Totals(*r[1:])) for r in rows)
    return found


async def save(
    conn: AsyncConnection, before: dict[uuid.UUID, Totals], after: dict[uuid.UUID, Totals]
) -> None:
    """Write the stats in `after` that differ from `before` (`load`'s answer)."""
    rows = [
        {"pid": pid, "o": t.orders, "s": t.spent, "f": t.first_order_at, "l": t.last_order_at}
        for pid, t in after.items()
        if before.get(pid) != t
    ]
    new = [r for r in rows if r["pid"] not in before]
    old = [r for r in rows if r["pid"] in before]
    if new:
        await conn.execute(
            insert(profile_stats),
            [
                {
                    "profile_id": r["pid"],
                    "orders_count": r["o"],
                    "total_spent": r["s"],
                    "first_order_at": r["f"],
                    "last_order_at": r["l"],
                }
                for r in new
            ],
        )
    if old:
        await conn.execute(_CHANGE_TOTALS, old)


async def add_categories(conn: AsyncConnection, pairs: Iterable[tuple[uuid.UUID, str]]) -> None:
    """(profile, category as normalise_category gives it) pairs a purchase brought."""
    rows = [{"profile_id": pid, "category": c} for pid, c in sorted(set(pairs))]
    if rows:
        await conn.execute(insert_ignore(conn, profile_categories), rows)


async def recompute(conn: AsyncConnection, profile_id: uuid.UUID, stats_currency: str) -> None:
    """Stats and categories of a profile, from its events."""
    ec = events.c
    rows = (
        await conn.execute(
            select(ec.type, ec.amount, ec.currency, ec.occurred_at, ec.category).where(
                ec.profile_id == profile_id, ec.type.in_(tuple(MONEY_EVENTS))
            )
        )
    ).all()
    await conn.execute(delete(profile_stats).where(profile_stats.c.profile_id == profile_id))
    await conn.execute(
        delete(profile_categories).where(profile_categories.c.profile_id == profile_id)
    )
    changes = [
        (c, r.occurred_at)
        for r in rows
        if (c := change(r.type, r.amount, r.currency, stats_currency)) is not None
    ]
    if changes:
        orders = [at for c, at in changes if c.orders]
        await conn.execute(
            insert(profile_stats).values(
                profile_id=profile_id,
                orders_count=len(orders),
                total_spent=sum((c.spent for c, _ in changes), Decimal(0)),
                first_order_at=min(orders, default=None),
                last_order_at=max(orders, default=None),
            )
        )
    categories = sorted({r.category for r in rows if r.type == "purchase" and r.category})
    if categories:
        await conn.execute(
            insert(profile_categories),
            [{"profile_id": profile_id, "category": c} for c in categories],
        )
