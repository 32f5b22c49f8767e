"""Merging one profile into another, with every field re-encrypted under the survivor's key.

The survivor keeps its id; the absorbed profile becomes status "merged" with `merged_into`, so
its id keeps answering with the survivor. Identities, events, stats, categories and sources move;
consent stays with its addresses (and for profile-keyed channels the most restrictive state
wins).

Every merge is recorded (`merges`: who, why, which rule) with a snapshot of what it changed
(`merge_snapshots`), so that `cdp.profiles.unmerge` can split it back exactly: what the absorbed
profile brought (its identity ids, event ids, field values, traits, profile-keyed consent states,
categories, sources) is encrypted under the absorbed profile's own data key, which is kept for
that (an erasure of the customer deletes it with the other keys of the customer's profiles);
the survivor's pre-merge values are encrypted under the survivor's key.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.tables import (
    ENCRYPTED_PROFILE_FIELDS,
    events,
    identities,
    merges,
    profile_categories,
    profile_sources,
    profile_stats,
    profiles,
)
from cdp.db.upsert import insert_ignore
from cdp.errors import Conflict
from cdp.event_ids import reseal_statement, resealed
from cdp.ids import new_id, utcnow
from cdp.labels import city_key
from cdp.matching.stale import set_aside
from cdp.matching.tables import merge_snapshots
from cdp.platform import Platform
from cdp.profiles.freshness import PLAIN_FIELDS, newer, pinned, present, trait_key
from cdp.stats import TOTAL_TOO_LARGE, beyond_kept
from consent.outbox.enqueue import enqueue_merge, enqueue_profile_withdrawals
from consent.outbox.moves import note_moves
from consent.subjects import profile_subject
from consent.tables import consent_ledger, consent_state

ABSORBED_PLACE = "merge_snapshots.absorbed_state"
SURVIVOR_PLACE = "merge_snapshots.survivor_state"


def takes_jurisdiction(absorbed_given: bool, survivor_given: bool, country_taken: bool) -> bool:
    """Whether a merge takes the absorbed profile's jurisdiction: a jurisdiction a record gave
    outranks one that came from a country (a shop's delivery country does not relax the law a
    CRM said the customer is under); between two of the same kind, the one that goes with the
    country that won."""
    if absorbed_given != survivor_given:
        return absorbed_given
    return country_taken


class AbsorbedState(msgspec.Struct):
    """What the absorbed profile brought into the merge."""

    fields: dict[str, str | None]
    traits: dict[str, Any]
    country: str | None
    city: str | None
    jurisdiction: str
    identity_ids: list[uuid.UUID]
    event_ids: list[uuid.UUID]
    consents: list[dict[str, Any]]  # its profile-keyed consent_state rows
    categories: list[str]
    sources: list[tuple[str, str]]  # (source, first_seen_at)
    repointed: list[uuid.UUID]  # profiles merged into it earlier, re-pointed to the survivor
    times: dict[str, str] = {}  # when each of its values was given (cdp.profiles.freshness)
    jurisdiction_given: bool | None = None  # (profiles.jurisdiction_given)


class SurvivorState(msgspec.Struct):
    """What the merge changed on the survivor: [before, after] per value."""

    fields: dict[str, list[str | None]]
    plain: dict[str, list[str | bool | None]]  # country, city, jurisdiction(_given)
    traits: list[dict[str, Any]]
    consents: dict[str, dict[str, Any]]  # "purpose|channel" -> {"before": row|None, "after": row}
    sources: list[str]  # the survivor's sources before the merge
    ledger_seq: int  # consent ledger head at the merge
    times: dict[str, str] = {}  # when each of its values before the merge was given


async def merge_profiles(
    conn: AsyncConnection,
    p: Platform,
    survivor_id: uuid.UUID,
    absorbed_id: uuid.UUID,
    *,
    matched_on: list[str],
    provenance: str,
    source: str | None,
    actor: str,
) -> uuid.UUID:
    """Merge `absorbed_id` into `survivor_id`; returns the id of the merges row."""
    from consent.state import merge_profile_states

    now = utcnow()
    merge_id = new_id()
    s_row = (await conn.execute(select(profiles).where(profiles.c.id == survivor_id))).one()
    a_row = (await conn.execute(select(profiles).where(profiles.c.id == absorbed_id))).one()
    ciphers = await p.keys.ciphers(conn, [survivor_id, absorbed_id])
    s_cipher, a_cipher = ciphers[survivor_id], ciphers[absorbed_id]

    # Fields and traits: each the value given last (cdp.profiles.freshness), where non-empty.
    def absorbed_newer(name: str) -> bool:
        return newer(a_row.field_times, a_row.updated_at, s_row.field_times, s_row.updated_at, name)

    a_fields = {
        name: a_cipher.decrypt(f"profiles.{name}", getattr(a_row, name))
        for name in ENCRYPTED_PROFILE_FIELDS
    }
    values: dict = {}
    taken: set[str] = set()  # the names whose value comes from the absorbed profile
    field_changes: dict[str, list[str | None]] = {}
    for name in ENCRYPTED_PROFILE_FIELDS:
        s_blob, a_value = getattr(s_row, name), a_fields[name]
        if a_value is not None and (s_blob is None or absorbed_newer(name)):
            before = s_cipher.decrypt(f"profiles.{name}", s_blob)
            values[name] = s_cipher.encrypt(f"profiles.{name}", a_value)
            field_changes[name] = [before, a_value]
            taken.add(name)
    plain_changes: dict[str, list[str | bool | None]] = {}
    for name in PLAIN_FIELDS:
        a_val, s_val = getattr(a_row, name), getattr(s_row, name)
        if a_val and (not s_val or absorbed_newer(name)):
            values[name] = a_val
            plain_changes[name] = [s_val, a_val]
            taken.add(name)
    if "city" in values:
        values["city_key"] = city_key(values["city"])
    # the jurisdiction (the law the customer is under): one a record gave, else the one that
    # goes with the country that won
    if takes_jurisdiction(
        bool(a_row.jurisdiction_given), bool(s_row.jurisdiction_given), "country" in values
    ):
        if a_row.jurisdiction != s_row.jurisdiction:
            values["jurisdiction"] = a_row.jurisdiction
            plain_changes["jurisdiction"] = [s_row.jurisdiction, a_row.jurisdiction]
        if bool(a_row.jurisdiction_given) != bool(s_row.jurisdiction_given):
            values["jurisdiction_given"] = a_row.jurisdiction_given
            plain_changes["jurisdiction_given"] = [
                s_row.jurisdiction_given,
                a_row.jurisdiction_given,
            ]
    s_traits = dict(s_row.traits or {})
    a_traits = dict(a_row.traits or {})
    traits = dict(s_traits)
    for key, value in a_traits.items():
        if key not in s_traits or absorbed_newer(trait_key(key)):
            traits[key] = value
            taken.add(trait_key(key))
    s_held = present(
        {n: getattr(s_row, n) for n in (*ENCRYPTED_PROFILE_FIELDS, *PLAIN_FIELDS)}, s_traits
    )
    a_held = present({**a_fields, "country": a_row.country, "city": a_row.city}, a_traits)
    s_times = pinned(s_row.field_times, s_row.updated_at, s_held)
    a_times = pinned(a_row.field_times, a_row.updated_at, a_held)
    times = {**s_times, **{n: a_times[n] for n in taken}}  # updated_at becomes now
    values.update(traits=traits, field_times=times or None, updated_at=now)
    await conn.execute(update(profiles).where(profiles.c.id == survivor_id).values(**values))

    # Identities: re-encrypt under the survivor's key and move (their ids stay).
    a_idents = (
        await conn.execute(
            select(identities.c.id, identities.c.value).where(
                identities.c.profile_id == absorbed_id
            )
        )
    ).all()
    moved = [
        {
            "iid": iid,
            "v": s_cipher.encrypt(
                "identities.value", a_cipher.decrypt_bytes("identities.value", blob)
            ),
        }
        for iid, blob in a_idents
    ]
    if moved:
        await conn.execute(
            update(identities)
            .where(identities.c.id == bindparam("iid"))
            .values(value=bindparam("v"), profile_id=survivor_id),
            moved,
        )

    # Events: move, re-encrypting their sealed ids and free-form properties.
    ec = events.c
    a_events = (
        await conn.execute(
            select(ec.id, ec.properties, ec.event_ref).where(ec.profile_id == absorbed_id)
        )
    ).all()
    sealed = resealed(a_events, a_cipher, s_cipher)
    if sealed:
        await conn.execute(reseal_statement(s_cipher), sealed)
    await conn.execute(
        update(events).where(events.c.profile_id == absorbed_id).values(profile_id=survivor_id)
    )

    await _merge_stats(conn, survivor_id, absorbed_id)
    s_sources = [
        s
        for (s,) in await conn.execute(
            select(profile_sources.c.source).where(profile_sources.c.profile_id == survivor_id)
        )
    ]
    a_categories: list[str] = []
    a_sources: list[tuple[str, str]] = []
    for table in (profile_categories, profile_sources):
        rows = (await conn.execute(select(table).where(table.c.profile_id == absorbed_id))).all()
        if table is profile_categories:
            a_categories = [r.category for r in rows]
        else:
            a_sources = [(r.source, r.first_seen_at.isoformat()) for r in rows]
        moved_rows = [{**r._asdict(), "profile_id": survivor_id} for r in rows]
        if moved_rows:
            await conn.execute(insert_ignore(conn, table), moved_rows)
        await conn.execute(delete(table).where(table.c.profile_id == absorbed_id))

    consents_before = (
        await profile_states(conn, absorbed_id),
        await profile_states(conn, survivor_id),
    )
    await merge_profile_states(conn, survivor_id, absorbed_id)
    consent_changes = _consent_changes(*consents_before, await profile_states(conn, survivor_id))

    repointed = [
        pid
        for (pid,) in await conn.execute(
            select(profiles.c.id).where(profiles.c.merged_into == absorbed_id)
        )
    ]
    await conn.execute(
        update(profiles)
        .where(profiles.c.id == absorbed_id)
        .values(
            status="merged",
            merged_into=survivor_id,
            traits={},
            field_times=None,
            updated_at=now,
            **dict.fromkeys(ENCRYPTED_PROFILE_FIELDS),
        )
    )
    if repointed:
        await conn.execute(
            update(profiles)
            .where(profiles.c.merged_into == absorbed_id)
            .values(merged_into=survivor_id)
        )
    await set_aside(conn, absorbed_id, now)  # its suggestions: the pair is asked again
    ledger_seq = (
        await conn.execute(
            select(consent_ledger.c.seq).order_by(consent_ledger.c.seq.desc()).limit(1)
        )
    ).scalar() or 0

    absorbed_state = AbsorbedState(
        fields=a_fields,
        traits=a_traits,
        country=a_row.country,
        city=a_row.city,
        jurisdiction=a_row.jurisdiction,
        jurisdiction_given=a_row.jurisdiction_given,
        identity_ids=[iid for iid, _ in a_idents],
        event_ids=[r.id for r in a_events],
        consents=consents_before[0],
        categories=a_categories,
        sources=a_sources,
        repointed=repointed,
        times=a_times,
    )
    survivor_state = SurvivorState(
        fields=field_changes,
        plain=plain_changes,
        traits=[s_traits, traits],
        consents=consent_changes,
        sources=s_sources,
        ledger_seq=ledger_seq,
        times=s_times,
    )
    await conn.execute(
        insert(merges).values(
            id=merge_id,
            survivor_id=survivor_id,
            absorbed_id=absorbed_id,
            matched_on=matched_on,
            provenance=provenance,
            source=source,
            actor=actor,
            at=now,
        )
    )
    await enqueue_merge(  # in this transaction: announced exactly when the merge commits
        conn, "profile.merged", survivor_id=survivor_id, absorbed_id=absorbed_id, source=provenance
    )
    # the survivor's own pushes (messenger) stopped where the absorbed customer had stopped
    # them: announced as such, since a tool on the consent kinds never hears of the merge
    await enqueue_profile_withdrawals(
        conn,
        survivor_id,
        [
            change["after"]
            for change in consent_changes.values()
            if (change["before"] or {}).get("status") != "withdrawn"
        ],
    )
    await note_moves(conn, p.policy, [survivor_id])  # its grants and rules may differ now (lapses)
    await conn.execute(
        insert(merge_snapshots).values(
            merge_id=merge_id,
            survivor_id=survivor_id,
            absorbed_id=absorbed_id,
            absorbed_key_id=a_cipher.key_id,
            absorbed_state=a_cipher.encrypt(ABSORBED_PLACE, msgspec.json.encode(absorbed_state)),
            survivor_key_id=s_cipher.key_id,
            survivor_state=s_cipher.encrypt(SURVIVOR_PLACE, msgspec.json.encode(survivor_state)),
            created_at=now,
        )
    )
    return merge_id


async def profile_states(conn: AsyncConnection, profile_id: uuid.UUID) -> list[dict[str, Any]]:
    """The profile-keyed (push, messenger) consent_state rows of a profile."""
    cs = consent_state.c
    rows = await conn.execute(
        select(cs.purpose, cs.channel, cs.status, cs.since, cs.seq, cs.source).where(
            cs.subject == profile_subject(profile_id)
        )
    )
    return [{**r._asdict(), "since": r.since.isoformat()} for r in rows]


def _consent_changes(
    absorbed: list[dict[str, Any]], before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The survivor's profile-keyed states the merge touched: {key: {before, after}}."""
    old = {(r["purpose"], r["channel"]): r for r in before}
    new = {(r["purpose"], r["channel"]): r for r in after}
    out: dict[str, dict[str, Any]] = {}
    for r in absorbed:
        key = (r["purpose"], r["channel"])
        if key in new and old.get(key) != new[key]:
            out[f"{key[0]}|{key[1]}"] = {"before": old.get(key), "after": new[key]}
    return out


