"""Which profiles make up one customer: the surviving profile and every profile merged into it."""

from __future__ import annotations

import uuid

from sqlalchemy import and_, false, func, not_, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from cdp.db.tables import identities, profiles
from consent.dsr_tables import dsr_requests
from consent.tables import address_erasures, consent_ledger


async def root_of(conn: AsyncConnection, profile_id: uuid.UUID) -> tuple[uuid.UUID, str] | None:
    """(id, status) of the profile that `profile_id` was merged into, following the chain.

    Unlike `resolve_profile_id` this does not raise for an erased profile; None when unknown.
    """
    seen: set[uuid.UUID] = set()
    current = profile_id
    while True:
        row = (
            await conn.execute(
                select(profiles.c.status, profiles.c.merged_into).where(profiles.c.id == current)
            )
        ).first()
        if row is None:
            return None
        status, merged_into = row
        if status == "merged" and merged_into is not None and merged_into not in seen:
            seen.add(current)
            current = merged_into
            continue
        return current, status


async def customer_profile_ids(conn: AsyncConnection, root: uuid.UUID) -> list[uuid.UUID]:
    """The root, then every profile merged into it, directly or through a chain, oldest first
    (ids are time-ordered; the databases return the rows of one level in orders of their own)."""
    found = [root]
    seen = {root}
    frontier = [root]
    while frontier:
        rows = await conn.execute(select(profiles.c.id).where(profiles.c.merged_into.in_(frontier)))
        frontier = [pid for (pid,) in rows if pid not in seen]
        seen.update(frontier)
        found.extend(frontier)
    return [root, *sorted(found[1:])]


async def customer_identities(
    conn: AsyncConnection, profile_ids: list[uuid.UUID]
) -> list[tuple[uuid.UUID, str, bytes]]:
    """(identity id, kind, blind index) of every identity of these profiles."""
    rows = await conn.execute(
        select(identities.c.id, identities.c.kind, identities.c.bidx).where(
            identities.c.profile_id.in_(profile_ids)
        )
    )
    return sorted((i, k, b) for i, k, b in rows)


def ledger_entries_of(profile_ids: list[uuid.UUID], addresses: list[bytes]) -> ColumnElement[bool]:
    """The consent ledger entries about one customer: their profiles and addresses.

    An entry on an address is about whoever held the address when it was recorded:
    - where another customer holds it now (a wrong merge was undone and the address went back
      to them), an entry recorded on the merged profile is theirs, not this customer's, though
      it names this customer's profile;
    - an address erased with its customer and since given to someone else (a reassigned phone
      number) starts afresh: the entries recorded up to its erasure are the erased customer's,
      not the new holder's consent.
    An entry recorded on an address before the address's (last) erasure is this customer's by
    the profile id it names only when that erasure was this customer's: the completed erasure
    request whose completion time the erasure suppression carries names one of `profile_ids`.
    Otherwise it is whoever's was erased: after a wrong merge was undone and the other customer
    erased, his grant recorded on the merged profile is not hers (it used to come back to her).
    An entry naming one of the profiles on an address nobody holds any more and that was never
    erased since (never kept) stays this customer's, as does every profile-keyed (push,
    messenger) entry of theirs.
    `addresses`: the email and phone blind indexes the customer holds, or, for an erased
    customer, the one they were named by."""
    led, r = consent_ledger.c, dsr_requests.c
    held = select(identities.c.id).where(identities.c.bidx == led.address_bidx).exists()
    erased_at = _address_erased_at()
    before_erasure = recorded_before_erasure()
    parts: list[ColumnElement[bool]] = []
    if addresses:
        parts.append(and_(led.address_bidx.in_(addresses), or_(~held, not_(before_erasure))))
    if profile_ids:
        erased_by_them = (
            select(r.id)
            .where(
                r.kind == "erasure",
                r.status == "completed",
                r.completed_at == erased_at,
                r.profile_id.in_(profile_ids),
            )
            .exists()
        )
        parts.append(
            and_(
                led.profile_id.in_(profile_ids),
                or_(
                    led.address_bidx.is_(None),
                    and_(~held, not_(before_erasure)),
                    and_(before_erasure, erased_by_them),
                ),
            )
        )
    return or_(*parts) if parts else false()


def recorded_before_erasure() -> ColumnElement[bool]:
    """The ledger entry on an address was recorded up to the address's last erasure: it is the
    erased customer's, not that of whoever holds the address since (a reassigned number)."""
    erased_at = _address_erased_at()
    return and_(erased_at.is_not(None), consent_ledger.c.recorded_at <= erased_at)


def _address_erased_at() -> ColumnElement:
    """When the ledger entry's address was last erased (address_erasures), or NULL."""
    e = address_erasures.c
    return select(func.max(e.at)).where(e.bidx == consent_ledger.c.address_bidx).scalar_subquery()


async def erased_holder(conn: AsyncConnection, bidx: bytes) -> uuid.UUID | None:
    """The customer whose erasure deleted this address last: the address's erasure is dated by
    the completion time of their request. (The ledger's entries on the address may name another
    profile: one it was merged with by mistake when they were recorded.)"""
    e, r = address_erasures.c, dsr_requests.c
    return (
        await conn.execute(
            select(r.profile_id)
            .select_from(address_erasures.join(dsr_requests, r.completed_at == e.at))
            .where(e.bidx == bidx, r.kind == "erasure", r.status == "completed")
            .order_by(e.at.desc())
            .limit(1)
        )
    ).scalar()
