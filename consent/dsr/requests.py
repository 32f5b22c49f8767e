"""Erasure requests: receipt (joining an open duplicate), reading, listing, extension, rejection.

Every change of a request is recorded in `dsr_transitions` (from, to, at, actor, reason) in the
same transaction as the change itself.

The reasons the platform writes are fixed texts ("erasure started", "customer erased", "erasure
requested by the customer", ...). An officer's reason for an extension or a rejection is free
text that may name the customer (`caller could not confirm anna@...`): it is sealed, as the
request's note is, under the data key of the request's profile, bound to its transition's id,
and `reason` holds only `SEALED_REASON`. The chain hashes the ciphertext (consent/dsr/chain.py),
so once the customer's erasure destroys the key the reason is unreadable and the history still
verifies. `detail` shows it while the key exists, and `reason_readable: false` after.
Transitions recorded before migration 0017 keep their reason as it was written (their hash
covers it: encrypting it would break the chain).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.fields import CryptoError, FieldCipher
from cdp.db.engine import lock_keys
from cdp.db.tables import profiles
from cdp.errors import Conflict, InvalidInput, NotFound
from cdp.ids import new_id, parse_uuid, utcnow
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier, find_profile
from cdp.segments.cursor import check_limit
from consent.dsr import deadlines, states
from consent.dsr.chain import append_transition, is_sealed
from consent.dsr.customer import customer_profile_ids
from consent.dsr_tables import dsr_requests, dsr_transitions

ERASURE = deadlines.ERASURE
NOTE_PLACE = "dsr_requests.note"
REASON_PLACE = "dsr_transitions.reason"
REASON_COPY_PLACE = "dsr_transitions.reason_copy"
SEALED_REASON = "officer's reason, encrypted under the customer's data key"


def reason_place(transition_id: uuid.UUID) -> str:
    """A sealed reason is bound to its transition: moved to another one it fails
    authentication (the key binds it to its owner and key id)."""
    return f"{REASON_PLACE}.{transition_id}"


def reason_copy_place(transition_id: uuid.UUID) -> str:
    return f"{REASON_COPY_PLACE}.{transition_id}"


@dataclass(frozen=True, slots=True)
class Seal:
    """Whose data key seals an officer's reason: the request's profile, and its cipher (None:
    the key is gone, the customer erased; the reason is then kept by no one)."""

    owner: uuid.UUID
    cipher: FieldCipher | None


async def seal_for(p: Platform, conn: AsyncConnection, row: Any) -> Seal:
    """The seal of an officer's reason about request `row`: the data key of the profile it
    names (kept while that profile is merged into another, destroyed with the customer)."""
    pid = row.profile_id
    return Seal(pid, (await p.keys.ciphers(conn, [pid], strict=True)).get(pid))


def request_lock(request_id: uuid.UUID) -> str:
    return f"dsr|request|{request_id}"


def customer_lock(profile_id: uuid.UUID) -> str:
    return f"dsr|customer|{profile_id}"


async def open_erasure(conn: AsyncConnection, pids: list[uuid.UUID]) -> Any | None:
    """The oldest open erasure request of a customer (all their profiles `pids`), if any.
    Take `customer_lock` of their surviving profile first: a request is recorded under it."""
    r = dsr_requests.c
    return (
        await conn.execute(
            select(dsr_requests)
            .where(r.kind == ERASURE, r.status.in_(states.OPEN), r.profile_id.in_(pids))
            .order_by(r.received_at)
            .limit(1)
        )
    ).first()


async def erasure_open_for(
    conn: AsyncConnection, roots: list[uuid.UUID]
) -> tuple[uuid.UUID, Any] | None:
    """(surviving profile, its oldest open erasure request) of the first of these customers
    that has one, after taking their `customer_lock`s: a merge or an unmerge waits for it,
    since the erasure erases the customer as the request found them."""
    await lock_keys(conn, [customer_lock(root) for root in roots])
    for root in roots:
        pending = await open_erasure(conn, await customer_profile_ids(conn, root))
        if pending is not None:
            return root, pending
    return None


async def record_transition(
    conn: AsyncConnection,
    request_id: uuid.UUID,
    *,
    event: str,
    from_status: str | None,
    to_status: str,
    actor: str,
    reason: str,
    due_at: datetime,
    at: datetime | None = None,
    seal: Seal | None = None,
) -> None:
    """`reason`: a fixed text, kept as it is; with `seal`, an officer's free text, kept only
    encrypted under the seal's key."""
    transition_id = new_id()
    values: dict[str, Any] = {
        "id": transition_id,
        "request_id": request_id,
        "event": event,
        "from_status": from_status,
        "to_status": to_status,
        "at": at or utcnow(),
        "actor": actor,
        "reason": reason,
        "due_at": due_at,
    }
    if seal is not None:
        cipher = seal.cipher
        values |= {
            "reason": SEALED_REASON,
            "reason_sealed": None
            if cipher is None
            else cipher.encrypt(reason_place(transition_id), reason),
            "reason_owner": seal.owner,
            "reason_key_id": None if cipher is None else cipher.key_id,
        }
    await append_transition(conn, values)