async def _merge_stats(conn: AsyncConnection, survivor_id: uuid.UUID, absorbed_id: uuid.UUID):
    a = (
        await conn.execute(select(profile_stats).where(profile_stats.c.profile_id == absorbed_id))
    ).first()
    if a is None:
        return
    s = (
        await conn.execute(select(profile_stats).where(profile_stats.c.profile_id == survivor_id))
    ).first()
    if s is None:
        await conn.execute(
            update(profile_stats)
            .where(profile_stats.c.profile_id == absorbed_id)
            .values(profile_id=survivor_id)
        )
        return
    if beyond_kept(s.total_spent + a.total_spent):  # resolution's guard, for reviewed merges
        raise Conflict(f"merging these profiles {TOTAL_TOO_LARGE}")
    firsts = [d for d in (s.first_order_at, a.first_order_at) if d is not None]
    lasts = [d for d in (s.last_order_at, a.last_order_at) if d is not None]
    await conn.execute(
        update(profile_stats)
        .where(profile_stats.c.profile_id == survivor_id)
        .values(
            orders_count=s.orders_count + a.orders_count,
            total_spent=s.total_spent + a.total_spent,
            first_order_at=min(firsts) if firsts else None,
            last_order_at=max(lasts) if lasts else None,
        )
    )
    await conn.execute(delete(profile_stats).where(profile_stats.c.profile_id == absorbed_id))
