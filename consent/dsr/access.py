"""The access request: everything held about one customer, decrypted, as JSON.

what the processing is (`processing`: purposes with their legal basis, retention period,
request deadlines; consent.dsr.processing), profile, identities, the sources their data came
from (GDPR art. 15(1)(g)), the merges that joined their records, the values those merges keep
for an unmerge (`merge_snapshots`), match suggestions and merge reviews naming their profiles,
consent history (ledger entries for the customer's profiles and addresses, with their evidence
decrypted where the key still exists), suppressions of their addresses, events, segments they
are currently in, who received their data (`recipients`: segment exports and webhook
deliveries, GDPR art. 15(1)(c)), which keys read their data (the access log), and their erasure
requests with notes and transitions. The export itself is written to the access log.

Nothing in it names another customer: a snapshot shows only the side that is the customer's
(as survivor, the values they had before the merge; as absorbed, what their profile brought),
and suggestions and reviews list only the customer's own profile ids.

Who received their data:
- webhook deliveries: each delivery that carried one of their addresses is in the access log
  under the profile holding the address (`consent.outbox.delivery`), found by the
  `access_log.profile_id` index. Deliveries recorded before 2026-12-07 name no profile and are
  not listed.
- segment exports: `segment_export_chunks.members` packs who each page of an export handed out
  (32 bytes a member: profile id, identity id; `cdp.segments.exports`) and has no index by
  profile, so the export records are searched for the customer's profile ids and the ids of
  their email and phone identities: every chunk of every export kept (180 days) that had not
  finished before the customer's first profile was created, 256 chunks (at most 16 MB) per
  short read transaction, after the export's write transaction, so no writer waits for it.
  PostgreSQL searches in the database (`position`) and sends back only the chunks found;
  SQLite's chunks are searched in this process (`bytes.find`, 3x faster than `instr`). A
  chunk found is then read record by record, to keep only ids in their place. Cost: about
  0.5 ms (PostgreSQL) and 0.2 ms (SQLite) per chunk of 2,000 members, a scan of the records
  kept (docs/design.md, "Access requests"; `bench/access_scan.py`).
Members pages and ad-hoc segment queries hand out customers too, but only how many is recorded
(the access log, per segment), so they cannot be listed per customer.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import LargeBinary, Uuid, bindparam, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import TextClause

from cdp.access_log import log_access
from cdp.apikeys import Principal
from cdp.crypto.fields import CryptoError, FieldCipher
from cdp.db.tables import (
    access_log,
    events,
    identities,
    merges,
    profile_sources,
    profiles,
    segment_export_chunks,
    segment_exports,
)
from cdp.db.types import UTCDateTime
from cdp.errors import NotFound
from cdp.event_ids import opened
from cdp.ids import parse_uuid, utcnow
from cdp.matching.tables import match_suggestions, merge_reviews, merge_snapshots, reviews_naming
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier, find_profile
from cdp.profiles.locks import lock_profile
from cdp.profiles.merge import ABSORBED_PLACE, SURVIVOR_PLACE, AbsorbedState, SurvivorState
from cdp.profiles.service import profile_view
from cdp.segments.exports import RECORD
from cdp.segments.membership import segments_containing
from consent import evidence
from consent.audit.events import entry_addresses
from consent.dsr.customer import customer_profile_ids, ledger_entries_of
from consent.dsr.processing import processing_notice
from consent.dsr.requests import ERASURE, detail, summary
from consent.dsr_tables import dsr_requests
from consent.outbox.tables import outbox_events, webhook_subscriptions
from consent.tables import consent_ledger, suppressions

ACCESS_REQUEST_EXPORT = "access_request.export"  # its access log action (consent.dsr.retention)
SCAN_PAGE = 256  # export chunks per read transaction: at most 16 MB of member records
_ID = 16  # bytes of a profile or identity id in a member record
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


async def access_export(p: Platform, ident: Identifier, principal: Principal) -> dict[str, Any]:
    """Unknown customer: 404; erased: 410. A merged-away id answers with the survivor."""
    async with p.db.write() as conn:
        pid = await find_profile(conn, ident)
        if pid is None:
            raise NotFound("no customer has this identifier")
        # its rows and its data key as one unmerge left them, not one before and one after
        pid = await lock_profile(conn, pid)
        body = await export(conn, p, pid)
        scope = await _handout_scope(conn, p, [uuid.UUID(x) for x in body["profile_ids"]])
        await log_access(
            conn,
            principal,
            ACCESS_REQUEST_EXPORT,
            object_type="profile",
            object_id=str(pid),
            profile_id=pid,
            rows=len(body["consent_history"]) + len(body["events"]) + 1,
        )
    # outside the write transaction: a scan of the export records holds up no writer
    body["recipients"]["segment_exports"] = await _segment_exports(p, scope)
    return body


async def export(conn: AsyncConnection, p: Platform, pid: uuid.UUID) -> dict[str, Any]:
    pids = await customer_profile_ids(conn, pid)
    cipher = await p.keys.reader_cipher(conn, pid)
    idents = (
        await conn.execute(
            select(identities)
            .where(identities.c.profile_id == pid)
            .order_by(identities.c.created_at, identities.c.id)
        )
    ).all()
    plain = {i.bidx: cipher.decrypt("identities.value", i.value) for i in idents}
    addresses = [i.bidx for i in idents if i.kind in ("email", "phone")]
    profile = await profile_view(conn, p, pid)
    # `recipients.segment_exports` is filled by access_export, outside this transaction
    return {
        "profile_id": str(pid),
        "profile_ids": [str(x) for x in pids],
        "generated_at": utcnow(),
        "processing": processing_notice(p.policy, profile.get("jurisdiction")),
        "profile": profile,
        "identities": [
            {
                "kind": i.kind,
                "value": plain[i.bidx],
                "source": i.source,
                "created_at": i.created_at,
                "last_seen_at": i.last_seen_at,
                "confirmed_at": i.confirmed_at,
            }
            for i in idents
        ],
        "sources": await _sources(conn, pids),
        "merges": await _merges(conn, pids),
        "merge_snapshots": await _merge_snapshots(conn, p, pids),
        "match_suggestions": await _suggestions(conn, pids),
        "merge_reviews": await _reviews(conn, pids),
        "consent_history": await _consent_history(conn, p, pids, addresses),
        "suppressions": await _suppressions(conn, addresses, plain),
        "events": await _events(conn, pids, cipher),
        "segments": await segments_containing(conn, p, pid),
        "recipients": {
            "segment_exports": [],
            "webhook_deliveries": await _webhook_deliveries(conn, pids),
        },
        "access_log": await _access_log(conn, pids),
        "erasure_requests": await _requests(conn, p, pids),
    }


async def _consent_history(
    conn: AsyncConnection,
    p: Platform,
    pids: list[uuid.UUID],
    addresses: list[bytes],
) -> list[dict[str, Any]]:
    led = consent_ledger.c
    where = ledger_entries_of(pids, addresses)
    rows = (await conn.execute(select(consent_ledger).where(where).order_by(led.seq))).all()
    proofs = await evidence.read(conn, p, rows)
    shown = await entry_addresses(conn, p, rows)
    out = []
    for r, (proof, readable) in zip(rows, proofs, strict=True):
        out.append(
            {
                "seq": r.seq,
                "event_id": str(r.event_id),
                "occurred_at": r.occurred_at,
                "recorded_at": r.recorded_at,
                "purpose": r.purpose,
                "channel": r.channel,
                "status": r.status,
                "effective": r.effective,
                "subject_kind": r.subject_kind,
                "address": shown.get(r.seq),
                "source": r.source,
                "actor": r.actor,
                "method": r.method,
                "wording_id": r.wording_id,
                "policy_version": r.policy_version,
                "evidence": proof,
                "evidence_readable": readable,
            }
        )
    return out


async def _sources(conn: AsyncConnection, pids: list[uuid.UUID]) -> list[dict[str, Any]]:
    """The systems that supplied the customer's data, first seen when (merges move them to the
    surviving profile)."""
    ps = profile_sources.c
    rows = await conn.execute(
        select(ps.source, func.min(ps.first_seen_at))
        .where(ps.profile_id.in_(pids))
        .group_by(ps.source)
        .order_by(func.min(ps.first_seen_at), ps.source)
    )
    return [{"source": source, "first_seen_at": at} for source, at in rows]


async def _merges(conn: AsyncConnection, pids: list[uuid.UUID]) -> list[dict[str, Any]]:
    """Every merge of one of the customer's profiles, undone ones too (`undone_at`). A wrong
    merge with another customer, since undone, does not name the other customer's profile."""
    mine = set(pids)
    m = merges.c
    rows = await conn.execute(
        select(merges)
        .where(or_(m.survivor_id.in_(pids), m.absorbed_id.in_(pids)))
        .order_by(m.at, m.id)
    )
    return [
        {
            "merge_id": str(r.id),
            "survivor_id": str(r.survivor_id) if r.survivor_id in mine else None,
            "absorbed_id": str(r.absorbed_id) if r.absorbed_id in mine else None,
            "matched_on": r.matched_on,
            "provenance": r.provenance,
            "source": r.source,
            "at": r.at,
            "undone_at": r.undone_at,
        }
        for r in rows
    ]


