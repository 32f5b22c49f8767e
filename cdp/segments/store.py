"""Saved segment definitions (table `segments`); a deleted segment is kept, flagged `deleted`."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.tables import segments
from cdp.ids import new_id, utcnow


async def insert_segment(
    conn: AsyncConnection,
    *,
    name: str,
    purpose: str,
    channel: str,
    rules: dict[str, Any],
    created_by: str,
    automated: bool = False,
) -> Row:
    values = {
        "id": new_id(),
        "name": name,
        "purpose": purpose,
        "channel": channel,
        "rules": rules,
        "created_by": created_by,
        "created_at": utcnow(),
        "deleted": False,
        "automated": automated,
    }
    await conn.execute(insert(segments).values(**values))
    return await load_segment(conn, values["id"])  # type: ignore[return-value]


# built once: building it per call (every members page) cost more than running it
_LIVE = select(segments).where(segments.c.id == bindparam("id"), segments.c.deleted.is_(False))


async def load_segment(conn: AsyncConnection, segment_id: uuid.UUID) -> Row | None:
    return (await conn.execute(_LIVE, {"id": segment_id})).first()


async def list_segments(conn: AsyncConnection, *, after: uuid.UUID | None, limit: int) -> list[Row]:
    s = segments.c
    query = select(segments).where(s.deleted.is_(False)).order_by(s.id).limit(limit)
    if after is not None:
        query = query.where(s.id > after)
    return list((await conn.execute(query)).all())


async def mark_deleted(conn: AsyncConnection, segment_id: uuid.UUID) -> bool:
    s = segments.c
    result = await conn.execute(
        update(segments).where(s.id == segment_id, s.deleted.is_(False)).values(deleted=True)
    )
    return result.rowcount == 1
