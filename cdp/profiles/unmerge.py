"""Undoing merges exactly, along the links recorded when they were made.

`unmerge(conn, p, profile_id, actor)`: for a surviving profile, undoes every merge into it (the
newest first); for a merged-away profile, undoes the merge that absorbed it. Each undo splits
the profile that holds the merge's survivor today (the holder) back into two:

- identities: those the absorbed profile brought, and any later identity linked through one of
  them (`identities.linked_via`), go back to it, re-encrypted under its key; consent on their
  addresses follows them (it belongs to the address);
- events the merge moved go back, and so do events recorded since that an identity going
  back named (`events.identity_id`) or that named the absorbed profile by its id
  (`events.named_profile_id`); stats and categories of both are recomputed from events;
- the absorbed profile's fields, traits, sources, categories and profile-keyed (push, messenger)
  consent states come back from the snapshot; the survivor's values the merge overwrote are
  put back where nothing changed them since. A withdrawal recorded on the merged profile after
  the merge applies to both halves (fail closed); a grant recorded on it counts for neither,
  push and messenger (`_grants_while_merged_count_for_neither`) and an address's grant that
  reached it through the merged profile (consent.merged_consent);
- the absorbed profile is active again, and the merges row is marked undone; open match
  suggestions naming the holder are set aside (cdp.matching.stale): it is not the customer
  they scored any more;
- not while an erasure request of the customer is open (409): the erasure erases the customer
  as the request found them, both halves (before, an unmerge in between left the half holding
  the address the request named);
- snapshots of later merges into the holder are rewritten as if this merge had never been
  (`rebased`), and the holder gets a new data key (cdp.profiles.rekey): what was recorded for
  the absorbed customer while merged is under the old one, which her erasure destroys.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec
import structlog
from sqlalchemy import and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp import stats
from cdp.crypto.fields import FieldCipher
from cdp.db.engine import lock_keys
from cdp.db.tables import (
    ENCRYPTED_PROFILE_FIELDS,
    events,
    identities,
    merges,
    profile_sources,
    profiles,
)
from cdp.db.upsert import insert_ignore
from cdp.errors import Conflict, Gone, NotFound
from cdp.event_ids import reseal_statement, resealed
from cdp.ids import utcnow
from cdp.labels import city_key
from cdp.matching.stale import set_aside
from cdp.matching.tables import merge_snapshots
from cdp.platform import Platform
from cdp.profiles.freshness import PLAIN_FIELDS, pinned, present, trait_key
from cdp.profiles.identifiers import profiles_addresses
from cdp.profiles.identity import resolve_profile_id
from cdp.profiles.locks import lock_profiles
from cdp.profiles.merge import (
    ABSORBED_PLACE,
    SURVIVOR_PLACE,
    AbsorbedState,
    SurvivorState,
    profile_states,
)
from cdp.profiles.rekey import rekey
from consent import evidence, ledger, merged_consent
from consent.dsr.requests import erasure_open_for
from consent.ledger import Entry, ordering_time, supersedes
from consent.outbox.enqueue import enqueue_merge, enqueue_profile_withdrawals
from consent.outbox.moves import note_moves
from consent.policy import Policy
from consent.subjects import expand_channel, profile_subject
from consent.tables import consent_ledger, consent_state

log = structlog.get_logger(__name__)
_MISSING = object()
UNMERGE = merged_consent.SOURCE  # source and method of the withdrawals an unmerge records


@dataclass(slots=True)
class Unmerged:
    profile_ids: list[uuid.UUID] = field(default_factory=list)
    merge_ids: list[uuid.UUID] = field(default_factory=list)


async def unmerge(
    conn: AsyncConnection, p: Platform, profile_id: uuid.UUID, actor: str
) -> Unmerged:
    row = (await conn.execute(select(profiles.c.status).where(profiles.c.id == profile_id))).first()
    if row is None:
        raise NotFound("no profile with this id")
    if row.status == "erased":
        raise Gone("this profile was erased")
    mc = merges.c
    if row.status == "merged":
        query = select(merges).where(mc.absorbed_id == profile_id, mc.undone_at.is_(None))
    else:
        query = select(merges).where(mc.survivor_id == profile_id, mc.undone_at.is_(None))
    todo = (await conn.execute(query.order_by(mc.at.desc(), mc.id.desc()))).all()
    if not todo:
        raise Conflict("this profile has no merge to undo")
    out = Unmerged()
    while todo:
        for m in todo:
            holder = await undo_merge(conn, p, m, actor)
            if not out.profile_ids:
                out.profile_ids.append(holder)
            out.profile_ids.append(m.absorbed_id)
            out.merge_ids.append(m.id)
        if row.status == "merged":
            break
        # merges into the survivor committed before it was locked (PostgreSQL reads what is
        # committed at each statement): undone too, now that no other can come
        todo = (await conn.execute(query.order_by(mc.at.desc(), mc.id.desc()))).all()
    return out


async def undo_merge(conn: AsyncConnection, p: Platform, m: Any, actor: str) -> uuid.UUID:
    """Undo one merges row; returns the profile that kept the survivor's side."""
    now = utcnow()
    snap = (
        await conn.execute(select(merge_snapshots).where(merge_snapshots.c.merge_id == m.id))
    ).first()
    if snap is None:
        raise Conflict("this merge has no snapshot to undo it from")
    holder = await resolve_profile_id(conn, m.survivor_id)
    if holder != m.survivor_id:
        # the survivor was merged on since: that merge's snapshot and the survivor's own key
        # hold what this merge brought in, which only undoing that merge first takes back
        raise Conflict(
            f"profile {m.survivor_id}, which absorbed this one, has since been merged into "
            f"profile {holder}: undo that merge first (POST /v1/profiles/{m.survivor_id}/unmerge)"
        )
    a_id = m.absorbed_id
    bidxs = [
        b
        for (b,) in await conn.execute(
            select(identities.c.bidx).where(identities.c.profile_id == holder)
        )
    ]
    await lock_keys(conn, bidxs)  # identifiers first, then profiles (cdp.profiles.locks)
    # an open erasure erases the customer the request found: both halves of this merge
    found = await erasure_open_for(conn, [holder])
    if found is not None:
        raise Conflict(
            f"erasure request {found[1].id} of this customer is open: it erases the profiles "
            "as they were merged when it was received"
        )
    await lock_profiles(conn, [holder, a_id])
    if await resolve_profile_id(conn, m.survivor_id) != holder:
        raise Conflict("the profile was merged again meanwhile: try again")
    ciphers = await p.keys.ciphers(conn, {holder, a_id, m.survivor_id})
    if a_id not in ciphers or holder not in ciphers:
        raise Gone("a data key of this merge was destroyed")
    a_cipher, h_cipher = ciphers[a_id], ciphers[holder]
    a_state = msgspec.json.decode(
        a_cipher.decrypt_bytes(ABSORBED_PLACE, snap.absorbed_state), type=AbsorbedState
    )
    s_state = msgspec.json.decode(
        ciphers[m.survivor_id].decrypt_bytes(SURVIVOR_PLACE, snap.survivor_state),
        type=SurvivorState,
    )

    moved = await _move_identities(conn, holder, a_id, a_state, h_cipher, a_cipher)
    # the proof of consent on the addresses that go back stays readable for their customer
    await evidence.keep_for(
        conn, p, [r.bidx for r in moved if r.kind != "external_id"], a_cipher, s_state.ledger_seq
    )
    event_ids = await _events_named_by(
        conn, holder, [r.id for r in moved], [a_id, *a_state.repointed]
    )
    event_ids = sorted(set(a_state.event_ids) | set(event_ids))
    await _move_events(conn, holder, a_id, event_ids, h_cipher, a_cipher)
    for pid in (holder, a_id):
        await stats.recompute(conn, pid, p.policy.stats_currency)
    await _restore_sources(conn, holder, m, a_id, a_state, s_state, moved)
    await _restore_fields(conn, holder, a_id, a_state, s_state, h_cipher, a_cipher, now)
    await _restore_profile_consents(conn, p.policy, holder, a_id, a_state, s_state)
    await _grants_while_merged_count_for_neither(conn, p, holder, s_state, actor, now, h_cipher)
    await merged_consent.withdraw_doubtful(
        conn, p, s_state.ledger_seq, await profiles_addresses(conn, {holder, a_id}), actor, now
    )
    await merged_consent.hand_over_withdrawals(conn, p, holder, a_id, s_state.ledger_seq, actor)

    await _rebase_later_snapshots(conn, holder, m, s_state, h_cipher)

    if a_state.repointed:
        await conn.execute(
            update(profiles)
            .where(profiles.c.id.in_(a_state.repointed), profiles.c.merged_into == holder)
            .values(merged_into=a_id)
        )
    await conn.execute(
        update(merges).where(merges.c.id == m.id).values(undone_at=now, undone_by=actor)
    )
    await conn.execute(delete(merge_snapshots).where(merge_snapshots.c.merge_id == m.id))
    # the holder no longer holds the customer its open suggestions were scored on
    await set_aside(conn, holder, now)
    # what was recorded for the absorbed customer while merged is under the holder's key
    await rekey(conn, p, holder, h_cipher, merged_since=s_state.ledger_seq)
    await enqueue_merge(
        conn, "profile.unmerged", survivor_id=holder, absorbed_id=a_id, source="unmerge"
    )
    # then, under her id, the pushes (messenger) that stay off for her as the split left them:
    # a withdrawal recorded while merged binds both halves, yet was announced for the holder
    await enqueue_profile_withdrawals(conn, a_id, await profile_states(conn, a_id))
    await note_moves(conn, p.policy, [holder, a_id])  # addresses changed holder (lapses)
    log.info("merge_undone", merge_id=str(m.id), holder=str(holder), absorbed=str(a_id))
    return holder