async def _suppressions(
    conn: AsyncConnection, addresses: list[bytes], plain: dict[bytes, str | None]
) -> list[dict[str, Any]]:
    if not addresses:
        return []
    # by time, then purpose and channel (by code point, as every database agrees), then the
    # customer's order of the addresses: one opt-out suppresses each of them at one moment,
    # and the databases return such ties in orders of their own
    position = {bidx: n for n, bidx in enumerate(addresses)}
    rows = sorted(
        await conn.execute(select(suppressions).where(suppressions.c.bidx.in_(addresses))),
        key=lambda r: (r.at, r.purpose, r.channel, position[r.bidx], r.reason, r.source or ""),
    )
    return [
        {
            "address": plain.get(r.bidx),
            "purpose": r.purpose,
            "channel": r.channel,
            "reason": r.reason,
            "source": r.source,
            "at": r.at,
        }
        for r in rows
    ]


async def _events(
    conn: AsyncConnection, pids: list[uuid.UUID], cipher: FieldCipher
) -> list[dict[str, Any]]:
    e = events.c
    rows = await conn.execute(
        select(events).where(e.profile_id.in_(pids)).order_by(e.occurred_at, e.id)
    )
    out = []
    for r in rows:
        props = None
        if r.properties is not None and r.key_id == cipher.key_id:
            try:
                props = msgspec.json.decode(cipher.decrypt_bytes("events.properties", r.properties))
            except (CryptoError, msgspec.DecodeError):
                props = None
        out.append(
            {
                "source": r.source,
                "event_id": opened(r, cipher),
                "type": r.type,
                "occurred_at": r.occurred_at,
                "recorded_at": r.recorded_at,
                "amount": None if r.amount is None else str(r.amount),
                "currency": r.currency,
                "category": r.category,
                "properties": props,
            }
        )
    return out


