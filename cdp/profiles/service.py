"""Profile use cases: upsert (one, batch, import), lookup and the decrypted profile view."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.blind_index import BlindIndexer
from cdp.crypto.master import MasterKey
from cdp.db.engine import lock_keys
from cdp.db.tables import identities, merges, profile_categories, profile_stats, profiles
from cdp.errors import DomainError, FieldError, InvalidInput, NotFound
from cdp.ids import new_id
from cdp.normalize import normalise_country
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier, find_profile
from cdp.profiles.identity import IdentityKey, record_keys
from cdp.profiles.ingest import ADDRESS_KINDS, Outcome, ingest
from cdp.profiles.records import (
    ConsentClaim,
    Record,
    parse_profile,
    validate_consents,
    validate_record,
)
from cdp.profiles.sealing import Sealed, seal
from consent.policy import Policy

PREPARE_STEP = 32  # records of a batch validated between two turns of the event loop (~4 ms)


@dataclass(slots=True)
class Prepared:
    """A validated record, its identifier keys, and the consent claims it carries."""

    record: Record
    claims: list[ConsentClaim]
    keys: list[IdentityKey]
    # the id of the profile the record starts, if it starts one: drawn as the record arrives,
    # so that profiles' ids follow their records' order (cdp.profiles.resolution)
    profile_id: uuid.UUID
    rejected_consents: list[FieldError] = field(default_factory=list)
    sealed: Sealed | None = None  # encrypted for a new profile of its own (import workers)


def prepare_with(
    raw: Any,
    policy: Policy,
    indexer: BlindIndexer,
    *,
    strict_consents: bool = True,
    master: MasterKey | None = None,
    whole: str = "body",
    profile_id: uuid.UUID | None = None,
) -> Prepared:
    """Validate one raw record (pure: safe to run in a worker process). `whole` names the
    record in an error about the record itself (not an object). `profile_id`: the id of the
    profile the record would start, drawn when it was read (an import's worker gets it from the
    main process); by default a new one.

    With strict_consents a bad consent rejects the whole record (the API); without, the record
    is kept and the bad consent reported (bulk import). With `master` (an import worker) the
    record is also sealed for the new profile it would create (cdp.profiles.sealing)."""
    data = parse_profile(raw, whole)
    rec = validate_record(data, policy)
    claims, errors = validate_consents(data.consents, rec, policy)
    if errors and strict_consents:
        raise InvalidInput("the record carries an invalid consent", errors)
    keys = record_keys(indexer, rec)
    pid = profile_id if profile_id is not None else new_id()
    sealed = seal(rec, keys, master, pid) if master else None
    return Prepared(rec, claims, keys, pid, errors, sealed)


def prepare(
    raw: Any, p: Platform, *, strict_consents: bool = True, whole: str = "body"
) -> Prepared:
    return prepare_with(raw, p.policy, p.keys.indexer, strict_consents=strict_consents, whole=whole)


async def store_prepared(p: Platform, prepared: list[Prepared], actor: str) -> list[Outcome]:
    """Resolve and store validated records, and their consents, in one write transaction."""
    if not prepared:
        return []
    async with p.db.write() as conn:
        return await store_prepared_in(conn, p, prepared, actor)


async def store_prepared_in(
    conn: AsyncConnection, p: Platform, prepared: list[Prepared], actor: str
) -> list[Outcome]:
    """`store_prepared` inside the caller's write transaction."""
    return (await _store_by_actor(conn, p, [(prepared, actor)]))[0]


