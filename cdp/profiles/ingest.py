"""Deterministic identity resolution and upsert, batch first.

A batch of normalised records is resolved in one pass: one lookup of every blind index, the
records resolved one after another in memory (cdp.profiles.resolution: as many single requests
would be), then bulk writes. Records that share an identifier join one profile; a record that
links several profiles merges them into the oldest. The single-record API is a batch of one, so
there is one code path.

Merge guards (policy `[identity]`): placeholder identifiers never link (they are dropped before
resolution, see cdp.profiles.guards); a profile holds at most `max_identities_per_kind`
identifiers of a kind (more are reported in `ignored`, not linked); a merge that would join more
than `max_profiles_per_merge` profiles, two profiles holding external ids of the same source
(necessarily different values), or more identifiers of a kind than the cap, is refused and
queued in `merge_reviews` with its reason. The record is still stored: in the profile its own
external id names, else the oldest it matched, without the identifiers that belong to the other
profiles. The guards cost one grouped
query per batch, only for batches that merge or add identifiers to existing profiles.

Every new identity records its provenance (`link_rule`, `linked_via`: the identity the record
matched), which `cdp.profiles.unmerge` follows.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import Update, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.fields import FieldCipher
from cdp.db.bulk import bulk_insert, bulk_insert_rows, execute_rows, rows_where_in
from cdp.db.tables import (
    ENCRYPTED_PROFILE_FIELDS,
    identities,
    profile_keys,
    profile_sources,
    profile_stats,
)
from cdp.db.tables import profiles as profiles_t
from cdp.errors import FieldError
from cdp.ids import new_id, utcnow
from cdp.labels import city_key
from cdp.matching.tables import merge_reviews
from cdp.platform import Platform
from cdp.profiles.freshness import pinned, present
from cdp.profiles.guards import junk_reason
from cdp.profiles.identity import IdentityKey, record_keys
from cdp.profiles.locks import lock_profiles
from cdp.profiles.merge import merge_profiles
from cdp.profiles.records import Record
from cdp.profiles.resolution import REFUSED_MESSAGE, Group, Step, resolve
from cdp.profiles.sealing import Sealed
from consent.outbox.moves import note_moves
from consent.policy import IdentityGuards

ADDRESS_KINDS = ("email", "phone")  # the identifiers messages go to

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class Outcome:
    profile_id: uuid.UUID
    created: bool
    matched_on: list[str]
    merged_profile_ids: list[uuid.UUID]
    ignored: list[FieldError]
    keys: list[IdentityKey]  # the record's identifiers that its profile holds (kept)
    review_id: uuid.UUID | None = None  # a merge the guards refused, queued for review
    # the record gave its profile an email or phone the profile did not hold before
    gained_address: bool = False
    consents_recorded: int = 0  # of the record's consent claims (set by store_prepared_in)
    # the profile's data key as this transaction holds it (the consents it carries use it)
    cipher: FieldCipher | None = field(default=None, repr=False, compare=False)


@dataclass(slots=True)
class _Working:
    """A profile being written by this batch."""

    id: uuid.UUID
    is_new: bool
    cipher: FieldCipher
    created_at: datetime
    jurisdiction: str
    jurisdiction_given: bool
    country: str | None
    city: str | None
    traits: dict[str, Any]
    enc: dict[str, bytes | None]
    at: datetime | None = None  # when its values not in field_times were given
    field_times: dict[str, str] | None = None  # (cdp.profiles.freshness)
    touched: bool = False
    stored_jurisdiction: str | None = None  # an existing profile's, before this batch


@dataclass(slots=True)
class _Holdings:
    """What the profiles a batch merges or extends already hold (one grouped query)."""

    counts: dict[uuid.UUID, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    ext_sources: dict[uuid.UUID, set[str]] = field(default_factory=lambda: defaultdict(set))
    spent: dict[uuid.UUID, Decimal] = field(default_factory=dict)  # their total_spent


def usable_keys(keys: list[IdentityKey], guards: IdentityGuards) -> list[IdentityKey]:
    """Drop placeholder identifiers (a second line behind cdp.profiles.records)."""
    return [k for k in keys if junk_reason(k.kind, k.value, guards) is None]


# Statements built once: building one per call cost more than the driver's whole round trip.
_PROFILES = select(profiles_t).where(profiles_t.c.id.in_(bindparam("ids", expanding=True)))
_ic, _ps = identities.c, profile_stats.c
_HELD_COUNTS = (
    select(_ic.profile_id, _ic.kind, _ic.source, func.count())
    .where(_ic.profile_id.in_(bindparam("ids", expanding=True)))
    .group_by(_ic.profile_id, _ic.kind, _ic.source)
)
_SPENT = select(_ps.profile_id, _ps.total_spent).where(
    _ps.profile_id.in_(bindparam("ids", expanding=True))
)
_CHANGE_PROFILE = (
    update(profiles_t)
    .where(profiles_t.c.id == bindparam("pid"))
    .values(
        jurisdiction=bindparam("j"),
        jurisdiction_given=bindparam("jg"),
        country=bindparam("c"),
        city=bindparam("ci"),
        city_key=bindparam("ck"),
        traits=bindparam("tr"),
        field_times=bindparam("ft"),
        updated_at=bindparam("u"),
        **{f: bindparam(f"e_{f}") for f in ENCRYPTED_PROFILE_FIELDS},
    )
)


async def ingest(
    conn: AsyncConnection,
    p: Platform,
    records: list[Record],
    actor: str,
    keys: list[list[IdentityKey]] | None = None,
    sealed: Sequence[Sealed | None] | None = None,
    new_ids: Sequence[uuid.UUID] | None = None,
) -> list[Outcome]:
    """Resolve and upsert `records` inside the caller's write transaction.

    `new_ids`: for each record, the id of the profile it starts if it starts one, drawn in
    the order the records arrived (default: drawn now, in the batch's order); the lowest id is
    the oldest (cdp.profiles.resolution). `sealed`: for each record, what an import worker
    encrypted for that profile (cdp.profiles.sealing), used when the record does start it."""
    now = utcnow()
    if new_ids is None:
        new_ids = [new_id() for _ in records]
    guards = p.policy.identity
    if keys is None:
        keys = [usable_keys(record_keys(p.keys.indexer, r), guards) for r in records]
    existing = await _lookup_locked(conn, list({k.bidx for ks in keys for k in ks}))
    by_profile: dict[uuid.UUID, dict[bytes, uuid.UUID]] = defaultdict(dict)
    for bidx, (pid, iid) in existing.items():
        by_profile[pid][bidx] = iid
    alone, linked = _split(keys, existing, guards)

    # Load every existing profile touched by this batch.
    hit = sorted(by_profile)
    rows: dict[uuid.UUID, Any] = {}
    for start in range(0, len(hit), 500):
        result = await conn.execute(_PROFILES, {"ids": hit[start : start + 500]})
        rows.update({r.id: r for r in result})
    ciphers = await p.keys.ciphers(conn, hit, strict=True)  # locked: writes follow
    held = await _holdings(conn, _guarded(linked, keys, existing))
    groups = {
        pid: Group(
            age=(0, pid),  # the lowest id survives: see cdp.profiles.resolution
            profile_id=pid,
            existing=[pid],
            counts=dict(held.counts.get(pid, {})),
            ext_sources=set(held.ext_sources.get(pid, ())),
            spent=held.spent.get(pid, Decimal(0)),
        )
        for pid in by_profile
    }
    steps = resolve(linked, keys, existing, groups, guards, new_ids)

    outcomes: list[Outcome | None] = [None] * len(records)
    rows_out = _Rows()
    new_identities = rows_out.identities
    seen_identities: list[tuple[bytes, datetime]] = []
    sources = rows_out.sources
    reviews: list[dict] = []
    members: dict[Group, list[int]] = {}  # each profile's records, in the order of the batch
    for i in linked:
        members.setdefault(steps[i].group.root(), []).append(i)
    review_ids = {
        i: await _queue_review(conn, reviews, steps[i], records[i], actor, now)
        for i in linked
        if steps[i].refused is not None
    }
    working: dict[uuid.UUID, _Working] = {}

    for group, batch_records in members.items():
        found = group.existing  # oldest first
        if found:
            survivor_id = found[0]
            for absorbed in found[1:]:
                matched = sorted(
                    {
                        k.kind
                        for i in batch_records
                        for k in keys[i]
                        if k.bidx in by_profile[absorbed]
                    }
                )
                await merge_profiles(
                    conn,
                    p,
                    survivor_id,
                    absorbed,
                    matched_on=matched,
                    provenance="deterministic",
                    source=records[batch_records[0]].source,
                    actor=actor,
                )
            if len(found) > 1:  # the survivor's row changed: reload it
                r = (
                    await conn.execute(select(profiles_t).where(profiles_t.c.id == survivor_id))
                ).one()
                rows[survivor_id] = r
                ciphers.update(await p.keys.ciphers(conn, [survivor_id]))
            r = rows[survivor_id]
            w = _Working(
                id=survivor_id,
                is_new=False,
                cipher=ciphers[survivor_id],
                created_at=r.created_at,
                jurisdiction=r.jurisdiction,
                jurisdiction_given=bool(r.jurisdiction_given),
                country=r.country,
                city=r.city,
                traits=dict(r.traits or {}),
                enc={f: getattr(r, f) for f in ENCRYPTED_PROFILE_FIELDS},
                at=r.updated_at,
                field_times=r.field_times,
                stored_jurisdiction=r.jurisdiction,
            )
        else:
            pid = group.profile_id
            cipher = _new_key(p, pid, _sealed_for(sealed, group.first, pid), rows_out, now)
            first = records[batch_records[0]]
            w = _Working(
                id=pid,
                is_new=True,
                cipher=cipher,
                created_at=_tick(now, batch_records[0]),
                jurisdiction=first.jurisdiction or p.policy.default_jurisdiction,
                jurisdiction_given=first.jurisdiction_given,
                country=None,
                city=None,
                traits={},
                enc=dict.fromkeys(ENCRYPTED_PROFILE_FIELDS),
            )
        working[w.id] = w

        for i in batch_records:
            rec, step = records[i], steps[i]
            rule = "new" if step.created else "deterministic"
            at = _tick(now, i)
            seen_identities.extend((bidx, at) for bidx in step.seen)
            for k, iid in step.new:
                new_identities.append(
                    (
                        iid,
                        w.id,
                        k.kind,
                        k.bidx,
                        w.cipher.encrypt("identities.value", k.value),
                        k.source,
                        at,
                        at,
                        None,
                        rule,
                        step.anchor,
                    )
                )
            _apply(w, rec, at)
            sources.add((w.id, rec.source))
            kept = {*step.seen, *(k.bidx for k, _ in step.new)}
            outcomes[i] = Outcome(
                profile_id=w.id,
                created=step.created and group.first == i,
                matched_on=step.matched,
                merged_profile_ids=step.absorbed,
                ignored=[*rec.ignored, *step.ignored],
                # only the identifiers the profile holds: a consent the record carries is for
                # these, not for one the guards refused (another customer's) or the cap dropped
                keys=[k for k in keys[i] if k.bidx in kept],
                review_id=review_ids.get(i),
                gained_address=any(k.kind in ADDRESS_KINDS for k, _ in step.new),
                cipher=w.cipher,
            )

    for w in working.values():
        if w.is_new:
            rows_out.profiles.append(_profile_row(w))
    if alone:
        _create_alone(p, records, keys, new_ids, sealed, alone, rows_out, outcomes, now)
    changed = [w for w in working.values() if not w.is_new and w.touched]
    await _write(conn, p, rows_out, changed, seen_identities, now)
    # a customer under other rules now: their grants may have lapsed under them (rare)
    await note_moves(
        conn, p.policy, [w.id for w in changed if w.jurisdiction != w.stored_jurisdiction]
    )
    if reviews:
        await bulk_insert(conn, merge_reviews, reviews)
    return [o for o in outcomes if o is not None]


async def _lookup(
    conn: AsyncConnection, bidxs: list[bytes]
) -> dict[bytes, tuple[uuid.UUID, uuid.UUID]]:
    """bidx -> (profile id, identity id) of the identifiers already known."""
    rows = await rows_where_in(conn, identities, ("bidx", "profile_id", "id"), "bidx", bidxs)
    return {bidx: (pid, iid) for bidx, pid, iid in rows}


async def _lookup_locked(
    conn: AsyncConnection, bidxs: list[bytes]
) -> dict[bytes, tuple[uuid.UUID, uuid.UUID]]:
    """`_lookup`, with the profiles it found locked (cdp.profiles.locks). A merge or an
    erasure that held one of them may have moved or deleted the identifiers found meanwhile
    (the caller holds the locks of its own identifiers only, and nobody else can add one of
    those), so they are looked up again under the locks until the answer stands."""
    existing = await _lookup(conn, bidxs)
    while existing and conn.dialect.name == "postgresql":
        await lock_profiles(conn, {pid for pid, _ in existing.values()})
        again = await _lookup(conn, list(existing))
        if again == existing:
            break
        existing = again
    return existing


async def _holdings(conn: AsyncConnection, profile_ids: set[uuid.UUID]) -> _Holdings:
    held = _Holdings()
    ids = sorted(profile_ids)
    for start in range(0, len(ids), 500):
        chunk = {"ids": ids[start : start + 500]}
        for pid, kind, source, n in await conn.execute(_HELD_COUNTS, chunk):
            held.counts[pid][kind] = held.counts[pid].get(kind, 0) + n
            if kind == "external_id":
                held.ext_sources[pid].add(source)
        spent = await conn.execute(_SPENT, chunk)
        held.spent.update((pid, total) for pid, total in spent)
    return held


def _guarded(
    linked: list[int],
    keys: list[list[IdentityKey]],
    existing: dict[bytes, tuple[uuid.UUID, uuid.UUID]],
) -> set[uuid.UUID]:
    """The existing profiles the guards may ask about: those the batch's records connect to
    another profile, or to an identifier not held yet (a merge, or a new identifier, may
    follow). A profile the records name by identifiers it holds only is joined as it is."""
    parent: dict[Any, Any] = {}

    def find(x: Any) -> Any:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i in linked:
        for k in keys[i]:
            parent[find(("k", k.bidx))] = find(("r", i))
    profiles_of: dict[Any, set[uuid.UUID]] = defaultdict(set)
    fresh: set[Any] = set()
    for i in linked:
        root = find(("r", i))
        for k in keys[i]:
            if k.bidx in existing:
                profiles_of[root].add(existing[k.bidx][0])
            else:
                fresh.add(root)
    out: set[uuid.UUID] = set()
    for root, pids in profiles_of.items():
        if len(pids) > 1 or root in fresh:
            out |= pids
    return out


async def _queue_review(
    conn: AsyncConnection,
    reviews: list[dict],
    step: Step,
    record: Record,
    actor: str,
    now: datetime,
) -> uuid.UUID | None:
    """The open review of the merge a record's step refused (one is queued once, however
    often it recurs); None where the batch merged its profiles after all."""
    assert step.refused is not None
    named, reason = step.refused
    found: list[uuid.UUID] = []
    for g in named:
        pid = g.root().profile_id
        if pid not in found:
            found.append(pid)
    if len(found) < 2:
        return None
    ids = [str(pid) for pid in found]
    for row in reviews:
        if row["profile_ids"] == ids and row["reason"]["code"] == reason["code"]:
            return row["id"]
    mr = merge_reviews.c
    for rid, pids, why in await conn.execute(
        select(mr.id, mr.profile_ids, mr.reason).where(
            mr.attached_to == found[0], mr.status == "open"
        )
    ):
        if pids == ids and why.get("code") == reason["code"]:
            return rid
    review_id = new_id()
    reviews.append(
        {
            "id": review_id,
            "status": "open",
            "reason": reason,
            "profile_ids": ids,
            "attached_to": found[0],
            "matched_on": sorted(
                {*step.matched, *(e.field for e in step.ignored if e.message == REFUSED_MESSAGE)}
            ),
            "source": record.source,
            "actor": actor,
            "created_at": now,
        }
    )
    log.info("merge_refused", review_id=str(review_id), code=reason["code"], profiles=len(ids))
    return review_id


def _tick(now: datetime, index: int) -> datetime:
    """The time of the batch's record `index`: a microsecond after the one before, so that
    the values of a batch's records are ordered as those of single requests would be (the
    latest wins a later merge), and so are the identifiers they bring or repeat (a segment
    sends to the address seen last) and the profiles they start."""
    return now + timedelta(microseconds=index)


def _apply(w: _Working, rec: Record, at: datetime) -> None:
    """Latest non-empty value wins; traits merge key by key. A record that carries only
    identifiers leaves the profile (and its updated_at) as it was: updated_at and field_times
    say when each value was given (`at`), which decides a later merge (cdp.profiles.freshness)."""
    if not (rec.fields or rec.jurisdiction or rec.country or rec.city or rec.traits):
        return
    if w.at is not None and w.at != at:  # the values held keep their time
        held = present({**w.enc, "country": w.country, "city": w.city}, w.traits)
        w.field_times = pinned(w.field_times, w.at, held) or None
    w.at = at
    if w.field_times:  # the values the record gives are from `at`
        given = present({**rec.fields, "country": rec.country, "city": rec.city}, rec.traits)
        w.field_times = {n: t for n, t in w.field_times.items() if n not in given} or None
    for name, value in rec.fields.items():
        w.enc[name] = w.cipher.encrypt(f"profiles.{name}", value)
    if rec.jurisdiction_given or (rec.jurisdiction and not w.jurisdiction_given):
        w.jurisdiction = rec.jurisdiction  # a country changes only a jurisdiction not given
        w.jurisdiction_given = w.jurisdiction_given or rec.jurisdiction_given
    if rec.country:
        w.country = rec.country
    if rec.city:
        w.city = rec.city
    if rec.traits:
        w.traits.update(rec.traits)
    w.touched = True


KEY_COLUMNS = ("profile_id", "key_id", "master_key_id", "wrapped", "created_at", "split")
PROFILE_COLUMNS = (
    "id",
    "status",
    "merged_into",
    "jurisdiction",
    "jurisdiction_given",
    "country",
    "city",
    "city_key",
    "traits",
    "key_id",
    *ENCRYPTED_PROFILE_FIELDS,
    "created_at",
    "updated_at",
    "field_times",
)
IDENTITY_COLUMNS = (
    "id",
    "profile_id",
    "kind",
    "bidx",
    "value",
    "source",
    "created_at",
    "last_seen_at",
    "confirmed_at",
    "link_rule",
    "linked_via",
)
SOURCE_COLUMNS = ("profile_id", "source", "first_seen_at")


@dataclass(slots=True)
class _Rows:
    """New rows of a batch, as tuples in the *_COLUMNS orders."""

    keys: list[tuple] = field(default_factory=list)
    shares: list[tuple[uuid.UUID, bytes]] = field(default_factory=list)  # for the key store
    profiles: list[tuple] = field(default_factory=list)
    identities: list[tuple] = field(default_factory=list)
    sources: set[tuple[uuid.UUID, str]] = field(default_factory=set)  # (profile id, source)


def _profile_row(w: _Working) -> tuple:
    return (
        w.id,
        "active",
        None,
        w.jurisdiction,
        w.jurisdiction_given,
        w.country,
        w.city,
        city_key(w.city),
        w.traits,
        w.cipher.key_id,
        *[w.enc[f] for f in ENCRYPTED_PROFILE_FIELDS],
        w.created_at,
        w.at or w.created_at,
        w.field_times,
    )


def _split(
    keys: list[list[IdentityKey]],
    existing: dict[bytes, tuple[uuid.UUID, uuid.UUID]],
    guards: IdentityGuards,
) -> tuple[list[int], list[int]]:
    """(records that create a profile of their own, the others). A record is alone when none
    of its identifiers is known already or carried by another record of the batch."""
    if guards.max_identities_per_kind < 1:  # every identifier hits the cap: the general path
        return [], list(range(len(keys)))
    carried: dict[bytes, int] = {}
    for ks in keys:
        for k in ks:
            carried[k.bidx] = carried.get(k.bidx, 0) + 1
    alone: list[int] = []
    linked: list[int] = []
    for i, ks in enumerate(keys):
        if all(carried[k.bidx] == 1 and k.bidx not in existing for k in ks):
            alone.append(i)
        else:
            linked.append(i)
    return alone, linked


def _sealed_for(
    sealed: Sequence[Sealed | None] | None, i: int | None, pid: uuid.UUID
) -> Sealed | None:
    """What an import worker sealed record `i` with, if it sealed it for profile `pid`."""
    s = sealed[i] if sealed is not None and i is not None else None
    return s if s is not None and s.profile_id == pid else None


def _new_key(
    p: Platform, pid: uuid.UUID, s: Sealed | None, out: _Rows, now: datetime
) -> FieldCipher:
    """The data key of a new profile, its row and its share added to `out`: the key an import
    worker sealed the profile's first record with (`s`, from `_sealed_for`), else a new one."""
    if s is not None:
        cipher = p.keys.adopt(pid, s.key)
        out.keys.append((pid, cipher.key_id, p.keys.master.key_id, s.wrapped, now, True))
        out.shares.append((pid, s.share))
        return cipher
    cipher, key_row = p.keys.new_profile_key(pid)
    out.keys.append(tuple(key_row[c] for c in KEY_COLUMNS))
    out.shares.append((pid, key_row["share"]))
    return cipher


