"""Bulk INSERT and key lookups at driver speed, for the ingest hot path.

SQLAlchemy's executemany spends most of its time building parameter dictionaries row by row.
Here the INSERT is compiled once per (table, dialect, columns) and rows go to the driver as
tuples, with exactly the bind processors SQLAlchemy itself would apply, so the stored values are
the same. `rows_where_in` is the matching SELECT ... WHERE key IN (...), compiled once.

On SQLite, rows go as multi-row VALUES statements (up to `SQLITE_ROWS` rows each), not through
executemany. The sqlite3 module holds the GIL while it binds a row and lets it go only while
SQLite steps the statement: executemany takes it back once per row, and whenever another
thread of the process is running Python, each take-back waits for that thread to yield (up to
the interpreter's switch interval). Measured beside a thread busy in Python, executemany of an
indexed table fell from 78,000 to under 2,000 rows/s, while 1,000-row VALUES statements ran at
39,000 rows/s with the other thread at full speed. A statement steps once, so SQLite's B-tree
work for the whole block runs without the GIL: an import's other threads (unpickling worker
results, its event loop) run beside it.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Executable, LargeBinary, Table, Uuid, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

_Compiled = tuple[str, list[tuple[int, Callable | None]]]
_cache: dict[tuple[str, str, tuple[str, ...], bool], _Compiled] = {}
_IN_CHUNK = 500
# SQLite allows 32,766 parameters per statement since 3.32 (999 before)
_SQLITE_PARAMS = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
SQLITE_ROWS = 500  # rows per multi-row INSERT on SQLite


def _fast(table: Table, dialect: Dialect, processors: dict[str, Callable]) -> dict[str, Callable]:
    """The bind processors SQLAlchemy applies on execute, with SQLite's Uuid one (the 32 hex
    digits, `value.hex`) replaced by an equivalent that `_convert` runs inline."""
    if dialect.name != "sqlite":
        return processors
    return {
        name: _sqlite_uuid
        if name in table.c and isinstance(table.c[name].type, Uuid) and proc is not None
        else proc
        for name, proc in processors.items()
    }


def _compiled(table: Table, dialect: Dialect, columns: tuple[str, ...], ignore: bool) -> _Compiled:
    """SQL text, and for each driver parameter: (index in `columns`, bind processor)."""
    key = (table.name, dialect.name, columns, ignore)
    hit = _cache.get(key)
    if hit is None:
        if not ignore:
            stmt = insert(table)
        elif dialect.name == "postgresql":
            stmt = postgresql.insert(table).on_conflict_do_nothing()
        else:
            stmt = sqlite.insert(table).on_conflict_do_nothing()
        compiled = stmt.values({c: None for c in columns}).compile(dialect=dialect)
        processors = _fast(table, dialect, compiled._bind_processors)
        order = compiled.positiontup or list(columns)
        # bytes go to both drivers as they are; the binary processor only re-wraps them
        plain = {c.name for c in table.columns if isinstance(c.type, LargeBinary)}
        hit = (
            str(compiled),
            [
                (columns.index(name), None if name in plain else processors.get(name))
                for name in order
            ],
        )
        _cache[key] = hit
    return hit


def _sqlite_uuid(value: Any) -> Any:
    return None if value is None else value.hex


def _convert(values: Sequence[Any], proc: Callable) -> list[Any]:
    if proc is _sqlite_uuid:  # ids are mostly distinct: no point looking for repeats
        return [None if v is None else v.hex for v in values]
    # rows of a batch share many values (timestamps, sources): convert each once
    seen: dict[int, Any] = {}
    out = []
    for v in values:
        key = id(v)
        if key not in seen:
            seen[key] = proc(v)
        out.append(seen[key])
    return out


def _driver_rows(rows: Sequence[tuple], order: list[tuple[int, Callable | None]]) -> list[tuple]:
    """Rows as the driver takes them: for each parameter, (index in the row, bind processor)."""
    if all(proc is None for _, proc in order) and [i for i, _ in order] == list(
        range(len(rows[0]))
    ):
        return rows if isinstance(rows, list) else list(rows)
    by_column = list(zip(*rows, strict=True))
    out = [by_column[i] if proc is None else _convert(by_column[i], proc) for i, proc in order]
    return list(zip(*out, strict=True))


async def bulk_insert_rows(
    conn: AsyncConnection,
    table: Table,
    columns: tuple[str, ...],
    rows: Sequence[tuple],
    *,
    ignore_conflicts: bool = False,
) -> None:
    """INSERT rows given as tuples in `columns` order. `ignore_conflicts`: skip rows whose key
    already exists (ON CONFLICT DO NOTHING)."""
    if not rows:
        return
    sql, order = _compiled(table, conn.dialect, columns, ignore_conflicts)
    driver_rows = _driver_rows(rows, order)
    if conn.dialect.name != "sqlite":
        await conn.exec_driver_sql(sql, driver_rows)
        return
    statements = [
        (_multi_row(sql, len(block)), tuple([v for row in block for v in row]))
        for block in _blocks(driver_rows, max(1, min(SQLITE_ROWS, _SQLITE_PARAMS // len(order))))
    ]
    for statement, params in statements:
        await conn.exec_driver_sql(statement, params)


def _blocks(rows: list[tuple], most: int) -> list[list[tuple]]:
    """Rows in blocks of `most`, then of powers of two: a statement is prepared once per size
    and kept in the driver's statement cache, where a remainder of any size would be prepared
    again for nearly every batch (preparing a 437-row INSERT took 0.85 ms, twice as long as
    running it into an unindexed table)."""
    out = []
    start = 0
    while len(rows) - start >= most:
        out.append(rows[start : start + most])
        start += most
    size = 1 << (most.bit_length() - 1)
    while start < len(rows):
        while size > len(rows) - start:
            size >>= 1
        out.append(rows[start : start + size])
        start += size
    return out


_multi_sql: dict[tuple[str, int], str] = {}


def _multi_row(sql: str, n: int) -> str:
    """`INSERT ... VALUES (?, ?) [tail]` with its VALUES group repeated n times."""
    hit = _multi_sql.get((sql, n))
    if hit is None:
        head, sep, rest = sql.partition(" VALUES ")
        end = rest.index(")") + 1
        hit = f"{head}{sep}{', '.join([rest[:end]] * n)}{rest[end:]}"
        if len(_multi_sql) < 4096:
            _multi_sql[(sql, n)] = hit
    return hit


_statements: dict[tuple[str, str, tuple[str, ...]], _Compiled] = {}


async def execute_rows(
    conn: AsyncConnection,
    name: str,
    build: Callable[[], Executable],
    columns: tuple[str, ...],
    rows: Sequence[tuple],
) -> None:
    """Execute the statement `build()` makes (its bind parameters named as in `columns`) once
    per row, rows given as tuples in `columns` order, at driver speed: compiled once per
    (name, dialect), values passed through the bind processors SQLAlchemy would apply."""
    if not rows:
        return
    key = (name, conn.dialect.name, columns)
    hit = _statements.get(key)
    if hit is None:
        compiled = build().compile(dialect=conn.dialect)
        procs = compiled._bind_processors
        names = compiled.positiontup or list(compiled.bind_names.values())
        hit = _statements[key] = (str(compiled), [(columns.index(n), procs.get(n)) for n in names])
    sql, order = hit
    await conn.exec_driver_sql(sql, _driver_rows(rows, order))


async def bulk_insert(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = tuple(rows[0])
    await bulk_insert_rows(conn, table, columns, [tuple(r[c] for c in columns) for r in rows])


def _as_uuid(value: Any) -> uuid.UUID | None:
    if value is None or type(value) is uuid.UUID:
        return value
    if isinstance(value, str):  # SQLite stores a Uuid as 32 hex digits
        return uuid.UUID(hex=value)
    return uuid.UUID(bytes=value.bytes)  # asyncpg's own UUID type


async def rows_where_in(
    conn: AsyncConnection, table: Table, columns: tuple[str, ...], key: str, values: list[Any]
) -> list[tuple]:
    """SELECT columns FROM table WHERE key IN values, as tuples (Uuid columns as uuid.UUID).
    For key columns whose values both drivers take as they are (bytes, text)."""
    if not values:
        return []
    names = ", ".join(columns)
    uuids = [i for i, c in enumerate(columns) if isinstance(table.c[c].type, Uuid)]
    out: list[tuple] = []
    postgres = conn.dialect.name == "postgresql"
    for start in range(0, len(values), _IN_CHUNK):
        chunk = values[start : start + _IN_CHUNK]
        # a list of parameters, not "= ANY($1)": PostgreSQL's generic plan for an array
        # parameter may scan the table
        if postgres:
            marks = ", ".join(f"${i}" for i in range(1, len(chunk) + 1))
        else:
            marks = ", ".join("?" * len(chunk))
        sql = f"SELECT {names} FROM {table.name} WHERE {key} IN ({marks})"
        result = await conn.exec_driver_sql(sql, tuple(chunk))
        for row in result.all():
            if uuids:
                row = list(row)
                for i in uuids:
                    row[i] = _as_uuid(row[i])
            out.append(tuple(row))
    return out