async def _move_identities(
    conn: AsyncConnection,
    holder: uuid.UUID,
    a_id: uuid.UUID,
    a_state: AbsorbedState,
    h_cipher: FieldCipher,
    a_cipher: FieldCipher,
) -> list[Any]:
    ic = identities.c
    rows = (
        await conn.execute(
            select(
                ic.id, ic.kind, ic.bidx, ic.value, ic.source, ic.created_at, ic.linked_via
            ).where(ic.profile_id == holder)
        )
    ).all()
    back = set(a_state.identity_ids) & {r.id for r in rows}
    grew = True
    while grew:  # later identities linked through one that goes back follow it
        grew = False
        for r in rows:
            if r.id not in back and r.linked_via in back:
                back.add(r.id)
                grew = True
    moved = [r for r in rows if r.id in back]
    if moved:
        await conn.execute(
            update(identities)
            .where(ic.id == bindparam("iid"))
            .values(value=bindparam("v"), profile_id=a_id),
            [
                {
                    "iid": r.id,
                    "v": a_cipher.encrypt(
                        "identities.value", h_cipher.decrypt_bytes("identities.value", r.value)
                    ),
                }
                for r in moved
            ],
        )
        addresses = [r.bidx for r in moved if r.kind in ("email", "phone")]
        if addresses:
            await conn.execute(
                update(consent_state)
                .where(consent_state.c.subject.in_(addresses))
                .values(profile_id=a_id)
            )
    return moved


