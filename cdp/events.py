"""Behavioural events, idempotent on (source, event_id), keeping per-profile stats on write.
The sender's event id is stored sealed (`cdp.event_ids`): senders put emails in them.

An event is stored normalised (`normalised`): its type trimmed and lower-cased ("Purchase" is a
purchase), its category trimmed, inner whitespace collapsed and case-folded (" Shoes " and
"SHOES" are "shoes", as the `categories` rule compares them). A purchase or refund then moves
the customer's stats by the rule in cdp.stats: orders whatever the currency, total_spent only in
the policy's stats currency. Segments read the stats, never the raw events.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import msgspec
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp import event_ids, stats
from cdp.db.engine import lock_keys
from cdp.db.tables import events, identities
from cdp.errors import InvalidInput
from cdp.ids import new_id, time_problem, utcnow
from cdp.labels import CATEGORY_MAX, normalise_category
from cdp.normalize import normalise_country
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier, parse_identifier
from cdp.profiles.locks import lock_profile
from cdp.profiles.schemas import EventIn
from cdp.profiles.service import ensure_profile


@dataclass(frozen=True, slots=True)
class EventResult:
    event_id: str
    profile_id: uuid.UUID
    created: bool
    # for a purchase or refund: whether its amount counts in total_spent (None: other events)
    in_total_spent: bool | None = None


def normalised(body: EventIn) -> EventIn:
    """The event as it is stored and decided on (the one place types and categories are
    normalised). Raises InvalidInput for a type or category that is blank or grows too long."""
    kind = stats.event_type(body.type)
    if not kind:
        raise InvalidInput.field("type", "must not be blank")
    category = normalise_category(body.category)
    if category is not None and len(category) > CATEGORY_MAX:
        raise InvalidInput.field("category", f"at most {CATEGORY_MAX} characters")
    return msgspec.structs.replace(body, type=kind, category=category)


def check_event(body: EventIn) -> None:
    if (problem := time_problem(body.occurred_at)) is not None:  # a purchase "in 2099"...
        raise InvalidInput.field("occurred_at", problem)
    if body.country is not None and body.country.strip():
        normalise_country(body.country)  # the country of a customer it may create: 400 if none
    if body.type in stats.MONEY_EVENTS:
        if body.amount is None:
            raise InvalidInput.field("amount", f"required for a {body.type} event")
        if body.currency is None:
            raise InvalidInput.field("currency", f"required for a {body.type} event")
    if body.amount is not None:
        if not body.amount.is_finite() or body.amount < 0:
            raise InvalidInput.field("amount", "must be a non-negative decimal")
        if body.amount.as_tuple().exponent < -2 or body.amount >= stats.MONEY_LIMIT:
            raise InvalidInput.field("amount", "at most 16 digits and 2 decimals")


@dataclass(frozen=True, slots=True)
class CheckedEvent:
    """An event as it is stored, and the customer it names: what `checked` made of a body."""

    body: EventIn
    ident: Identifier


def checked(p: Platform, body: EventIn) -> CheckedEvent:
    """The event normalised and checked, its identifier parsed; raises InvalidInput naming
    the field. Nothing is read or stored."""
    body = normalised(body)
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
    return CheckedEvent(body, ident)


async def record_event(p: Platform, body: EventIn, actor: str) -> EventResult:
    event = checked(p, body)
    async with p.db.write() as conn:
        return await store_event(conn, p, event, actor)


async def store_event(
    conn: AsyncConnection, p: Platform, event: CheckedEvent, actor: str
) -> EventResult:
    """Store a checked event in the caller's write transaction (`cdp events import` stores a
    chunk of them in one). Raises Gone, before writing anything, for an erased customer."""
    body, ident = event.body, event.ident
    currency = p.policy.stats_currency
    key = event_ids.event_key(p.keys.indexer, body.source, body.event_id)
    await lock_keys(conn, [key, *([ident.bidx] if ident.bidx else [])])
    existing = (
        await conn.execute(
            select(events.c.profile_id, events.c.type, events.c.currency).where(
                event_ids.same_event(body.source, key, body.event_id)
            )
        )
    ).first()
    if existing is not None:
        counted = stats.counts_in_total(existing.type, existing.currency, currency)
        return EventResult(body.event_id, existing.profile_id, False, counted)
    pid = await ensure_profile(
        conn, p, ident, source=body.source, actor=actor, country=body.country
    )
    pid = await lock_profile(conn, pid)  # an erasure or merge may have committed meanwhile
    identity_id = None
    if ident.bidx is not None:  # which of the customer's identifiers named it
        identity_id = (
            await conn.execute(select(identities.c.id).where(identities.c.bidx == ident.bidx))
        ).scalar()
    cipher = (await p.keys.ciphers(conn, [pid], strict=True))[pid]
    props = None
    if body.properties:
        props = cipher.encrypt(event_ids.PROPERTIES, msgspec.json.encode(body.properties))
    await conn.execute(
        insert(events).values(
            id=new_id(),
            profile_id=pid,
            source=body.source,
            event_key=key,
            event_ref=event_ids.seal(cipher, body.event_id),
            type=body.type,
            occurred_at=body.occurred_at,
            recorded_at=utcnow(),
            amount=body.amount,
            currency=body.currency,
            category=body.category,
            properties=props,
            key_id=cipher.key_id,
            identity_id=identity_id,
        )
    )
    change = stats.change(body.type, body.amount, body.currency, currency)
    if change is not None:
        await stats.apply(conn, pid, change, body.occurred_at)
    if body.category and body.type == "purchase":
        await stats.add_category(conn, pid, body.category)
    counted = stats.counts_in_total(body.type, body.currency, currency)
    return EventResult(body.event_id, pid, True, counted)