async def set_status(
    conn: AsyncConnection,
    row: Any,
    target: str,
    *,
    actor: str,
    reason: str,
    seal: Seal | None = None,
    **values: Any,
) -> None:
    """Move a request along the state machine and record the transition (`seal`: as
    `record_transition`)."""
    states.check_transition(row.status, target)
    now = utcnow()
    await conn.execute(
        update(dsr_requests)
        .where(dsr_requests.c.id == row.id)
        .values(status=target, updated_at=now, **values)
    )
    await record_transition(
        conn,
        row.id,
        event="status",
        from_status=row.status,
        to_status=target,
        actor=actor,
        reason=reason,
        due_at=row.due_at,
        at=now,
        seal=seal,
    )


def completed_values(now: datetime, result: dict[str, Any]) -> dict[str, Any]:
    """The columns an erasure completes its request with (`set_status`): when, its counts, and
    neither note (sealed under the customer's data key, destroyed with it) nor error."""
    return {
        "completed_at": now,
        "result": result,
        "note": None,
        "note_owner": None,
        "note_key_id": None,
        "last_error": None,
    }


def check_jurisdiction(p: Platform, jurisdiction: str | None) -> None:
    if jurisdiction is not None and jurisdiction not in p.policy.jurisdictions:
        raise InvalidInput.field("jurisdiction", "not a jurisdiction of the loaded policies")


@dataclass(frozen=True, slots=True)
class Submitted:
    request_id: uuid.UUID
    joined: bool  # an open request for this customer existed; this one joined it


async def submit_erasure(
    p: Platform,
    ident: Identifier,
    *,
    requested_by: str,
    actor: str,
    jurisdiction: str | None = None,
    note: str | None = None,
) -> Submitted:
    """Record an erasure request, or join the customer's open one. Unknown: 404; erased: 410."""
    check_jurisdiction(p, jurisdiction)
    async with p.db.write() as conn:
        await lock_keys(conn, [ident.bidx or str(ident.profile_id)])
        pid = await find_profile(conn, ident)
        if pid is None:
            raise NotFound("no customer has this identifier")
        await lock_keys(conn, [customer_lock(pid)])
        pids = await customer_profile_ids(conn, pid)
        return await record_erasure_request(
            conn,
            p,
            pid,
            pids,
            identifier_kind=ident.kind,
            requested_by=requested_by,
            actor=actor,
            jurisdiction=jurisdiction,
            note=note,
        )


async def record_erasure_request(
    conn: AsyncConnection,
    p: Platform,
    pid: uuid.UUID,
    pids: list[uuid.UUID],
    *,
    identifier_kind: str,
    requested_by: str,
    actor: str,
    jurisdiction: str | None = None,
    note: str | None = None,
    reason: str | None = None,
) -> Submitted:
    """`submit_erasure` once the customer is found and locked (`customer_lock(pid)`): surviving
    profile `pid`, all their profiles `pids`. `reason`: the created transition's fixed text
    (by default "erasure requested by the <requested_by>")."""
    open_row = await open_erasure(conn, pids)
    now = utcnow()
    if open_row is not None:
        await record_transition(
            conn,
            open_row.id,
            event="joined",
            from_status=open_row.status,
            to_status=open_row.status,
            actor=actor,
            reason=f"a duplicate request ({requested_by}) joined this open request",
            due_at=open_row.due_at,
            at=now,
        )
        return Submitted(open_row.id, joined=True)

    profile_j = (
        await conn.execute(select(profiles.c.jurisdiction).where(profiles.c.id == pid))
    ).scalar_one()
    own = profile_j if profile_j in p.policy.jurisdictions else p.policy.default_jurisdiction
    j = jurisdiction or own
    bound = deadlines.binding_jurisdiction(p.policy, j, own, now)
    due = deadlines.erasure_due(p.policy, bound, now)  # the loader requires a deadline
    note_blob = note_key = note_owner = None
    if note:
        cipher = (await p.keys.ciphers(conn, [pid])).get(pid)
        if cipher is not None:
            note_blob, note_key, note_owner = (
                cipher.encrypt(NOTE_PLACE, note),
                cipher.key_id,
                pid,
            )
    request_id = new_id()
    await conn.execute(
        insert(dsr_requests).values(
            id=request_id,
            kind=ERASURE,
            status="received",
            profile_id=pid,
            identifier_kind=identifier_kind,
            jurisdiction=j,
            deadline_jurisdiction=bound,
            policy_version=p.policy.version,
            requested_by=requested_by,
            actor=actor,
            received_at=now,
            due_at=due,
            extensions=0,
            completed_at=None,
            updated_at=now,
            attempts=0,
            last_error=None,
            result=None,
            note=note_blob,
            note_owner=note_owner,
            note_key_id=note_key,
        )
    )
    await record_transition(
        conn,
        request_id,
        event="created",
        from_status=None,
        to_status="received",
        actor=actor,
        reason=reason or f"erasure requested by the {requested_by}",
        due_at=due,
        at=now,
    )
    return Submitted(request_id, joined=False)


