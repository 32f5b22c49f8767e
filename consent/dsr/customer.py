"""Which profiles make up one customer: the surviving profile and every profile merged into it."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.tables import identities, profiles


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
    """The root and every profile merged into it, directly or through a chain."""
    found = [root]
    seen = {root}
    frontier = [root]
    while frontier:
        rows = await conn.execute(select(profiles.c.id).where(profiles.c.merged_into.in_(frontier)))
        frontier = [pid for (pid,) in rows if pid not in seen]
        seen.update(frontier)
        found.extend(frontier)
    return found


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
