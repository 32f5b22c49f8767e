"""The access log: who read or exported personal data, when, and how much.

`log_access` writes an entry inside the caller's transaction (a read and its entry commit
together). `record_access` writes it in a write of its own, for reads made outside a write
transaction (members pages): entries recorded together share one transaction (group commit),
and the caller waits until its entry is committed, so nothing is answered before it is logged.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.apikeys import Principal
from cdp.db.tables import access_log
from cdp.ids import new_id, utcnow

if TYPE_CHECKING:
    from cdp.db.engine import Database


def _entry(
    who: Principal,
    action: str,
    *,
    object_type: str,
    object_id: str | None = None,
    profile_id: uuid.UUID | None = None,
    rows: int = 1,
    detail: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One access-log row. What was read: `object_type` and `object_id` (a segment, a profile,
    ...), the profile when one was read, how many rows, and details (never personal data)."""
    return {
        "id": new_id(),
        "at": utcnow(),
        "actor": who.name,
        "role": who.role,
        "action": action,
        "object_type": object_type,
        "object_id": object_id,
        "profile_id": profile_id,
        "rows": rows,
        "detail": detail,
    }


_INSERT = insert(access_log)  # built once: building it per call cost more than running it


async def log_access(conn: AsyncConnection, who: Principal, action: str, **what: Any) -> None:
    """An entry inside the caller's transaction; `what` as `_entry` takes it."""
    await conn.execute(_INSERT, _entry(who, action, **what))


async def _insert_entries(conn: AsyncConnection, entries: list[dict[str, Any]]) -> list[None]:
    await conn.execute(_INSERT, entries)
    return [None] * len(entries)


async def record_access(db: Database, who: Principal, action: str, **what: Any) -> None:
    """`log_access` in a write of its own, shared with entries recorded meanwhile; returns once
    the entry is committed."""
    entry = _entry(who, action, **what)
    await db.group_commit("access-log", _insert_entries).submit(entry)
