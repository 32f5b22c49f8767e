"""A reviewer's decision to merge: profiles named by a suggestion or a merge review."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.engine import lock_keys
from cdp.db.tables import identities
from cdp.errors import Conflict
from cdp.platform import Platform
from cdp.profiles.identity import resolve_profile_id
from cdp.profiles.locks import lock_profiles
from cdp.profiles.merge import merge_profiles


@dataclass(frozen=True, slots=True)
class Merged:
    profile_id: uuid.UUID
    merged_profile_ids: list[uuid.UUID]


async def merge_reviewed(
    conn: AsyncConnection,
    p: Platform,
    profile_ids: list[uuid.UUID],
    *,
    matched_on: list[str],
    source: str,
    actor: str,
    still_open: Callable[[], Awaitable[object]] | None = None,
) -> Merged:
    """Merge the profiles (followed to their survivors) into the oldest, provenance "reviewed".

    Raises Gone when one was erased, Conflict when they are already one profile or when an
    erasure request of one of them is open. `still_open`: asked once the profiles are locked,
    before anything is merged, whether the decision still stands (it raises when not): a
    merge that committed before the locks were taken may have set it aside.
    """
    current = sorted({await resolve_profile_id(conn, pid) for pid in profile_ids})
    if len(current) < 2:
        raise Conflict("these profiles are already one profile")
    bidxs = [
        b
        for (b,) in await conn.execute(
            select(identities.c.bidx).where(identities.c.profile_id.in_(current))
        )
    ]
    await lock_keys(conn, bidxs)  # identifiers first, then profiles (cdp.profiles.locks)
    await refuse_while_erasure_open(conn, current)
    await lock_profiles(conn, current)
    if sorted({await resolve_profile_id(conn, pid) for pid in profile_ids}) != current:
        raise Conflict("these profiles were merged or split meanwhile: review them again")
    if still_open is not None:
        await still_open()
    # the lowest id survives, as in ingest (cdp.profiles.resolution: segment walks go by id)
    ordered = sorted(current)
    survivor = ordered[0]
    for absorbed in ordered[1:]:
        await merge_profiles(
            conn,
            p,
            survivor,
            absorbed,
            matched_on=matched_on,
            provenance="reviewed",
            source=source,
            actor=actor,
        )
    from consent.optout import carry_person_opt_outs

    await carry_person_opt_outs(conn, p, {survivor})  # a "stop all" of either reaches both
    return Merged(survivor, ordered[1:])


async def refuse_while_erasure_open(conn: AsyncConnection, survivors: list[uuid.UUID]) -> None:
    """Conflict while an erasure request of one of these customers (surviving profiles) is
    open: the erasure erases the customer as the request found them, as an unmerge waits for
    it (cdp.profiles.unmerge). Merged in, the other customer was erased with the requester,
    beyond any unmerge, on a reviewer's guess that they were one person. Takes the customers'
    request locks (identifiers before them, profiles after)."""
    from consent.dsr.requests import erasure_open_for

    found = await erasure_open_for(conn, survivors)
    if found is not None:
        pid, pending = found
        raise Conflict(
            f"erasure request {pending.id} of profile {pid} is open: merge once it is "
            "completed or rejected"
        )