async def _access_log(conn: AsyncConnection, pids: list[uuid.UUID]) -> list[dict[str, Any]]:
    a = access_log.c
    rows = await conn.execute(select(access_log).where(a.profile_id.in_(pids)).order_by(a.at, a.id))
    return [
        {
            "at": r.at,
            "actor": r.actor,
            "role": r.role,
            "action": r.action,
            "object_type": r.object_type,
            "object_id": r.object_id,
            "rows": r.rows,
        }
        for r in rows
    ]


async def _requests(
    conn: AsyncConnection, p: Platform, pids: list[uuid.UUID]
) -> list[dict[str, Any]]:
    """Each request as `GET /v1/erasure-requests/{id}` shows it: with its note (decrypted) and
    every transition."""
    r = dsr_requests.c
    rows = (
        await conn.execute(
            select(dsr_requests).where(r.profile_id.in_(pids)).order_by(r.received_at, r.id)
        )
    ).all()
    now = utcnow()
    return [
        await detail(conn, p, row.id) if row.kind == ERASURE else summary(row, now) for row in rows
    ]


# merge snapshots, match suggestions, merge reviews --------------------------------------------
# A snapshot keeps its lists in the order the database returned the rows when the merge was
# made (sources: by name on SQLite, by insertion on PostgreSQL): shown in one order, the
# absorbed side's sources by when first seen, as the request's `sources` are; the survivor's
# by name (their times are not kept); categories by name, as the profile shows them.
def _by_purpose(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (str(r.get("purpose")), str(r.get("channel"))))


