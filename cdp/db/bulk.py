"""Bulk INSERT at driver speed, for the ingest hot path.

SQLAlchemy's executemany spends most of its time building parameter dictionaries row by row.
Here the INSERT is compiled once per (table, dialect) and rows go to the driver as tuples, with
exactly the bind processors SQLAlchemy itself would apply, so the stored values are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import LargeBinary, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

_cache: dict[tuple[str, str, tuple[str, ...]], tuple[str, list[tuple[str, Callable | None]]]] = {}


def _compiled(table: Table, dialect: Dialect, columns: tuple[str, ...]):  # type: ignore[no-untyped-def]
    key = (table.name, dialect.name, columns)
    hit = _cache.get(key)
    if hit is None:
        compiled = insert(table).values({c: None for c in columns}).compile(dialect=dialect)
        processors = compiled._bind_processors  # the processors SQLAlchemy applies on execute
        order = compiled.positiontup or list(columns)
        # bytes go to both drivers as they are; the binary processor only re-wraps them
        plain = {c.name for c in table.columns if isinstance(c.type, LargeBinary)}
        hit = (
            str(compiled),
            [(name, None if name in plain else processors.get(name)) for name in order],
        )
        _cache[key] = hit
    return hit


async def bulk_insert(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = tuple(rows[0])
    sql, order = _compiled(table, conn.dialect, columns)
    columns_out = []
    for name, proc in order:
        values = [row[name] for row in rows]
        if proc is not None:
            # rows of a batch share many values (timestamps, sources): convert each once
            seen: dict[int, Any] = {}
            converted = []
            for v in values:
                key = id(v)
                if key not in seen:
                    seen[key] = proc(v)
                converted.append(seen[key])
            values = converted
        columns_out.append(values)
    await conn.exec_driver_sql(sql, list(zip(*columns_out, strict=True)))
