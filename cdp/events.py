"""Behavioural events, idempotent on (source, event_id), keeping per-profile stats on write.

A purchase adds to orders_count and total_spent and moves first/last order; a refund subtracts
its amount. Segments read the stats, never the raw events.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import msgspec
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.engine import lock_keys
from cdp.db.tables import events, profile_categories, profile_stats
from cdp.db.upsert import insert_ignore
from cdp.errors import InvalidInput
from cdp.ids import new_id, time_problem, utcnow
from cdp.platform import Platform
from cdp.profiles.identifiers import parse_identifier
from cdp.profiles.schemas import EventIn
from cdp.profiles.service import ensure_profile

MONEY_EVENTS = {"purchase": 1, "refund": -1}


@dataclass(frozen=True, slots=True)
class EventResult:
    event_id: str
    profile_id: uuid.UUID
    created: bool


def check_event(body: EventIn) -> None:
    if (problem := time_problem(body.occurred_at)) is not None:  # a purchase "in 2099"...
        raise InvalidInput.field("occurred_at", problem)
    if body.type in MONEY_EVENTS:
        if body.amount is None:
            raise InvalidInput.field("amount", f"required for a {body.type} event")
        if body.currency is None:
            raise InvalidInput.field("currency", f"required for a {body.type} event")
    if body.amount is not None:
        if not body.amount.is_finite() or body.amount < 0:
            raise InvalidInput.field("amount", "must be a non-negative decimal")
        if body.amount.as_tuple().exponent < -2 or body.amount >= Decimal("1e16"):
            raise InvalidInput.field("amount", "at most 16 digits and 2 decimals")


async def record_event(p: Platform, body: EventIn, actor: str) -> EventResult:
    check_event(body)
    ident = parse_identifier(
        p.policy,
        p.keys.indexer,
        profile_id=body.profile_id,
        email=body.email,
        phone=body.phone,
        source=body.source,
        external_id=body.external_id,
        country=body.country,
    )
    async with p.db.write() as conn:
        await lock_keys(conn, [f"event|{body.source}|{body.event_id}", ident.bidx or b""])
        existing = (
            await conn.execute(
                select(events.c.profile_id).where(
                    events.c.source == body.source, events.c.event_id == body.event_id
                )
            )
        ).scalar()
        if existing is not None:
            return EventResult(body.event_id, existing, created=False)
        pid = await ensure_profile(
            conn, p, ident, source=body.source, actor=actor, country=body.country
        )
        await lock_keys(conn, [f"profile|{pid}"])
        props = None
        key_id = None
        if body.properties:
            cipher = (await p.keys.ciphers(conn, [pid]))[pid]
            props = cipher.encrypt("events.properties", msgspec.json.encode(body.properties))
            key_id = cipher.key_id
        await conn.execute(
            insert(events).values(
                id=new_id(),
                profile_id=pid,
                source=body.source,
                event_id=body.event_id,
                type=body.type,
                occurred_at=body.occurred_at,
                recorded_at=utcnow(),
                amount=body.amount,
                currency=body.currency,
                category=body.category,
                properties=props,
                key_id=key_id,
            )
        )
        sign = MONEY_EVENTS.get(body.type)
        if sign is not None and body.amount is not None:
            await _update_stats(conn, pid, sign, body.amount, body.occurred_at)
        if body.category and body.type == "purchase":
            await conn.execute(
                insert_ignore(conn, profile_categories).values(
                    profile_id=pid, category=body.category
                )
            )
        return EventResult(body.event_id, pid, created=True)


async def _update_stats(
    conn: AsyncConnection, pid: uuid.UUID, sign: int, amount: Decimal, at: datetime
) -> None:
    row = (
        await conn.execute(select(profile_stats).where(profile_stats.c.profile_id == pid))
    ).first()
    orders = 1 if sign > 0 else 0
    if row is None:
        await conn.execute(
            insert(profile_stats).values(
                profile_id=pid,
                orders_count=orders,
                total_spent=sign * amount,
                first_order_at=at if orders else None,
                last_order_at=at if orders else None,
            )
        )
        return
    values = {
        "orders_count": row.orders_count + orders,
        "total_spent": row.total_spent + sign * amount,
    }
    if orders:
        values["first_order_at"] = min(d for d in (row.first_order_at, at) if d is not None)
        values["last_order_at"] = max(d for d in (row.last_order_at, at) if d is not None)
    await conn.execute(
        update(profile_stats).where(profile_stats.c.profile_id == pid).values(**values)
    )
