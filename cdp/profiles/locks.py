"""Locking a profile before writing to it (PostgreSQL; SQLite runs one write at a time).

A request that names a customer reads which profile that is, then writes to it (an event, a
consent). An erasure or a merge of the same customer may commit in between, so a writer must
hold the profile's lock and read the profile again under it: an erasure holds the lock of every
profile it erases, and an event or a grant stored for a profile erased meanwhile would outlive
the erasure (a grant would even make the address contactable again).

Lock order, to keep waits free of cycles: identifiers first (blind indexes, `lock_keys` on the
values), then profiles.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.engine import lock_keys
from cdp.profiles.identity import resolve_profile_id


def profile_lock(profile_id: uuid.UUID) -> str:
    return f"profile|{profile_id}"


async def lock_profile(conn: AsyncConnection, profile_id: uuid.UUID) -> uuid.UUID:
    """Lock the surviving profile `profile_id` resolves to and return its id, as it stands
    once the lock is held. Raises Gone when it was erased (NotFound when unknown)."""
    pid = await resolve_profile_id(conn, profile_id)
    if conn.dialect.name != "postgresql":
        return pid
    while True:
        await lock_keys(conn, [profile_lock(pid)])
        current = await resolve_profile_id(conn, pid)
        if current == pid:
            return pid
        pid = current  # merged meanwhile: its survivor is the one to lock
