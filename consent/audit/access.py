"""The access log for compliance officers: who read or exported personal data, when, how much."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.tables import access_log

al = access_log.c


@dataclass(frozen=True, slots=True)
class AccessFilter:
    profile_ids: list[uuid.UUID] | None = None  # a customer: every profile of theirs
    actor: str | None = None  # the API key name
    since: datetime | None = None
    until: datetime | None = None


async def page(
    conn: AsyncConnection, f: AccessFilter, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> tuple[list[dict[str, Any]], tuple[datetime, uuid.UUID] | None]:
    """(items oldest first, position to continue after, or None at the end)."""
    conditions = []
    if f.profile_ids is not None:
        conditions.append(al.profile_id.in_(f.profile_ids))
    if f.actor is not None:
        conditions.append(al.actor == f.actor)
    if f.since is not None:
        conditions.append(al.at >= f.since)
    if f.until is not None:
        conditions.append(al.at < f.until)
    if after is not None:
        at, last_id = after
        # a row value, which both databases seek in the (at, id) index; the same condition
        # spelled with OR was a filter, and a page read every entry before it
        conditions.append(tuple_(al.at, al.id) > tuple_(at, last_id))
    rows = (
        await conn.execute(
            select(access_log).where(*conditions).order_by(al.at, al.id).limit(limit + 1)
        )
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "id": str(r.id),
            "at": r.at,
            "actor": r.actor,
            "role": r.role,
            "action": r.action,
            "object_type": r.object_type,
            "object_id": r.object_id,
            "profile_id": str(r.profile_id) if r.profile_id else None,
            "rows": r.rows,
            "detail": r.detail,
        }
        for r in rows
    ]
    return items, ((rows[-1].at, rows[-1].id) if more else None)
