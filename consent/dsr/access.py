"""The access request: everything held about one customer, decrypted, as JSON.

profile, identities, the sources their data came from (GDPR art. 15(1)(g)), the merges that
joined their records, consent history (ledger entries for the customer's profiles and addresses,
with their evidence decrypted where the key still exists), suppressions of their addresses,
events, segments they are currently in, which keys read their data (the access log), and their
erasure requests. The export itself is written to the access log.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.access_log import log_access
from cdp.apikeys import Principal
from cdp.crypto.fields import CryptoError, FieldCipher
from cdp.db.tables import access_log, events, identities, merges, profile_sources
from cdp.errors import NotFound
from cdp.event_ids import opened
from cdp.ids import utcnow
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier, find_profile
from cdp.profiles.locks import lock_profile
from cdp.profiles.service import profile_view
from cdp.segments.membership import segments_containing
from consent import evidence
from consent.dsr.customer import customer_profile_ids, ledger_entries_of
from consent.dsr.requests import summary
from consent.dsr_tables import dsr_requests
from consent.tables import consent_ledger, suppressions


async def access_export(p: Platform, ident: Identifier, principal: Principal) -> dict[str, Any]:
    """Unknown customer: 404; erased: 410. A merged-away id answers with the survivor."""
    async with p.db.write() as conn:
        pid = await find_profile(conn, ident)
        if pid is None:
            raise NotFound("no customer has this identifier")
        # its rows and its data key as one unmerge left them, not one before and one after
        pid = await lock_profile(conn, pid)
        body = await export(conn, p, pid)
        await log_access(
            conn,
            principal,
            "access_request.export",
            object_type="profile",
            object_id=str(pid),
            profile_id=pid,
            rows=len(body["consent_history"]) + len(body["events"]) + 1,
        )
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
    return {
        "profile_id": str(pid),
        "profile_ids": [str(x) for x in pids],
        "generated_at": utcnow(),
        "profile": await profile_view(conn, p, pid),
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
        "consent_history": await _consent_history(conn, p, pids, addresses, plain),
        "suppressions": await _suppressions(conn, addresses, plain),
        "events": await _events(conn, pids, cipher),
        "segments": await segments_containing(conn, p, pid),
        "access_log": await _access_log(conn, pids),
        "erasure_requests": await _requests(conn, pids),
    }


async def _consent_history(
    conn: AsyncConnection,
    p: Platform,
    pids: list[uuid.UUID],
    addresses: list[bytes],
    plain: dict[bytes, str | None],
) -> list[dict[str, Any]]:
    led = consent_ledger.c
    where = ledger_entries_of(pids, addresses)
    rows = (await conn.execute(select(consent_ledger).where(where).order_by(led.seq))).all()
    proofs = await evidence.read(conn, p, rows)
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
                "address": plain.get(r.address_bidx) if r.address_bidx else None,
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
    s = suppressions.c
    rows = await conn.execute(
        select(suppressions).where(s.bidx.in_(addresses)).order_by(s.at, s.purpose, s.channel)
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


async def _requests(conn: AsyncConnection, pids: list[uuid.UUID]) -> list[dict[str, Any]]:
    r = dsr_requests.c
    rows = await conn.execute(
        select(dsr_requests).where(r.profile_id.in_(pids)).order_by(r.received_at)
    )
    now = utcnow()
    return [summary(row, now) for row in rows]