async def _store_by_actor(
    conn: AsyncConnection, p: Platform, groups: list[tuple[list[Prepared], str]]
) -> list[list[Outcome]]:
    """Records of one or more API keys (the ledger records who stored each consent), in the
    lock order every writer keeps (cdp.profiles.locks): all identifiers, then the profiles
    (ingest), then the ledger head (consents). Taking a second key's identifiers or profiles
    after the first key's consents held the ledger head deadlocked against an opt-out holding
    one of them while it waited for the head (PostgreSQL failed one of the two)."""
    from consent.optout import carry_person_opt_outs
    from consent.service import record_claims

    await lock_keys(conn, (k.bidx for prepared, _ in groups for x in prepared for k in x.keys))
    resolved = [
        await ingest(
            conn,
            p,
            [x.record for x in prepared],
            actor,
            keys=[x.keys for x in prepared],
            new_ids=[x.profile_id for x in prepared],
            sealed=[x.sealed for x in prepared],
        )
        for prepared, actor in groups
    ]
    # the profiles that still stand (a later group may merge one that an earlier group's
    # record joined or created)
    absorbed = {m for outcomes in resolved for o in outcomes for m in o.merged_profile_ids}
    # a customer who opted out of everything: so are the addresses their records bring, also
    # where "stop all" came from an address before anyone held it (a new customer's too)
    outs = [o for outcomes in resolved for o in outcomes if o.profile_id not in absorbed]
    joined = {o.profile_id for o in outs if not o.created}
    gained = {
        o.profile_id for o in outs if not o.created and (o.gained_address or o.merged_profile_ids)
    }
    await carry_person_opt_outs(conn, p, joined, gained=gained, new=_new_customers(outs, joined))
    # the data keys ingest holds, of the profiles that still stand
    held = {
        o.profile_id: o.cipher
        for outcomes in resolved
        for o in outcomes
        if o.cipher is not None and o.profile_id not in absorbed
    }
    for (prepared, actor), outcomes in zip(groups, resolved, strict=True):
        items = []
        owners: list[Outcome] = []
        for x, o in zip(prepared, outcomes, strict=True):
            named = [(k.kind, k.bidx) for k in o.keys if k.kind in ("email", "phone")]
            items.extend((o.profile_id, named, claim) for claim in x.claims)
            owners.extend(o for _ in x.claims)
        recorded = await record_claims(conn, p, items, actor, held)
        for o, (_, _, claim), done in zip(owners, items, recorded, strict=True):
            if done:
                o.consents_recorded += 1
            else:  # its address was not kept at resolution (the identity cap, a refused merge)
                o.ignored.append(
                    FieldError("consents", f"a {claim.channel} grant: its address was not kept")
                )
    return resolved


def _new_customers(
    outcomes: list[Outcome], joined: set[uuid.UUID]
) -> dict[uuid.UUID, list[tuple[str, bytes]]]:
    """The emails and phones of the profiles the batch created (and no later record of it
    joined), where they are two or more: with one there is nowhere to carry a "stop all
    marketing" of that address to (consent.optout.carry_person_opt_outs)."""
    held = {
        o.profile_id: [(k.kind, k.bidx) for k in o.keys if k.kind in ADDRESS_KINDS]
        for o in outcomes
        if o.created and o.profile_id not in joined
    }
    return {pid: a for pid, a in held.items() if len(a) >= 2}


async def upsert_one(p: Platform, raw: Any, actor: str) -> Outcome:
    """One record, stored before the answer. Records arriving together share a transaction
    (cdp.db.group_commit) and are resolved as one batch, as POST /v1/profiles/batch is: the
    same people end in the same profiles as one after another, but records that link only to
    each other make one profile at once (no intermediate profiles and merges), and only the
    first of them is answered `created`."""
    prepared = prepare(raw, p)
    group = p.db.group_commit("profiles", lambda conn, items: _store_group(conn, p, items))
    return await group.submit((prepared, actor))


async def _store_group(
    conn: AsyncConnection, p: Platform, items: list[tuple[Prepared, str]]
) -> list[Outcome]:
    by_actor: dict[str, list[int]] = {}
    for i, (_, actor) in enumerate(items):
        by_actor.setdefault(actor, []).append(i)
    groups = [([items[i][0] for i in indexes], actor) for actor, indexes in by_actor.items()]
    out: list[Outcome | None] = [None] * len(items)
    for indexes, stored in zip(
        by_actor.values(), await _store_by_actor(conn, p, groups), strict=True
    ):
        for i, outcome in zip(indexes, stored, strict=True):
            out[i] = outcome
    return [o for o in out if o is not None]


@dataclass(slots=True)
class BatchItem:
    index: int
    outcome: Outcome | None = None
    error: DomainError | None = None


async def upsert_batch(p: Platform, raws: list[Any], actor: str) -> list[BatchItem]:
    """Each record stands alone: bad ones are reported, the others stored. A batch waits for
    one of the platform's lanes (cdp.platform.BATCH_LANES), and lets other requests run
    between every PREPARE_STEP records it validates: an opt-out is never queued behind more
    than a few milliseconds of a batch's Python at a time."""
    items = [BatchItem(i) for i in range(len(raws))]
    good: list[tuple[int, Prepared]] = []
    async with p.batch_lanes:
        for i, raw in enumerate(raws):
            if i and i % PREPARE_STEP == 0:
                await asyncio.sleep(0)
            try:
                good.append((i, prepare(raw, p, whole="record")))
            except DomainError as exc:
                items[i].error = exc
        outcomes = await store_prepared(p, [g for _, g in good], actor)
    for (i, _), outcome in zip(good, outcomes, strict=True):
        items[i].outcome = outcome
    return items