async def _events_named_by(
    conn: AsyncConnection,
    holder: uuid.UUID,
    identity_ids: list[uuid.UUID],
    profile_ids: list[uuid.UUID],
) -> list[uuid.UUID]:
    """The holder's events named by one of these identities or by one of these profile ids
    (the absorbed profile's, and those merged into it before): recorded after the merge, they
    go back with what named them."""
    ec = events.c
    out: list[uuid.UUID] = []
    for column, ids in ((ec.identity_id, identity_ids), (ec.named_profile_id, profile_ids)):
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await conn.execute(
                select(ec.id).where(ec.profile_id == holder, column.in_(chunk))
            )
            out.extend(eid for (eid,) in rows)
    return out


async def _move_events(
    conn: AsyncConnection,
    holder: uuid.UUID,
    a_id: uuid.UUID,
    event_ids: list[uuid.UUID],
    h_cipher: FieldCipher,
    a_cipher: FieldCipher,
) -> None:
    ec = events.c
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start : start + 500]
        rows = await conn.execute(
            select(ec.id, ec.properties, ec.event_ref).where(
                ec.id.in_(chunk), ec.profile_id == holder
            )
        )
        sealed = resealed(rows, h_cipher, a_cipher)  # sealed ids and properties
        if sealed:
            await conn.execute(reseal_statement(a_cipher), sealed)
        await conn.execute(
            update(events).where(ec.id.in_(chunk), ec.profile_id == holder).values(profile_id=a_id)
        )


