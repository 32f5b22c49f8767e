"""Locking profiles before writing to them (PostgreSQL; SQLite runs one write at a time).

A request that names a customer reads which profile that is, then writes to it (an event, a
consent, a record's fields and identifiers). An erasure or a merge of the same customer may
commit in between, so a writer holds the profile's lock and reads the profile again under it.
Without that, an event or a grant stored for a profile erased meanwhile outlived the erasure (a
grant made the address contactable again), and a record or an event that reached a profile by
one identifier while another record merged it away stayed on the absorbed profile, where no
view, segment or stats saw it again.

The lock is the profile row's (SELECT ... FOR UPDATE): merges and erasures update the rows they
change, and row locks do not use PostgreSQL's shared lock table, which an import's chunk of a
thousand records would strain. Lock order, so that waits never form a cycle: identifiers first
(advisory locks on blind indexes, `cdp.db.engine.lock_keys`), then profiles, in id order, then
the consent ledger's head (`consent.ledger.append`), held until the commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.tables import profiles
from cdp.profiles.identity import resolve_profile_id

_LOCK = (  # built once: building one per call cost more than the driver's round trip
    select(profiles.c.id)
    .where(profiles.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(profiles.c.id)
    .with_for_update()
)


async def lock_profiles(conn: AsyncConnection, profile_ids: Iterable[uuid.UUID]) -> None:
    """Hold these profiles' locks until the transaction ends (waiting for their holders)."""
    if conn.dialect.name != "postgresql":
        return
    ids = sorted(set(profile_ids))
    for start in range(0, len(ids), 500):
        await conn.execute(_LOCK, {"ids": ids[start : start + 500]})


async def lock_profile(conn: AsyncConnection, profile_id: uuid.UUID) -> uuid.UUID:
    """Lock the surviving profile `profile_id` resolves to and return its id, as it stands
    once the lock is held. Raises Gone when it was erased (NotFound when unknown)."""
    pid = await resolve_profile_id(conn, profile_id)
    if conn.dialect.name != "postgresql":
        return pid
    while True:
        await lock_profiles(conn, [pid])
        current = await resolve_profile_id(conn, pid)
        if current == pid:
            return pid
        pid = current  # merged meanwhile: its survivor is the one to lock


Found = list[uuid.UUID | Exception | None]


async def lock_found(conn: AsyncConnection, find: Callable[[], Awaitable[Found]]) -> Found:
    """`find()` (the profiles a batch of requests names, as `find_profiles` answers), with
    every profile it names locked, found again under the locks until it names no other."""
    found = await find()
    if conn.dialect.name != "postgresql":
        return found
    locked: set[uuid.UUID] = set()
    while True:
        named = {pid for pid in found if isinstance(pid, uuid.UUID)}
        if named <= locked:
            return found
        await lock_profiles(conn, named - locked)
        locked |= named
        found = await find()
