"""Saved segment definitions (table `segments`); a deleted segment is kept, flagged `deleted`."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import insert, select, update
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
    }
    await conn.execute(insert(segments).values(**values))
    return await load_segment(conn, values["id"])  # type: ignore[return-value]


async def load_segment(conn: AsyncConnection, segment_id: uuid.UUID) -> Row | None:
    s = segments.c
    query = select(segments).where(s.id == segment_id, s.deleted.is_(False))
    return (await conn.execute(query)).first()


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