async def _restore_sources(
    conn: AsyncConnection,
    holder: uuid.UUID,
    m: Any,
    a_id: uuid.UUID,
    a_state: AbsorbedState,
    s_state: SurvivorState,
    moved: list[Any],
) -> None:
    rows = {src: datetime.fromisoformat(at) for src, at in a_state.sources}
    for r in moved:
        rows.setdefault(r.source, r.created_at)
    if rows:
        await conn.execute(
            insert_ignore(conn, profile_sources),
            [{"profile_id": a_id, "source": s, "first_seen_at": at} for s, at in rows.items()],
        )
    if holder != m.survivor_id:
        return
    brought = {src for src, _ in a_state.sources} - set(s_state.sources)
    if brought:
        ps = profile_sources.c
        await conn.execute(
            delete(profile_sources).where(
                ps.profile_id == holder, ps.source.in_(brought), ps.first_seen_at <= m.at
            )
        )


async def _restore_fields(
    conn: AsyncConnection,
    holder: uuid.UUID,
    a_id: uuid.UUID,
    a_state: AbsorbedState,
    s_state: SurvivorState,
    h_cipher: FieldCipher,
    a_cipher: FieldCipher,
    now: datetime,
) -> None:
    await conn.execute(
        update(profiles)
        .where(profiles.c.id == a_id)
        .values(
            status="active",
            merged_into=None,
            traits=a_state.traits,
            country=a_state.country,
            city=a_state.city,
            city_key=city_key(a_state.city),
            jurisdiction=a_state.jurisdiction,
            jurisdiction_given=a_state.jurisdiction_given,
            field_times=a_state.times or None,
            updated_at=now,
            **{
                name: None if value is None else a_cipher.encrypt(f"profiles.{name}", value)
                for name, value in a_state.fields.items()
            },
        )
    )
    h_row = (await conn.execute(select(profiles).where(profiles.c.id == holder))).one()
    values: dict[str, Any] = {}
    restored: dict[str, bool] = {}  # timed names put back: whether they hold a value again
    for name, (before, after) in s_state.fields.items():
        if h_cipher.decrypt(f"profiles.{name}", getattr(h_row, name)) == after:
            values[name] = None if before is None else h_cipher.encrypt(f"profiles.{name}", before)
            restored[name] = before is not None
    for name, (before, after) in s_state.plain.items():
        if getattr(h_row, name) == after:
            values[name] = before
            if name in PLAIN_FIELDS:
                restored[name] = before is not None
    if "city" in values:
        values["city_key"] = city_key(values["city"])
    before_traits, after_traits = s_state.traits
    traits = dict(h_row.traits or {})
    for key in set(before_traits) | set(after_traits):
        old = before_traits.get(key, _MISSING)
        new = after_traits.get(key, _MISSING)
        if old != new and traits.get(key, _MISSING) == new:
            if old is _MISSING:
                traits.pop(key, None)
            else:
                traits[key] = old
            restored[trait_key(key)] = old is not _MISSING
    if traits != (h_row.traits or {}):
        values["traits"] = traits
    if values:
        # updated_at becomes now: the values kept keep their times, those put back theirs
        held = present(
            {n: getattr(h_row, n) for n in (*ENCRYPTED_PROFILE_FIELDS, *PLAIN_FIELDS)},
            h_row.traits or {},
        )
        times = pinned(h_row.field_times, h_row.updated_at, held)
        for name, back in restored.items():
            times.pop(name, None)
            if back:
                times[name] = s_state.times.get(name) or now.isoformat()
        values["field_times"] = times or None
        values["updated_at"] = now
        await conn.execute(update(profiles).where(profiles.c.id == holder).values(**values))


