"""Keyset pages over a table ordered by its UUIDv7 id (creation order)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.errors import InvalidInput
from cdp.segments.cursor import check_limit, decode_cursor, encode_cursor


async def page(
    conn: AsyncConnection,
    table: Table,
    *,
    status: str | None,
    statuses: tuple[str, ...],
    limit: int | None,
    cursor: str | None,
    where: Sequence[ColumnElement[bool]] = (),
) -> tuple[list[Any], str | None]:
    if status is not None and status not in statuses:
        raise InvalidInput.field("status", "must be one of " + ", ".join(statuses))
    size = check_limit(limit)
    scope = f"{table.name}:{status or ''}"
    after = decode_cursor(cursor, scope=scope)
    query = select(table).order_by(table.c.id).limit(size + 1)
    if status is not None:
        query = query.where(table.c.status == status)
    if after is not None:
        query = query.where(table.c.id > after)
    for condition in where:
        query = query.where(condition)
    rows = (await conn.execute(query)).all()
    more = len(rows) > size
    rows = rows[:size]
    return rows, encode_cursor(rows[-1].id, scope=scope) if more and rows else None