def _survivor_values(state: SurvivorState) -> dict[str, Any]:
    """The survivor's values from before the merge (each change is [before, after]; the after
    side came from the absorbed profile and is in its own snapshot side)."""
    fields = {
        name: change[0]
        for name, change in (*state.fields.items(), *state.plain.items())
        if change and change[0] is not None
    }
    return {
        "fields": fields,
        "traits": state.traits[0] if state.traits else {},
        "consents": _by_purpose(c["before"] for c in state.consents.values() if c.get("before")),
        "sources": [{"source": s} for s in sorted(state.sources)],
        "given_at": state.times,
    }


def _absorbed_values(state: AbsorbedState) -> dict[str, Any]:
    """What the absorbed profile brought into the merge."""
    fields = {name: value for name, value in state.fields.items() if value is not None}
    for name in ("country", "city", "jurisdiction"):
        value = getattr(state, name)
        if value is not None:
            fields[name] = value
    return {
        "fields": fields,
        "traits": state.traits,
        "consents": _by_purpose(state.consents),
        "categories": sorted(state.categories),
        "sources": [
            {"source": s, "first_seen_at": at}
            for s, at in sorted(state.sources, key=lambda x: (datetime.fromisoformat(x[1]), x[0]))
        ],
        "given_at": state.times,
    }


def _opened(
    cipher: FieldCipher | None,
    key_id: int,
    place: str,
    blob: bytes,
    kind: type[Any],
    values: Callable[[Any], dict[str, Any]],
) -> dict[str, Any] | None:
    if cipher is None or cipher.key_id != key_id:
        return None
    try:
        return values(msgspec.json.decode(cipher.decrypt_bytes(place, blob), type=kind))
    except (CryptoError, msgspec.DecodeError, msgspec.ValidationError):
        return None


async def _merge_snapshots(
    conn: AsyncConnection, p: Platform, pids: list[uuid.UUID]
) -> list[dict[str, Any]]:
    """The values each snapshot of a merge of the customer's profiles keeps for an unmerge,
    decrypted: the side under the key of a profile of theirs (`as`: "survivor" or
    "absorbed"). `readable` is false where that key no longer opens it."""
    mine = set(pids)
    ms = merge_snapshots.c
    rows = (
        await conn.execute(
            select(merge_snapshots)
            .where(or_(ms.survivor_id.in_(pids), ms.absorbed_id.in_(pids)))
            .order_by(ms.created_at, ms.merge_id)
        )
    ).all()
    owners = {r.survivor_id for r in rows if r.survivor_id in mine}
    owners |= {r.absorbed_id for r in rows if r.absorbed_id in mine}
    ciphers = await p.keys.ciphers(conn, owners) if owners else {}
    out = []
    for r in rows:
        sides = []
        if r.survivor_id in mine:
            kept = _opened(
                ciphers.get(r.survivor_id),
                r.survivor_key_id,
                SURVIVOR_PLACE,
                r.survivor_state,
                SurvivorState,
                _survivor_values,
            )
            sides.append(("survivor", r.survivor_id, kept))
        if r.absorbed_id in mine:
            kept = _opened(
                ciphers.get(r.absorbed_id),
                r.absorbed_key_id,
                ABSORBED_PLACE,
                r.absorbed_state,
                AbsorbedState,
                _absorbed_values,
            )
            sides.append(("absorbed", r.absorbed_id, kept))
        for role, profile_id, kept in sides:
            out.append(
                {
                    "merge_id": str(r.merge_id),
                    "at": r.created_at,
                    "as": role,
                    "profile_id": str(profile_id),
                    "readable": kept is not None,
                    "values": kept,
                }
            )
    return out


async def _suggestions(conn: AsyncConnection, pids: list[uuid.UUID]) -> list[dict[str, Any]]:
    """Pairs the matcher proposed with one of the customer's profiles: only the customer's own
    profile ids; the reasons are per-field similarities, never values."""
    mine = set(pids)
    sg = match_suggestions.c
    rows = await conn.execute(
        select(match_suggestions)
        .where(or_(sg.profile_a.in_(pids), sg.profile_b.in_(pids)))
        .order_by(sg.created_at, sg.id)
    )
    return [
        {
            "suggestion_id": str(r.id),
            "profile_ids": [str(x) for x in (r.profile_a, r.profile_b) if x in mine],
            "status": r.status,
            "score": r.score,
            "reasons": r.reasons,
            "created_at": r.created_at,
            "decided_at": r.decided_at,
        }
        for r in rows
    ]