def _create_alone(
    p: Platform,
    records: list[Record],
    keys: list[list[IdentityKey]],
    new_ids: Sequence[uuid.UUID],
    sealed: Sequence[Sealed | None] | None,
    alone: list[int],
    out: _Rows,
    outcomes: list[Outcome | None],
    now: datetime,
) -> None:
    """A new profile for each record in `alone`: what `ingest` does for a component of one
    record and no profile, with the worker's ciphertexts when it sealed the record."""
    default_jurisdiction = p.policy.default_jurisdiction
    for i in alone:
        rec = records[i]
        ks = keys[i]
        at = _tick(now, i)
        pid = new_ids[i]
        s = _sealed_for(sealed, i, pid)
        cipher = _new_key(p, pid, s, out, now)
        key_id = cipher.key_id
        if s is not None and len(s.values) == len(ks):
            enc = s.fields
            values = s.values
            iids = s.identity_ids
        else:
            enc = {n: cipher.encrypt(f"profiles.{n}", v) for n, v in rec.fields.items()}
            values = [cipher.encrypt("identities.value", k.value) for k in ks]
            iids = [new_id() for _ in ks]
        out.profiles.append(
            (
                pid,
                "active",
                None,
                rec.jurisdiction or default_jurisdiction,
                rec.jurisdiction_given,
                rec.country or None,
                rec.city or None,
                city_key(rec.city),
                dict(rec.traits),
                key_id,
                *[enc.get(f) for f in ENCRYPTED_PROFILE_FIELDS],
                at,
                at,  # one object: converted for the driver once (cdp.db.bulk)
                None,
            )
        )
        for k, iid, value in zip(ks, iids, values, strict=True):
            out.identities.append(
                (iid, pid, k.kind, k.bidx, value, k.source, at, at, None, "new", None)
            )
        out.sources.add((pid, rec.source))
        outcomes[i] = Outcome(
            profile_id=pid,
            created=True,
            matched_on=[],
            merged_profile_ids=[],
            ignored=list(rec.ignored),
            keys=ks,
            gained_address=any(k.kind in ADDRESS_KINDS for k in ks),
            cipher=cipher,
        )