async def _restore_profile_consents(
    conn: AsyncConnection,
    policy: Policy,
    holder: uuid.UUID,
    a_id: uuid.UUID,
    a_state: AbsorbedState,
    s_state: SurvivorState,
) -> None:
    cs = consent_state.c
    h_subj, a_subj = profile_subject(holder), profile_subject(a_id)
    mine = {
        (r.purpose, r.channel): r
        for r in (await conn.execute(select(consent_state).where(cs.subject == h_subj))).all()
    }
    theirs = {(r["purpose"], r["channel"]): _state_row(r, a_subj, a_id) for r in a_state.consents}
    # A withdrawal recorded on the merged profile after the merge binds both halves: read from
    # the ledger, not the current state, where a later grant while merged (which counts for
    # neither) hides it (found by a model-based test). Not an unmerge's own (undoing a later
    # merge in the same unmerge withdrew a grant that counted for neither: not a customer's).
    led = consent_ledger.c
    withdrawn = await conn.execute(
        select(led.seq, led.purpose, led.channel, led.occurred_at, led.recorded_at, led.source)
        .where(
            led.subject_kind == "profile",
            led.profile_id == holder,
            led.seq > s_state.ledger_seq,
            led.status == "withdrawn",
            or_(led.method.is_(None), led.method != UNMERGE),
        )
        .order_by(led.seq)
    )
    for w in withdrawn:
        since = ordering_time(w.occurred_at, w.recorded_at)
        for channel in expand_channel(policy, "profile", w.channel):
            current = theirs.get((w.purpose, channel))
            # as consent.ledger.append would have applied it to her state
            if current is None or supersedes("withdrawn", since, _ordered(current)):
                theirs[(w.purpose, channel)] = {
                    "subject": a_subj,
                    "purpose": w.purpose,
                    "channel": channel,
                    "profile_id": a_id,
                    "status": "withdrawn",
                    "since": since,
                    "seq": w.seq,
                    "source": w.source,
                }
    await conn.execute(delete(consent_state).where(cs.subject == a_subj))
    if theirs:
        await conn.execute(insert(consent_state), list(theirs.values()))
    # The survivor's states the merge changed go back, unless something changed them since.
    for key, change in s_state.consents.items():
        purpose, channel = key.split("|", 1)
        current = mine.get((purpose, channel))
        after = change["after"]
        if current is None or current.seq != after["seq"] or current.status != after["status"]:
            continue
        where = (cs.subject == h_subj, cs.purpose == purpose, cs.channel == channel)
        before = change["before"]
        if before is None:
            await conn.execute(delete(consent_state).where(*where))
        else:
            await conn.execute(
                update(consent_state)
                .where(*where)
                .values(
                    status=before["status"],
                    since=datetime.fromisoformat(before["since"]),
                    seq=before["seq"],
                    source=before["source"],
                )
            )


