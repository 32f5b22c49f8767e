"""Bulk INSERT and key lookups at driver speed, for the ingest hot path.

SQLAlchemy's executemany spends most of its time building parameter dictionaries row by row.
Here the INSERT is compiled once per (table, dialect, columns) and rows go to the driver as
tuples, with exactly the bind processors SQLAlchemy itself would apply, so the stored values are
the same. `rows_where_in` is the matching SELECT ... WHERE key IN (...), compiled once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import Executable, LargeBinary, Table, Uuid, insert, null
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.types import UTCDateTime

_Compiled = tuple[str, list[tuple[int, Callable | None]]]
_cache: dict[tuple[str, str, tuple[str, ...], bool, tuple[str, ...]], _Compiled] = {}
_IN_CHUNK = 500


def _fast(
    types: dict[str, Any], dialect: Dialect, processors: dict[str, Callable]
) -> dict[str, Callable]:
    """The bind processors SQLAlchemy applies on execute (`types`: each parameter's type), with
    three replaced on SQLite by equivalents: a Uuid's (the 32 hex digits, `value.hex`, which
    `_convert` runs inline), a UTCDateTime's (`_sqlite_utc`), and a binary column's, which
    hands the driver `bytearray`s. The sqlite3 module binds a str, int, float or bytearray at
    once, but passes bytes (and SQLAlchemy's memoryview) through its adapter registry first,
    with the GIL held: three times the cost of binding the same value as a bytearray, stored
    as the same BLOB."""
    if dialect.name != "sqlite":
        return processors
    out = dict(processors)
    for name, type_ in types.items():
        if isinstance(type_, Uuid) and processors.get(name) is not None:
            out[name] = _sqlite_uuid
        elif isinstance(type_, LargeBinary):
            out[name] = _sqlite_blob
        elif isinstance(type_, UTCDateTime):
            out[name] = _sqlite_utc
    return out


def _compiled(
    table: Table,
    dialect: Dialect,
    columns: tuple[str, ...],
    ignore: bool,
    nulls: tuple[str, ...] = (),
) -> _Compiled:
    """SQL text, and for each driver parameter: (index in `columns`, bind processor). The
    columns in `nulls` are written as a NULL in the text, not as parameters."""
    key = (table.name, dialect.name, columns, ignore, nulls)
    hit = _cache.get(key)
    if hit is None:
        if not ignore:
            stmt = insert(table)
        elif dialect.name == "postgresql":
            stmt = postgresql.insert(table).on_conflict_do_nothing()
        else:
            stmt = sqlite.insert(table).on_conflict_do_nothing()
        compiled = stmt.values({c: null() if c in nulls else None for c in columns}).compile(
            dialect=dialect
        )
        processors = _fast(
            {c: table.c[c].type for c in columns}, dialect, compiled._bind_processors
        )
        order = compiled.positiontup or list(columns)
        # bytes go to PostgreSQL as they are; the binary processor only re-wraps them
        plain = (
            {c.name for c in table.columns if isinstance(c.type, LargeBinary)}
            if dialect.name != "sqlite"
            else set()
        )
        # columns of one type share one processor, so that `_driver_rows` converts a value
        # they share (a row's created_at and updated_at) once
        by_type: dict[str, Callable] = {}
        hit = (
            str(compiled),
            [
                (
                    columns.index(name),
                    None
                    if name in plain or processors.get(name) is None
                    else by_type.setdefault(repr(table.c[name].type), processors[name]),
                )
                for name in order
            ],
        )
        _cache[key] = hit
    return hit


def _sqlite_uuid(value: Any) -> Any:
    return None if value is None else value.hex


def _sqlite_blob(value: Any) -> Any:
    return None if value is None else bytearray(value)


def _sqlite_utc(value: datetime | None) -> str | None:
    """What UTCDateTime and SQLite's DATETIME make of a datetime (UTC, naive, microseconds
    always written: "2026-01-01 07:00:00.000005"), at a third of the cost."""
    if value is None:
        return None
    if value.tzinfo is UTC:
        return value.isoformat(" ", "microseconds")[:-6]  # less "+00:00"
    if value.tzinfo is None:
        raise ValueError("naive datetimes are not stored")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _convert(values: Sequence[Any], proc: Callable, seen: dict[int, Any]) -> list[Any]:
    """`values` through `proc`; `seen`: what it gave for each value (by identity) so far."""
    if proc is _sqlite_uuid:  # ids are mostly distinct: no point looking for repeats
        return [None if v is None else v.hex for v in values]
    if proc is _sqlite_blob:  # so are ciphertexts and blind indexes
        return [None if v is None else bytearray(v) for v in values]
    # rows of a batch share many values (timestamps, sources), within a column and across
    # columns (a row's created_at and updated_at): each is converted once
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
    seen: dict[Callable, dict[int, Any]] = {}  # the values live as long as `rows` does
    out = [
        by_column[i] if proc is None else _convert(by_column[i], proc, seen.setdefault(proc, {}))
        for i, proc in order
    ]
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
    nulls = _empty_columns(columns, rows) if conn.dialect.name == "sqlite" else ()
    sql, order = _compiled(table, conn.dialect, columns, ignore_conflicts, nulls)
    await conn.exec_driver_sql(sql, _driver_rows(rows, order))


def _empty_columns(columns: tuple[str, ...], rows: Sequence[tuple]) -> tuple[str, ...]:
    """The columns that are None in every row. SQLite's driver binds a None through its
    adapter registry, as it does bytes (see `_fast`): a NULL written in the statement costs
    nothing per row (a batch of new profiles: their identities' confirmed_at, linked_via...)."""
    first = rows[0]
    return tuple(
        c for i, c in enumerate(columns) if first[i] is None and all(r[i] is None for r in rows)
    )


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
        names = compiled.positiontup or list(compiled.bind_names.values())
        types = {name: b.type for name, b in compiled.binds.items()}
        procs = _fast(types, conn.dialect, compiled._bind_processors)
        hit = _statements[key] = (str(compiled), [(columns.index(n), procs.get(n)) for n in names])
    sql, order = hit
    await conn.exec_driver_sql(sql, _driver_rows(rows, order))


async def bulk_insert(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = tuple(rows[0])
    if len(columns) == 1:
        (column,) = columns
        await bulk_insert_rows(conn, table, columns, [(r[column],) for r in rows])
        return
    values = itemgetter(*columns)  # a row's values as a tuple, in C
    await bulk_insert_rows(conn, table, columns, [values(r) for r in rows])


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