async def _reviews(conn: AsyncConnection, pids: list[uuid.UUID]) -> list[dict[str, Any]]:
    """Merges the guards refused that name one of the customer's profiles, with only the
    customer's own profile ids. A review is found by the profile its record was stored in
    (`attached_to`, indexed) or by its list of profiles (JSON text, no index: one scan of the
    reviews, which the guards queue rarely)."""
    mine = {str(x) for x in pids}
    mr = merge_reviews.c
    rows = await conn.execute(
        select(merge_reviews).where(reviews_naming(pids)).order_by(mr.created_at, mr.id)
    )
    return [
        {
            "review_id": str(r.id),
            "profile_ids": [x for x in r.profile_ids if x in mine],
            "status": r.status,
            "reason": r.reason,
            "matched_on": r.matched_on,
            "source": r.source,
            "created_at": r.created_at,
            "decided_at": r.decided_at,
        }
        for r in rows
    ]


# who received their data ------------------------------------------------------------------------
async def _webhook_deliveries(conn: AsyncConnection, pids: list[uuid.UUID]) -> list[dict[str, Any]]:
    """Each try of a webhook delivery that carried one of the customer's addresses: the
    subscription (id, description), the event's kind while the event is kept, when, and the
    receiver's status code. Never the subscription's URL (it may hold the receiver's token)."""
    a = access_log.c
    rows = (
        await conn.execute(
            select(a.at, a.object_id, a.detail)
            .where(a.profile_id.in_(pids), a.action == "webhook_delivery")
            .order_by(a.at, a.id)
        )
    ).all()
    if not rows:
        return []
    sub_ids = {s for r in rows if (s := parse_uuid(r.object_id or "")) is not None}
    event_ids = {
        e for r in rows if (e := parse_uuid(str((r.detail or {}).get("event_id")))) is not None
    }
    ws, oe = webhook_subscriptions.c, outbox_events.c
    names: dict[uuid.UUID, str | None] = {}
    kinds: dict[uuid.UUID, str] = {}
    subs, evs = sorted(sub_ids), sorted(event_ids)
    for start in range(0, len(subs), 500):
        q = select(ws.id, ws.description).where(ws.id.in_(subs[start : start + 500]))
        names.update({i: d for i, d in await conn.execute(q)})
    for start in range(0, len(evs), 500):
        q = select(oe.id, oe.kind).where(oe.id.in_(evs[start : start + 500]))
        kinds.update({i: k for i, k in await conn.execute(q)})
    out = []
    for r in rows:
        sid = parse_uuid(r.object_id or "")
        eid = parse_uuid(str((r.detail or {}).get("event_id")))
        out.append(
            {
                "at": r.at,
                "subscription_id": r.object_id,
                "subscription": names.get(sid) if sid else None,
                "event_id": str(eid) if eid else None,
                "event_kind": kinds.get(eid) if eid else None,
                "status_code": (r.detail or {}).get("status_code"),
            }
        )
    return out


@dataclass(slots=True)
class _Scope:
    """What identifies the customer in an export record, and since when they could be in one."""

    profile_ids: set[bytes] = field(default_factory=set)
    # identity id -> the address (decrypted; None where it does not open)
    addresses: dict[bytes, str | None] = field(default_factory=dict)
    since: datetime | None = None

    @property
    def needles(self) -> list[bytes]:
        return sorted(self.profile_ids | set(self.addresses))


async def _handout_scope(conn: AsyncConnection, p: Platform, pids: list[uuid.UUID]) -> _Scope:
    i, pr = identities.c, profiles.c
    rows = (
        await conn.execute(
            select(i.id, i.profile_id, i.value).where(
                i.profile_id.in_(pids), i.kind.in_(("email", "phone"))
            )
        )
    ).all()
    ciphers = await p.keys.ciphers(conn, {r.profile_id for r in rows}) if rows else {}
    addresses: dict[bytes, str | None] = {}
    for r in rows:
        cipher = ciphers.get(r.profile_id)
        try:
            value = cipher.decrypt("identities.value", r.value) if cipher else None
        except CryptoError:
            value = None
        addresses[r.id.bytes] = value
    since = (await conn.execute(select(func.min(pr.created_at)).where(pr.id.in_(pids)))).scalar()
    return _Scope({x.bytes for x in pids}, addresses, since)