async def _rebase_later_snapshots(
    conn: AsyncConnection,
    holder: uuid.UUID,
    m: Any,
    undone: SurvivorState,
    cipher: FieldCipher,
) -> None:
    """A merge into the holder made after the undone one recorded, as the holder's values
    before it, those the undone merge brought in: undoing it later would write the absorbed
    customer's values back into the holder, and its snapshot would keep them. Its snapshot
    says instead what the holder had before the undone merge."""
    sc, mc = merge_snapshots.c, merges.c
    rows = await conn.execute(
        select(sc.merge_id, sc.survivor_state)
        .join(merges, mc.id == sc.merge_id)
        .where(
            sc.survivor_id == holder,
            sc.survivor_key_id == cipher.key_id,
            mc.undone_at.is_(None),
            mc.id != m.id,
            or_(mc.at > m.at, and_(mc.at == m.at, mc.id > m.id)),
        )
    )
    for merge_id, blob in rows.all():
        later = msgspec.json.decode(cipher.decrypt_bytes(SURVIVOR_PLACE, blob), type=SurvivorState)
        if rebased(later, undone):
            await conn.execute(
                update(merge_snapshots)
                .where(sc.merge_id == merge_id)
                .values(survivor_state=cipher.encrypt(SURVIVOR_PLACE, msgspec.json.encode(later)))
            )


def rebased(later: SurvivorState, undone: SurvivorState) -> bool:
    """Rewrite `later` (a later merge's changes to the same survivor) as if the `undone` merge
    had never been: where it found a value the undone merge had set, it found the value from
    before that merge. Whether anything changed."""
    changed = False

    def found_before(name: str) -> None:
        nonlocal changed
        changed = True
        if name in undone.times:
            later.times[name] = undone.times[name]
        else:
            later.times.pop(name, None)

    for mine, theirs in ((later.fields, undone.fields), (later.plain, undone.plain)):
        for name, (before, after) in theirs.items():
            if before != after and name in mine and mine[name][0] == after:
                mine[name][0] = before
                found_before(name)
    (old_before, old_after), (new_before, new_after) = undone.traits, later.traits
    for key in set(old_before) | set(old_after):
        was, brought = old_before.get(key, _MISSING), old_after.get(key, _MISSING)
        if was == brought or new_before.get(key, _MISSING) != brought:
            continue
        kept = new_after.get(key, _MISSING) == brought  # the later merge left it as it was
        for traits in (new_before, new_after) if kept else (new_before,):
            if was is _MISSING:
                traits.pop(key, None)
            else:
                traits[key] = was
        found_before(trait_key(key))
    return changed


async def _grants_while_merged_count_for_neither(
    conn: AsyncConnection,
    p: Platform,
    holder: uuid.UUID,
    s_state: SurvivorState,
    actor: str,
    now: datetime,
    cipher: FieldCipher,
) -> None:
    """A grant of push or messenger (consent kept by the profile) recorded on the merged
    profile while the merge stood may have been either customer's: a sender naming the absorbed
    profile's id reached the holder. It counts for neither (DESIGN §1.1: conflicting data means
    no): the absorbed profile gets its states from before the merge, and the holder a
    withdrawal in the ledger (source and method "unmerge"), so the state stays what the ledger
    implies. A new grant makes either contactable again."""
    cs = consent_state.c
    granted = (
        await conn.execute(
            select(cs.purpose, cs.channel).where(
                cs.subject == profile_subject(holder),
                cs.seq > s_state.ledger_seq,
                cs.status == "granted",
            )
        )
    ).all()
    if not granted:
        return
    entries = [
        Entry(
            profile_id=holder,
            subject_kind="profile",
            subject=profile_subject(holder),
            purpose=purpose,
            channel=channel,
            status="withdrawn",
            occurred_at=now,
            source=UNMERGE,
            actor=actor,
            method=UNMERGE,
            cipher=cipher,
            undated=True,  # occurs when recorded: after the grant, whatever its clock said
        )
        for purpose, channel in granted
    ]
    await ledger.append(conn, p.policy, entries)


def _ordered(row: dict[str, Any]) -> tuple[str, datetime]:
    return row["status"], row["since"]


def _state_row(r: dict[str, Any], subject: bytes, profile_id: uuid.UUID) -> dict[str, Any]:
    return {
        "subject": subject,
        "purpose": r["purpose"],
        "channel": r["channel"],
        "profile_id": profile_id,
        "status": r["status"],
        "since": datetime.fromisoformat(r["since"]),
        "seq": r["seq"],
        "source": r["source"],
    }