def summary(row: Any, now: datetime) -> dict[str, Any]:
    return {
        "request_id": str(row.id),
        "kind": row.kind,
        "status": row.status,
        "profile_id": str(row.profile_id),
        "jurisdiction": row.jurisdiction,
        "deadline_jurisdiction": row.deadline_jurisdiction,
        "policy_version": row.policy_version,
        "requested_by": row.requested_by,
        "received_at": row.received_at,
        "due_at": row.due_at,
        "extended": row.extensions > 0,
        "completed_at": row.completed_at,
        "overdue": states.is_overdue(row.status, row.due_at, now),
    }


async def load(conn: AsyncConnection, request_id: uuid.UUID) -> Any:
    row = (
        await conn.execute(
            select(dsr_requests).where(
                dsr_requests.c.id == request_id, dsr_requests.c.kind == ERASURE
            )
        )
    ).first()
    if row is None:
        raise NotFound("no erasure request with this id")
    return row


def parse_request_id(value: str) -> uuid.UUID:
    rid = parse_uuid(value)
    if rid is None:
        raise NotFound("no erasure request with this id")
    return rid


def _open_reason(x: Any, cipher: FieldCipher | None) -> str | None:
    """A sealed reason, from the transition or from its copy under the owner's later key."""
    if cipher is None:
        return None
    for blob, key_id, place in (
        (x.reason_sealed, x.reason_key_id, reason_place(x.id)),
        (x.reason_copy, x.reason_copy_key_id, reason_copy_place(x.id)),
    ):
        if blob is not None and key_id == cipher.key_id:
            try:
                return cipher.decrypt(place, blob)
            except CryptoError:
                return None
    return None


async def transitions_of(
    conn: AsyncConnection, p: Platform, request_id: uuid.UUID
) -> list[dict[str, Any]]:
    """A request's transitions, oldest first. An officer's reason (`reason_encrypted`) is shown
    while its customer's data key exists; after their erasure it is null, with
    `reason_readable: false`."""
    t = dsr_transitions.c
    rows = (
        await conn.execute(
            select(dsr_transitions).where(t.request_id == request_id).order_by(t.at, t.id)
        )
    ).all()
    owners = {x.reason_owner for x in rows if x.reason_owner is not None}
    ciphers = await p.keys.ciphers(conn, owners, fresh=True) if owners else {}
    out = []
    for x in rows:
        sealed = is_sealed(x)
        reason = (
            _open_reason(x, ciphers.get(x.reason_owner) if x.reason_owner else None)
            if sealed
            else x.reason
        )
        out.append(
            {
                "event": x.event,
                "from": x.from_status,
                "to": x.to_status,
                "at": x.at,
                "actor": x.actor,
                "reason": reason,
                "reason_encrypted": sealed,
                "reason_readable": reason is not None,
                "due_at": x.due_at,
            }
        )
    return out


async def detail(conn: AsyncConnection, p: Platform, request_id: uuid.UUID) -> dict[str, Any]:
    """The request, its transitions, what was erased, and the note while it is readable."""
    row = await load(conn, request_id)
    transitions = await transitions_of(conn, p, request_id)
    note = None
    if row.note is not None and row.note_owner is not None:
        cipher = (await p.keys.ciphers(conn, [row.note_owner])).get(row.note_owner)
        if cipher is not None and cipher.key_id == row.note_key_id:
            try:
                note = cipher.decrypt(NOTE_PLACE, row.note)
            except CryptoError:
                note = None
    return {
        **summary(row, utcnow()),
        "note": note,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "result": row.result,
        "transitions": transitions,
    }