def _scan_statement(dialect: str, needles: int) -> TextClause:
    """One page of export chunks in key order. PostgreSQL: with whether each chunk's members
    hold a needle (`position`), so that only the chunks that do are read back. SQLite: with
    the members themselves (in-process: Python's `bytes.find` searches them 3x faster than
    `instr`). The members of an export that finished before `since` are not read."""
    if dialect == "postgresql":
        holds = " OR ".join(f"position(:n{k} IN c.members) > 0" for k in range(needles))
        found = f"CASE WHEN e.finished_at < :since THEN 0 WHEN {holds} THEN 1 ELSE 0 END AS hit"
    else:
        found = "CASE WHEN e.finished_at < :since THEN NULL ELSE c.members END AS members"
    sql = text(
        f"SELECT c.export_id, c.seq, {found}"
        " FROM segment_export_chunks c JOIN segment_exports e ON e.id = c.export_id"
        " WHERE (c.export_id, c.seq) > (:after, :seq)"
        " ORDER BY c.export_id, c.seq LIMIT :page"
    )
    params = [bindparam("since", type_=UTCDateTime), bindparam("after", type_=Uuid)]
    if dialect == "postgresql":
        params += [bindparam(f"n{k}", type_=LargeBinary) for k in range(needles)]
    return sql.bindparams(*params).columns(
        segment_export_chunks.c.export_id, segment_export_chunks.c.seq
    )


def _handed_to(members: bytes, scope: _Scope) -> set[bytes] | None:
    """The identity ids of the customer's records in one chunk (zeros: push and messenger), or
    None when no record is theirs. A record is theirs by its profile id or its identity id
    (an address of theirs handed out while it sat on another profile, merged by mistake); 16
    bytes of theirs across two records are not."""
    if not any(members.find(n) >= 0 for n in scope.needles):
        return None
    found: set[bytes] | None = None
    for at in range(0, len(members) - RECORD + 1, RECORD):
        pid, iid = members[at : at + _ID], members[at + _ID : at + RECORD]
        if pid in scope.profile_ids or iid in scope.addresses:
            found = found if found is not None else set()
            if iid in scope.addresses:
                found.add(iid)
    return found


async def _segment_exports(p: Platform, scope: _Scope) -> list[dict[str, Any]]:
    """Every export kept that handed the customer out: the export, the segment, who exported
    it (the API key's name) and when, and which of their addresses it sent."""
    needles = scope.needles
    if not needles:
        return []
    in_database = p.db.engine.dialect.name == "postgresql"
    stmt = _scan_statement(p.db.engine.dialect.name, len(needles))
    params: dict[str, Any] = {"since": scope.since or _EPOCH, "page": SCAN_PAGE}
    if in_database:
        params |= {f"n{k}": n for k, n in enumerate(needles)}
    handed: dict[uuid.UUID, set[bytes]] = {}
    after, seq = uuid.UUID(int=0), -1
    sc = segment_export_chunks.c
    while True:
        async with p.db.read() as conn:
            rows = (await conn.execute(stmt, {**params, "after": after, "seq": seq})).all()
            for r in rows:
                if in_database:
                    if not r.hit:
                        continue
                    members = (
                        await conn.execute(
                            select(sc.members).where(sc.export_id == r.export_id, sc.seq == r.seq)
                        )
                    ).scalar()
                else:
                    members = r.members
                found = _handed_to(members or b"", scope)
                if found is not None:
                    handed.setdefault(r.export_id, set()).update(found)
        if len(rows) < SCAN_PAGE:
            break
        after, seq = rows[-1].export_id, rows[-1].seq
    if not handed:
        return []
    se = segment_exports.c
    ids = sorted(handed)
    out = []
    async with p.db.read() as conn:
        for start in range(0, len(ids), 500):
            q = select(segment_exports).where(se.id.in_(ids[start : start + 500]))
            for e in await conn.execute(q):
                out.append(
                    {
                        "export_id": str(e.id),
                        "segment_id": str(e.segment_id),
                        "purpose": e.purpose,
                        "channel": e.channel,
                        "format": e.format,
                        "exported_by": e.actor,
                        "role": e.role,
                        "started_at": e.started_at,
                        "finished_at": e.finished_at,
                        "addresses": sorted(
                            v for iid in handed[e.id] if (v := scope.addresses.get(iid)) is not None
                        ),
                    }
                )
    out.sort(key=lambda x: (x["started_at"], x["export_id"]))
    return out
