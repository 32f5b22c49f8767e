"""event types and purchase categories normalised; stats in one currency

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 10:00:00.000000

Events are now stored with their type trimmed and lower-cased and their category trimmed,
inner whitespace collapsed and case-folded; `profile_categories` hold categories in that form,
and `total_spent` adds only amounts in the policy's stats currency (cdp/stats.py). This brings
stored rows to that form:

1. every distinct event type and category is rewritten in its normal form ("Purchase" ->
   "purchase", " Shoes " -> "shoes"); a category that would grow past 120 characters (case
   folding can lengthen one) is left as it was;
2. `profile_categories`: each row moves to the normal form of its category; where a profile
   already has that form (" shoes " and "SHOES" of one customer, the table's key being
   (profile_id, category)) the rows become one;
3. the stats and categories of every profile that has a purchase or refund spelled otherwise
   ("Purchase" was stored but never counted) or in another currency than the stats currency
   (which was added to total_spent) are recomputed from its events.

The rules are copied here as they are at this revision (a migration must not change when the
code does later). The stats currency is read from the policy file the service reads
(CDP_POLICY_DIR, else policies/). Downgrade keeps the normalised rows: the original spellings
are not kept anywhere.
"""

import os
import tomllib
import unicodedata
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from alembic import op

import cdp.db.types

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MONEY = {"purchase": 1, "refund": -1}
CATEGORY_MAX = 120
CHUNK = 500

events = sa.table(
    "events",
    sa.column("profile_id", sa.Uuid()),
    sa.column("type", sa.String()),
    sa.column("amount", sa.Numeric(18, 2)),
    sa.column("currency", sa.String()),
    sa.column("category", sa.String()),
    sa.column("occurred_at", cdp.db.types.UTCDateTime()),
)
categories = sa.table(
    "profile_categories", sa.column("profile_id", sa.Uuid()), sa.column("category", sa.String())
)
stats = sa.table(
    "profile_stats",
    sa.column("profile_id", sa.Uuid()),
    sa.column("orders_count", sa.Integer()),
    sa.column("total_spent", sa.Numeric(18, 2)),
    sa.column("first_order_at", cdp.db.types.UTCDateTime()),
    sa.column("last_order_at", cdp.db.types.UTCDateTime()),
)


def event_type(raw: str) -> str:
    return raw.strip().lower()


def category(raw: str) -> str | None:
    text = " ".join(unicodedata.normalize("NFC", raw).split())
    return unicodedata.normalize("NFC", text.casefold()) or None


def stats_currency() -> str:
    directory = Path(os.environ.get("CDP_POLICY_DIR") or Path(__file__).parents[2] / "policies")
    with open(directory / "policy.toml", "rb") as f:
        return tomllib.load(f).get("stats", {}).get("currency", "RUB")


def upgrade() -> None:
    conn = op.get_bind()
    e = events.c
    recount: set = set()
    for (raw,) in conn.execute(sa.select(e.type).distinct()).all():
        new = event_type(raw)
        if new == raw or not new:
            continue
        if new in MONEY:
            recount.update(
                pid for (pid,) in conn.execute(sa.select(e.profile_id).where(e.type == raw))
            )
        conn.execute(sa.update(events).where(e.type == raw).values(type=new))
    currency = stats_currency()
    foreign = sa.select(e.profile_id).where(
        e.type.in_(tuple(MONEY)),
        e.amount.is_not(None),
        sa.or_(e.currency.is_(None), e.currency != currency),
    )
    recount.update(pid for (pid,) in conn.execute(foreign.distinct()))

    for (raw,) in conn.execute(sa.select(e.category).where(e.category.is_not(None)).distinct()):
        new = category(raw)
        if new != raw and (new is None or len(new) <= CATEGORY_MAX):
            conn.execute(sa.update(events).where(e.category == raw).values(category=new))
    _normalise_profile_categories(conn)

    ordered = sorted(recount)
    for start in range(0, len(ordered), CHUNK):
        _recompute(conn, ordered[start : start + CHUNK], currency)


def _normalise_profile_categories(conn: sa.Connection) -> None:
    c = categories.c
    for (raw,) in conn.execute(sa.select(c.category).distinct()).all():
        new = category(raw)
        if new == raw or (new is not None and len(new) > CATEGORY_MAX):
            continue
        if new is not None:
            held = categories.alias("held")
            already = sa.exists().where(held.c.profile_id == c.profile_id, held.c.category == new)
            moving = sa.select(c.profile_id, sa.literal(new, sa.String())).where(
                c.category == raw, ~already
            )
            conn.execute(sa.insert(categories).from_select(["profile_id", "category"], moving))
        conn.execute(sa.delete(categories).where(c.category == raw))


def _recompute(conn: sa.Connection, pids: list, currency: str) -> None:
    """Stats and categories of these profiles from their events, as cdp.stats.recompute."""
    e = events.c
    rows = conn.execute(
        sa.select(e.profile_id, e.type, e.amount, e.currency, e.occurred_at, e.category).where(
            e.profile_id.in_(pids), e.type.in_(tuple(MONEY))
        )
    ).all()
    conn.execute(sa.delete(stats).where(stats.c.profile_id.in_(pids)))
    conn.execute(sa.delete(categories).where(categories.c.profile_id.in_(pids)))
    money: dict = {}
    for r in rows:
        if r.amount is not None:
            money.setdefault(r.profile_id, []).append(r)
    if money:
        conn.execute(sa.insert(stats), [_stats_row(pid, rs, currency) for pid, rs in money.items()])
    bought = {(r.profile_id, r.category) for r in rows if r.type == "purchase" and r.category}
    if bought:
        conn.execute(
            sa.insert(categories),
            [{"profile_id": pid, "category": cat} for pid, cat in sorted(bought)],
        )


def _stats_row(pid: object, rows: list, currency: str) -> dict:
    orders = [r.occurred_at for r in rows if r.type == "purchase"]
    spent = sum((MONEY[r.type] * r.amount for r in rows if r.currency == currency), Decimal(0))
    return {
        "profile_id": pid,
        "orders_count": len(orders),
        "total_spent": spent,
        "first_order_at": min(orders, default=None),
        "last_order_at": max(orders, default=None),
    }


def downgrade() -> None:
    pass