def _seen() -> Update:
    return (
        update(identities)
        .where(identities.c.bidx == bindparam("b"))
        .values(last_seen_at=bindparam("t"))
    )


def _paired(p: Platform, row: tuple, offered: dict[uuid.UUID, bytes], kept: dict) -> tuple:
    """A `profile_keys` row (KEY_COLUMNS) whose database half pairs with the share the key
    store kept for it, where that is not the one drawn with the key (`offered`)."""
    pid, key_id, wrapped = row[0], row[1], row[3]
    if pid not in kept:
        return row
    wrapped = p.keys.paired_half(pid, key_id, wrapped, offered[pid], kept[pid])
    return (*row[:3], wrapped, *row[4:])


async def _write(
    conn: AsyncConnection,
    p: Platform,
    rows: _Rows,
    changed: list[_Working],
    seen_identities: list[tuple[bytes, datetime]],
    now: datetime,
) -> None:
    if rows.keys:
        await p.keys.check_current(conn)  # not after a rotation this process missed
        kept = await p.keys.store_shares(rows.shares)  # the key store commits first
        if kept:  # shares a run of this write that rolled back had kept: pair the keys with them
            offered = dict(rows.shares)
            rows.keys = [_paired(p, row, offered, kept) for row in rows.keys]
    await bulk_insert_rows(conn, profile_keys, KEY_COLUMNS, rows.keys)
    await bulk_insert_rows(conn, profiles_t, PROFILE_COLUMNS, rows.profiles)
    if changed:
        await conn.execute(
            _CHANGE_PROFILE,
            [
                {
                    "pid": w.id,
                    "j": w.jurisdiction,
                    "jg": w.jurisdiction_given,
                    "c": w.country,
                    "ci": w.city,
                    "ck": city_key(w.city),
                    "tr": w.traits,
                    "ft": w.field_times,
                    "u": w.at,
                    **{f"e_{f}": w.enc[f] for f in ENCRYPTED_PROFILE_FIELDS},
                }
                for w in changed
            ],
        )
    await bulk_insert_rows(conn, identities, IDENTITY_COLUMNS, rows.identities)
    await execute_rows(conn, "ingest.seen", _seen, ("b", "t"), seen_identities)
    await bulk_insert_rows(
        conn,
        profile_sources,
        SOURCE_COLUMNS,
        [(pid, source, now) for pid, source in rows.sources],
        ignore_conflicts=True,
    )