async def ensure_profile(
    conn: AsyncConnection,
    p: Platform,
    ident: Identifier,
    *,
    source: str,
    actor: str,
    country: str | None = None,
) -> uuid.UUID:
    """The profile an identifier names; an unknown email, phone or external id creates it."""
    pid = await find_profile(conn, ident)
    if pid is not None:
        return pid
    if ident.kind == "profile_id":
        raise NotFound("no profile with this id")
    outcome = (await ingest(conn, p, [record_for(p, ident, source, country)], actor))[0]
    return outcome.profile_id


def record_for(p: Platform, ident: Identifier, source: str, country: str | None) -> Record:
    """The record of a customer an email, phone or external id names and no profile holds
    (an event or a consent creates them). One the guards never link (`Identifier.unlinked`)
    is not kept, as a record's is not: the customer is created without it."""
    rec = Record(source=ident.source or source)
    if ident.unlinked is not None:
        rec.ignored.append(FieldError(ident.kind, ident.unlinked))
    else:
        setattr(rec, ident.kind, ident.value)
    if country:
        rec.country = normalise_country(country)
        rec.jurisdiction = p.policy.jurisdiction_for_country(rec.country)
    return rec


# The view's statements, built once: building one per call cost more than running it.
_VIEW_PROFILE = select(profiles).where(profiles.c.id == bindparam("pid"))
_VIEW_IDENTITIES = (
    select(identities.c.kind, identities.c.bidx, identities.c.value, identities.c.source)
    .where(identities.c.profile_id == bindparam("pid"))
    .order_by(identities.c.created_at, identities.c.id)  # one record's: in its order
)
_VIEW_STATS = select(profile_stats).where(profile_stats.c.profile_id == bindparam("pid"))
_VIEW_CATEGORIES = select(profile_categories.c.category).where(
    profile_categories.c.profile_id == bindparam("pid")
)
_VIEW_MERGED_FROM = (
    select(merges.c.absorbed_id)
    .where(merges.c.survivor_id == bindparam("pid"), merges.c.undone_at.is_(None))
    .order_by(merges.c.at)
)


async def profile_view(conn: AsyncConnection, p: Platform, profile_id: uuid.UUID) -> dict[str, Any]:
    """The decrypted profile (the id must be a surviving, active profile)."""
    from consent.service import Loaded, consent_view

    one = {"pid": profile_id}
    row = (await conn.execute(_VIEW_PROFILE, one)).one()
    cipher = await p.keys.reader_cipher(conn, profile_id)
    idents = (await conn.execute(_VIEW_IDENTITIES, one)).all()
    stats = (await conn.execute(_VIEW_STATS, one)).first()
    categories = sorted(c for (c,) in await conn.execute(_VIEW_CATEGORIES, one))
    merged_from = [str(a) for (a,) in await conn.execute(_VIEW_MERGED_FROM, one)]
    loaded = Loaded(
        status=row.status,
        jurisdiction=row.jurisdiction,
        cipher=cipher,
        identities=[(k, b, v) for k, b, v, _ in idents],
        orders_count=stats.orders_count if stats else 0,
    )
    consents = await consent_view(conn, p, profile_id, loaded)
    return {
        "profile_id": str(profile_id),
        "identities": [
            {"kind": k, "value": cipher.decrypt("identities.value", v), "source": s}
            for k, _, v, s in idents
        ],
        "first_name": cipher.decrypt("profiles.first_name", row.first_name),
        "last_name": cipher.decrypt("profiles.last_name", row.last_name),
        "birth_date": cipher.decrypt("profiles.birth_date", row.birth_date),
        "postal_address": cipher.decrypt("profiles.postal_address", row.postal_address),
        "postcode": cipher.decrypt("profiles.postcode", row.postcode),
        "city": row.city,
        "country": row.country,
        "jurisdiction": row.jurisdiction,
        "traits": row.traits or {},
        "stats": {
            "orders_count": stats.orders_count if stats else 0,
            "total_spent": str(stats.total_spent) if stats else "0.00",
            "currency": p.policy.stats_currency,  # of total_spent (cdp/stats.py)
            "first_order_at": stats.first_order_at if stats else None,
            "last_order_at": stats.last_order_at if stats else None,
            "categories": categories,
        },
        "consents": {"items": consents.items, "contactable": consents.contactable},
        "merged_from": merged_from,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }
