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
from decimal import Decimal
from typing import NamedTuple

import msgspec
from sqlalchemy import bindparam, insert, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp import event_ids, stats
from cdp.db.bulk import rows_where_in
from cdp.db.conflicts import write_retried
from cdp.db.engine import lock_keys
from cdp.db.tables import events, identities
from cdp.errors import Conflict, DomainError, FieldError, Gone, InvalidInput
from cdp.ids import new_id, time_problem, utcnow
from cdp.labels import CATEGORY_MAX, normalise_category
from cdp.normalize import normalise_country
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier, find_profiles, parse_identifier
from cdp.profiles.ingest import ingest
from cdp.profiles.locks import lock_found
from cdp.profiles.schemas import EventIn
from cdp.profiles.service import record_for


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
            raise InvalidInput.field(
                "amount", f"at most {stats.MONEY_DIGITS} digits and 2 decimals"
            )


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

    async def store(conn: AsyncConnection) -> EventResult:
        (result,) = await store_events(conn, p, [event], actor)
        if isinstance(result, DomainError):
            raise result  # and the transaction rolls back: a refused request stores nothing
        return result

    # lost a deadlock to a writer of the same customer (an import's chunk): run again
    return await write_retried(p.db, store, name="events")


Stored = EventResult | DomainError  # what became of one event of a batch


async def store_events(
    conn: AsyncConnection, p: Platform, batch: list[CheckedEvent], actor: str
) -> list[Stored]:
    """Store checked events in the caller's write transaction, each as if alone and in
    order: `POST /v1/events` stores one, `cdp events import` a chunk. For each, its result,
    or the error that kept it out (nothing of it written): NotFound or Gone for a profile id
    that names no customer or an erased one, InvalidInput where the customer's total_spent
    would outgrow what is kept. In a few statements for the whole batch:
    - an event already recorded (the same source and event id; `cdp.event_ids`) changes
      nothing; one repeated within the batch is recognised as the first;
    - the customers named: the surviving profile of each identifier; an unknown email, phone
      or external id creates one (the batch's unknown identifiers in one `ingest`);
    - their locks (PostgreSQL), then the customers found again under them (a merge or an
      erasure may have committed meanwhile), as `cdp.profiles.locks` says;
    - the events, sealed under their profile's data key, and the stats they move."""
    idx = p.keys.indexer
    keys = [event_ids.event_key(idx, e.body.source, e.body.event_id) for e in batch]
    await lock_keys(conn, [*keys, *(e.ident.bidx for e in batch if e.ident.bidx)])
    results: list[Stored | None] = [None] * len(batch)
    recorded = await _recorded(conn, batch, keys)
    fresh: list[int] = []
    again: list[int] = []  # the same event as one before it in the batch
    first: set[bytes] = set()
    for i, key in enumerate(keys):
        if key in recorded:
            results[i] = _repeated(p, batch[i], recorded[key])
        elif key in first:
            again.append(i)
        else:
            first.add(key)
            fresh.append(i)
    if fresh:
        await _store_fresh(conn, p, batch, keys, fresh, results, actor)
    if again:  # now that the first of each is stored (or refused), as if sent after it
        for i, stored in zip(
            again, await store_events(conn, p, [batch[i] for i in again], actor), strict=True
        ):
            results[i] = stored
    return [r for r in results if r is not None]


_e = events.c
_RECORDED_COLUMNS = (_e.event_key, _e.event_id, _e.profile_id, _e.type, _e.amount, _e.currency)
# built once: building it per call cost more than the driver's whole round trip
_RECORDED = union_all(
    select(*_RECORDED_COLUMNS).where(
        _e.source == bindparam("source"), _e.event_key.in_(bindparam("keys", expanding=True))
    ),
    select(*_RECORDED_COLUMNS).where(
        _e.source == bindparam("source"), _e.event_id.in_(bindparam("ids", expanding=True))
    ),
)


class _Recorded(NamedTuple):
    profile_id: uuid.UUID
    type: str
    amount: Decimal | None
    currency: str | None


ANOTHER_EVENT = "differs from the event recorded under this source and event_id"


def _repeated(p: Platform, event: CheckedEvent, row: _Recorded) -> Stored:
    """A replay of the event recorded under the same (source, event_id): the answer about it.
    One whose type, amount or currency differ is another event under a used id (a refund sent
    under its order's id, an order's amount corrected): Conflict, naming those fields, since
    dropping it while answering about the recorded one would lose it without a word. Its time,
    customer and properties may differ in a replay (a sender that stamps the time of sending)."""
    body = event.body
    differ = [
        name
        for name, sent, kept in (
            ("type", body.type, row.type),
            ("amount", body.amount, row.amount),
            ("currency", body.currency, row.currency),
        )
        if sent != kept
    ]
    if differ:
        return Conflict(
            f"another event was recorded under this source and event_id ({', '.join(differ)}"
            " not as sent): send it under an event_id of its own",
            [FieldError(name, ANOTHER_EVENT) for name in differ],
        )
    counted = stats.counts_in_total(row.type, row.currency, p.policy.stats_currency)
    return EventResult(body.event_id, row.profile_id, False, counted)


async def _recorded(
    conn: AsyncConnection, batch: list[CheckedEvent], keys: list[bytes]
) -> dict[bytes, _Recorded]:
    """The events of the batch already stored, by event key: sealed ones by their key, those
    recorded before sealing (migration 0012) by their plain id. One statement, a UNION ALL of
    two look-ups, each on its unique index (source, key) or (source, id): as one query with OR,
    PostgreSQL (its statistics lagging behind an import) scanned every event of the source for
    each batch; as two statements, `cdp events seal` committing between them moved a row from
    where the second looked to where the first had looked, the repeat was taken for new and
    its insert broke the unique key (a 500). One statement reads one snapshot."""
    found: dict[bytes, _Recorded] = {}
    by_source: dict[str, list[int]] = {}
    for i, event in enumerate(batch):
        by_source.setdefault(event.body.source, []).append(i)
    for source, members in by_source.items():
        for start in range(0, len(members), 500):
            part = members[start : start + 500]
            plain = {batch[i].body.event_id: keys[i] for i in part}
            rows = await conn.execute(
                _RECORDED,
                {"source": source, "keys": [keys[i] for i in part], "ids": list(plain)},
            )
            for key, plain_id, *rest in rows:
                found[key if key is not None else plain[plain_id]] = _Recorded(*rest)
    return found


async def _store_fresh(
    conn: AsyncConnection,
    p: Platform,
    batch: list[CheckedEvent],
    keys: list[bytes],
    fresh: list[int],
    results: list[Stored | None],
    actor: str,
) -> None:
    idents = [batch[i].ident for i in fresh]
    found = await find_profiles(conn, idents)
    # an identifier the guards never link (a shared line, a placeholder) joins nobody who
    # holds it: each of its events is a customer of its own, created without it
    unknown = [j for j, pid in enumerate(found) if pid is None or idents[j].unlinked is not None]
    targets = list(idents)
    if unknown:  # an email, phone or external id no profile holds: the customer is created
        records = [
            record_for(p, idents[j], batch[fresh[j]].body.source, batch[fresh[j]].body.country)
            for j in unknown
        ]
        for j, outcome in zip(unknown, await ingest(conn, p, records, actor), strict=True):
            # by the profile made (an identifier the guards never link is not kept: its
            # profile is)
            targets[j] = Identifier("profile_id", profile_id=outcome.profile_id)
    found = await lock_found(conn, lambda: find_profiles(conn, targets))
    pids = {pid for pid in found if isinstance(pid, uuid.UUID)}
    ciphers = await p.keys.ciphers(conn, pids, strict=True)
    named_by = await _identity_ids(conn, [i.bidx for i in idents if _names_identity(i)])
    before = await stats.load(conn, pids)
    after = dict(before)
    currency = p.policy.stats_currency
    rows, categories, now = [], [], utcnow()
    for j, i in enumerate(fresh):
        pid, body = found[j], batch[i].body
        if isinstance(pid, Exception):
            results[i] = pid if isinstance(pid, DomainError) else Gone("the customer is gone")
            continue
        assert pid is not None  # every unknown customer was created above
        change = stats.change(body.type, body.amount, body.currency, currency)
        if change is not None:
            try:
                after[pid] = stats.folded(after.get(pid, stats.NO_TOTALS), change, body.occurred_at)
            except InvalidInput as exc:
                results[i] = exc
                continue
        if body.category and body.type == "purchase":
            categories.append((pid, body.category))
        cipher = ciphers[pid]
        rows.append(
            {
                "id": new_id(),
                "profile_id": pid,
                "source": body.source,
                "event_key": keys[i],
                "event_ref": event_ids.seal(cipher, body.event_id),
                "type": body.type,
                "occurred_at": body.occurred_at,
                "recorded_at": now,
                "amount": body.amount,
                "currency": body.currency,
                "category": body.category,
                "properties": cipher.encrypt(
                    event_ids.PROPERTIES, msgspec.json.encode(body.properties)
                )
                if body.properties
                else None,
                "key_id": cipher.key_id,
                "identity_id": named_by.get(idents[j].bidx) if _names_identity(idents[j]) else None,
                "named_profile_id": idents[j].profile_id
                if idents[j].kind == "profile_id"
                else None,
            }
        )
        counted = stats.counts_in_total(body.type, body.currency, currency)
        results[i] = EventResult(body.event_id, pid, True, counted)
    if rows:
        await conn.execute(insert(events), rows)
    await stats.save(conn, before, after)
    await stats.add_categories(conn, categories)


def _names_identity(ident: Identifier) -> bool:
    """Whether the event's customer holds the identifier that named it (one the guards never
    link names nobody's: its holder, if any, is another customer)."""
    return ident.bidx is not None and ident.unlinked is None


async def _identity_ids(conn: AsyncConnection, bidxs: list[bytes]) -> dict[bytes, uuid.UUID]:
    """The identity holding each of these blind indexes: which of the customer's identifiers
    named an event (an unmerge gives the event to the side that has it)."""
    rows = await rows_where_in(conn, identities, ("bidx", "id"), "bidx", sorted(set(bidxs)))
    return dict(rows)
