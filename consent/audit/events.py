"""Consent events for compliance officers: the ledger filtered by customer, purpose, channel, time.

A customer named by an identifier is every profile of theirs (the surviving one and those merged
into it) and every address they have; a ledger row belongs to them when it names one of those
profiles or one of those addresses (an opt-out of an address recorded before it was linked to
the profile counts too). Erased customers keep their ledger rows: an address whose identity was
deleted still leads to its profile through the ledger, the evidence reads null (its key is
destroyed) and the hashes still verify. Their address reads null too, also once someone holds
it again (`entry_addresses`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from cdp.crypto.fields import CryptoError
from cdp.db.tables import identities
from cdp.errors import InvalidInput
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier
from consent import evidence
from consent.dsr.customer import (
    customer_identities,
    customer_profile_ids,
    erased_holder,
    ledger_entries_of,
    recorded_before_erasure,
    root_of,
)
from consent.tables import consent_ledger

led = consent_ledger.c


@dataclass(frozen=True, slots=True)
class Customer:
    root: uuid.UUID | None  # the surviving profile, where one is known
    status: str | None  # its status: active | erased | ...
    profile_ids: list[uuid.UUID] = field(default_factory=list)
    addresses: list[bytes] = field(default_factory=list)  # email and phone blind indexes

    def clause(self) -> ColumnElement[bool]:
        return ledger_entries_of(self.profile_ids, self.addresses)


async def resolve_customer(conn: AsyncConnection, ident: Identifier) -> Customer:
    """Never raises for an erased or unknown customer: their ledger rows may still exist."""
    addresses = [ident.bidx] if ident.kind in ("email", "phone") and ident.bidx else []
    start = ident.profile_id
    if start is None and ident.bidx is not None:
        start = (
            await conn.execute(
                select(identities.c.profile_id).where(identities.c.bidx == ident.bidx)
            )
        ).scalar()
    if start is None and addresses:  # erased (identity deleted): their erasure names them
        start = await erased_holder(conn, addresses[0])
    if start is None and addresses:  # else the ledger still links them
        start = (
            await conn.execute(
                select(led.profile_id)
                .where(led.address_bidx == ident.bidx, led.profile_id.is_not(None))
                .order_by(led.seq.desc())
                .limit(1)
            )
        ).scalar()
    root = status = None
    pids: list[uuid.UUID] = []
    found = await root_of(conn, start) if start is not None else None
    if found is not None:
        root, status = found
        pids = await customer_profile_ids(conn, root)
    elif ident.profile_id is not None:
        pids = [ident.profile_id]  # no profile row (any more); the ledger may still name it
    if pids:
        idents = await customer_identities(conn, pids)
        addresses += [b for _, kind, b in idents if kind in ("email", "phone")]
    return Customer(root, status, sorted(pids), sorted(set(addresses)))


@dataclass(frozen=True, slots=True)
class EventFilter:
    customer: Customer | None = None
    purpose: str | None = None
    channel: str | None = None
    since: datetime | None = None  # occurred_at >= since
    until: datetime | None = None  # occurred_at < until


def check_filter(p: Platform, purpose: str | None, channel: str | None) -> None:
    if purpose is not None and purpose not in p.policy.purposes:
        raise InvalidInput.field("purpose", "unknown purpose")
    if channel is not None and channel != "*" and channel not in p.policy.channels:
        raise InvalidInput.field("channel", "unknown channel")


def where(p: Platform, f: EventFilter) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    if f.customer is not None:
        out.append(f.customer.clause())
    if f.purpose is not None:
        out.append(led.purpose == f.purpose)
    if f.channel is not None:
        if f.channel == "*":
            out.append(led.channel == "*")
        else:  # a withdrawal from every channel concerns this one too
            kind = p.policy.address_kind(f.channel)
            out.append(
                or_(led.channel == f.channel, and_(led.channel == "*", led.subject_kind == kind))
            )
    if f.since is not None:
        out.append(led.occurred_at >= f.since)
    if f.until is not None:
        out.append(led.occurred_at < f.until)
    return out


async def page(
    conn: AsyncConnection, p: Platform, f: EventFilter, after_seq: int, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """(items, seq to continue after, or None at the end), in ledger order."""
    rows = (
        await conn.execute(
            select(consent_ledger)
            .where(led.seq > after_seq, *where(p, f))
            .order_by(led.seq)
            .limit(limit + 1)
        )
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = await render(conn, p, rows)
    return items, (rows[-1].seq if more else None)


async def all_events(conn: AsyncConnection, p: Platform, f: EventFilter) -> list[Any]:
    return (await conn.execute(select(consent_ledger).where(*where(p, f)).order_by(led.seq))).all()


async def render(conn: AsyncConnection, p: Platform, rows: list[Any]) -> list[dict[str, Any]]:
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
                "profile_id": str(r.profile_id) if r.profile_id else None,
                "purpose": r.purpose,
                "channel": r.channel,
                "status": r.status,
                "effective": r.effective,
                "source": r.source,
                "actor": r.actor,
                "method": r.method,
                "wording_id": r.wording_id,
                "policy_version": r.policy_version,
                "subject": {
                    "kind": r.subject_kind,
                    "address": shown.get(r.seq),
                    "profile_id": str(r.profile_id) if r.profile_id else None,
                    # true: the request named the customer otherwise and reached this address
                    # as one of theirs; false: it named the address; null: not recorded
                    "via_profile": r.via_profile,
                },
                "evidence": proof,
                "evidence_readable": readable,
                "prev_hash": r.prev_hash.hex(),
                "hash": r.hash.hex(),
            }
        )
    return out


async def entry_addresses(
    conn: AsyncConnection, p: Platform, rows: Sequence[Any]
) -> dict[int, str | None]:
    """The address of each of these ledger entries, by seq, as whoever holds it now has it;
    absent where nobody holds it, or where the entry was recorded up to the address's last
    erasure (`consent.dsr.customer.recorded_before_erasure`): such an entry is the erased
    customer's, whose address went with them, and whoever holds the address since (a new
    customer, or the same person registering again) must not be shown for it. Shown, it tied
    the erased customer's consent history to the address once anyone brought it back.
    The one place where an entry's address is read: audit events, evidence bundles, the
    console's history and the access export."""
    seqs = sorted({r.seq for r in rows if r.address_bidx is not None})
    found: list[Any] = []
    for start in range(0, len(seqs), 500):
        found += (await conn.execute(_HELD, {"seqs": seqs[start : start + 500]})).all()
    ciphers = await p.keys.ciphers(conn, {pid for _, pid, _ in found})
    plain: dict[tuple[uuid.UUID, bytes], str | None] = {}  # each address decrypted once
    out: dict[int, str | None] = {}
    for seq, pid, value in found:
        if (pid, value) not in plain:
            cipher = ciphers.get(pid)
            try:
                plain[pid, value] = cipher.decrypt("identities.value", value) if cipher else None
            except CryptoError:
                plain[pid, value] = None
        out[seq] = plain[pid, value]
    return out


# (seq, holder, encrypted value) of the entries whose address someone holds, recorded after the
# address's last erasure
_HELD = (
    select(led.seq, identities.c.profile_id, identities.c.value)
    .select_from(consent_ledger.join(identities, identities.c.bidx == led.address_bidx))
    .where(led.seq.in_(bindparam("seqs", expanding=True)), not_(recorded_before_erasure()))
)