def _cursor(value: str | None) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        rid = uuid.UUID(bytes=base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (ValueError, TypeError):
        raise InvalidInput.field("cursor", "not a cursor this endpoint issued") from None
    return rid


def _encode_cursor(request_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(request_id.bytes).rstrip(b"=").decode()


async def list_requests(
    conn: AsyncConnection,
    *,
    status: str | None = None,
    overdue: bool | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Oldest first; `overdue` marks open requests past their due date."""
    if status is not None and status not in states.STATUSES:
        raise InvalidInput.field("status", "one of " + ", ".join(states.STATUSES))
    limit = check_limit(limit)
    after = _cursor(cursor)
    now = utcnow()
    r = dsr_requests.c
    q = select(dsr_requests).where(r.kind == ERASURE)
    if status is not None:
        q = q.where(r.status == status)
    if overdue is True:
        q = q.where(r.status.in_(states.OPEN), r.due_at < now)
    elif overdue is False:
        q = q.where(~(r.status.in_(states.OPEN) & (r.due_at < now)))
    if after is not None:
        q = q.where(r.id > after)
    rows = (await conn.execute(q.order_by(r.id).limit(limit + 1))).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [summary(row, now) for row in rows],
        "next_cursor": _encode_cursor(rows[-1].id) if more else None,
    }


async def extend(p: Platform, request_id: uuid.UUID, reason: str, actor: str) -> None:
    """The policy's one extension: its own transition, with a reason, moving due_at."""
    async with p.db.write() as conn:
        await lock_keys(conn, [request_lock(request_id)])
        row = await load(conn, request_id)
        now = utcnow()
        states.check_extension(row.status, row.extensions, row.due_at, now)
        bound = row.deadline_jurisdiction
        deadline = p.policy.deadline(bound, ERASURE)
        if deadline is None or deadline.extension <= 0:
            raise Conflict("the policy of this jurisdiction allows no extension")
        due = deadlines.erasure_due(p.policy, bound, row.received_at, extended=True)
        seal = await seal_for(p, conn, row)
        await conn.execute(
            update(dsr_requests)
            .where(dsr_requests.c.id == request_id)
            .values(
                due_at=due,
                extensions=row.extensions + 1,
                updated_at=now,
                policy_version=p.policy.version,
            )
        )
        await record_transition(
            conn,
            request_id,
            event="extension",
            from_status=row.status,
            to_status=row.status,
            actor=actor,
            reason=reason,
            due_at=due,
            at=now,
            seal=seal,
        )


async def reject(p: Platform, request_id: uuid.UUID, reason: str, actor: str) -> None:
    """Refuse a request that has not started (e.g. the requester's identity was not proven)."""
    async with p.db.write() as conn:
        await lock_keys(conn, [request_lock(request_id)])
        row = await load(conn, request_id)
        if row.status != "received":
            raise Conflict(f"a request that is {row.status} cannot be rejected")
        seal = await seal_for(p, conn, row)
        await set_status(
            conn, row, "rejected", actor=actor, reason=reason, seal=seal, completed_at=utcnow()
        )


async def rekey_reasons(
    conn: AsyncConnection, holder: uuid.UUID, old: FieldCipher, new: FieldCipher
) -> int:
    """The holder of an undone merge has a new data key (cdp.profiles.rekey): the officers'
    reasons sealed under its old key, or copied under it, get a copy under the new one. The
    sealed reason itself never changes (the chain hashes it), and the old key no longer
    opens it for readers (they hold the current key), nor at all once destroyed. Returns how
    many were copied."""
    t = dsr_transitions.c
    rows = (
        await conn.execute(
            select(
                t.id, t.reason_sealed, t.reason_key_id, t.reason_copy, t.reason_copy_key_id
            ).where(
                t.reason_owner == holder,
                or_(
                    and_(t.reason_copy.is_not(None), t.reason_copy_key_id == old.key_id),
                    and_(
                        t.reason_copy.is_(None),
                        t.reason_sealed.is_not(None),
                        t.reason_key_id == old.key_id,
                    ),
                ),
            )
        )
    ).all()
    again = []
    for x in rows:
        plain = (
            old.decrypt_bytes(reason_copy_place(x.id), x.reason_copy)
            if x.reason_copy is not None
            else old.decrypt_bytes(reason_place(x.id), x.reason_sealed)
        )
        again.append({"tid": x.id, "c": new.encrypt(reason_copy_place(x.id), plain)})
    if again:
        await conn.execute(
            update(dsr_transitions)
            .where(t.id == bindparam("tid"))
            .values(reason_copy=bindparam("c"), reason_copy_key_id=new.key_id),
            again,
        )
    return len(again)
