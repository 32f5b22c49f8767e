"""Reading the ledger, the consent state and the suppression list for the state check.

Rows come through the database driver as it returns them (no ORM row processing), as the chain
check reads the ledger: at a million entries SQLAlchemy's per-value conversions would cost more
than the check itself. Times are read as UTC text, `YYYY-MM-DD HH:MM:SS.ffffff`: as SQLAlchemy
stores them in SQLite, and as PostgreSQL writes a timestamp (DateStyle ISO, set for the
transaction; it leaves out trailing zeros of the fraction). Either way the text of one database
orders and compares as the times do, and costs less to read than datetimes. Profile ids are
handled as their 16 bytes.

`batches` reads several queries sorted by subject at once, a chunk at a time, and hands out
batches in which every subject is complete: all its rows of every query. Memory stays at a few
chunks per query (the one being handed out, the next being read), whatever the size of the
tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from bisect import bisect_left
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import literal, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

Row = Sequence[Any]
IN_CHUNK = 5000  # SQLite allows 32,766 parameters a statement


class OrderError(RuntimeError):
    """A query did not return its rows in the order the merge relies on."""


class Reader:
    """Queries written with `?` placeholders, run on the connection's driver."""

    def __init__(self, conn: AsyncConnection, driver: Any) -> None:
        self.conn = conn
        self.dialect = conn.dialect.name
        self.driver = driver

    @classmethod
    async def of(cls, conn: AsyncConnection) -> Reader:
        # a statement through SQLAlchemy first: on PostgreSQL that is what begins the
        # connection's transaction (and its snapshot), which the driver's queries then share
        await conn.execute(select(literal(1)))
        raw = await conn.get_raw_connection()
        reader = cls(conn, raw.driver_connection)
        await reader.iso_dates()
        return reader

    async def iso_dates(self) -> None:
        if not self.sqlite:
            await self.rows("SET LOCAL datestyle = 'ISO'")

    @property
    def sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def _numbered(self, sql: str) -> str:
        if self.sqlite:
            return sql
        numbers = iter(range(1, sql.count("?") + 1))
        return re.sub(r"\?", lambda _: f"${next(numbers)}", sql)

    async def rows(self, sql: str, *params: Any) -> Sequence[Row]:
        if self.sqlite:
            cursor = await self.driver.execute(sql, params)
            try:
                return await cursor.fetchall()
            finally:
                await cursor.close()
        return await self.driver.fetch(self._numbered(sql), *params)

    async def value(self, sql: str, *params: Any) -> Any:
        found = await self.rows(sql, *params)
        return found[0][0] if found else None

    async def rows_in(self, sql: str, values: Sequence[Any], *params: Any) -> list[Row]:
        """`sql` with `IN {in}` standing for the list `values` (on PostgreSQL one array
        parameter; on SQLite a list of placeholders, for chunks of `values`)."""
        if not values:
            return []
        if not self.sqlite:
            return list(await self.rows(sql.replace("IN {in}", "= ANY(?)"), *params, values))
        out: list[Row] = []
        for start in range(0, len(values), IN_CHUNK):
            chunk = list(values[start : start + IN_CHUNK])
            marks = "(" + ", ".join("?" * len(chunk)) + ")"
            out.extend(await self.rows(sql.replace("{in}", marks), *params, *chunk))
        return out

    async def chunks(
        self, sql: str, *params: Any, size: int
    ) -> AsyncGenerator[Sequence[Row], None]:
        """The rows of one query, `size` at a time (a server-side cursor on PostgreSQL)."""
        if self.sqlite:
            cursor = await self.driver.execute(sql, params)
            try:
                while chunk := await cursor.fetchmany(size):
                    yield chunk
            finally:
                await cursor.close()
            return
        cursor = await self.driver.cursor(self._numbered(sql), *params)
        while chunk := await cursor.fetch(size):
            yield chunk

    @asynccontextmanager
    async def sharing_snapshot(self, count: int) -> AsyncIterator[list[Reader]]:
        """`count` readers that see this reader's snapshot and can read at the same time: on
        PostgreSQL, connections of their own that import the snapshot (pg_export_snapshot),
        so the server works on every query at once; on SQLite this reader itself (its driver
        runs one query at a time anyway)."""
        if self.sqlite:
            yield [self] * count
            return
        snapshot = await export_snapshot(self.conn)
        async with contextlib.AsyncExitStack() as stack:
            readers = []
            for _ in range(count):
                conn = await stack.enter_async_context(
                    imported_snapshot(self.conn.engine, snapshot)
                )
                readers.append(await Reader.of(conn))
            yield readers

    def time(self, expression: str) -> str:
        """SQL reading a UTC time as text (see the module's docstring)."""
        if self.sqlite:
            return expression
        return f"(({expression}) AT TIME ZONE 'UTC')::text"

    def id_bytes(self, value: Any) -> bytes:
        """A Uuid column's value as 16 bytes (SQLite keeps 32 hex digits)."""
        return bytes.fromhex(value) if isinstance(value, str) else value.bytes

    def id_param(self, raw: bytes) -> Any:
        return raw.hex() if self.sqlite else uuid.UUID(bytes=raw)


async def export_snapshot(conn: AsyncConnection) -> str:
    """PostgreSQL: an id other sessions can read this transaction's snapshot by, while it
    lasts (pg_export_snapshot)."""
    snapshot = str((await conn.exec_driver_sql("SELECT pg_export_snapshot()")).scalar())
    if not re.fullmatch(r"[0-9A-F-]+", snapshot):
        raise ValueError("unexpected snapshot id")
    return snapshot


@asynccontextmanager
async def imported_snapshot(engine: AsyncEngine, snapshot: str) -> AsyncIterator[AsyncConnection]:
    """PostgreSQL: a read-only transaction on a connection of its own that sees the snapshot
    `export_snapshot` named (the exporting transaction must still be open)."""
    if not re.fullmatch(r"[0-9A-F-]+", snapshot):
        raise ValueError("unexpected snapshot id")
    async with engine.connect() as conn:
        conn = await conn.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
        async with conn.begin():
            await conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            yield conn


def instant(at: str) -> datetime:
    """A time as the state check reads it (UTC text), as a datetime."""
    return datetime.fromisoformat(at)


def iso(at: str | None) -> str | None:
    """A time as the state check reads it, for a report: ISO 8601 in UTC."""
    return None if at is None else instant(at).isoformat() + "Z"


@dataclass(slots=True)
class Sorted:
    """One query's rows, sorted by `key` (a subject as bytes), read a chunk at a time; the next
    chunk is read while the last one is used."""

    chunks: AsyncGenerator[Sequence[Row], None]
    key: Callable[[Row], bytes]
    buffer: list[Row] = field(default_factory=list)
    done: bool = False
    ahead: asyncio.Future | None = None

    async def more(self) -> None:
        if self.ahead is None:
            self.ahead = asyncio.ensure_future(anext(self.chunks, None))
        chunk = await self.ahead
        self.ahead = None
        if chunk is None:
            self.done = True
            return
        self.ahead = asyncio.ensure_future(anext(self.chunks, None))
        keys = list(map(self.key, chunk))
        if self.buffer:
            keys.insert(0, self.key(self.buffer[-1]))
        if keys != sorted(keys):
            raise OrderError("a query's rows are not in subject order")
        self.buffer.extend(chunk)

    async def close(self) -> None:
        if self.ahead is not None:
            with contextlib.suppress(Exception):
                await self.ahead
        await self.chunks.aclose()

    def take_before(self, bound: bytes | None) -> list[Row]:
        """The buffered rows whose subject is before `bound` (all of them for None)."""
        cut = len(self.buffer) if bound is None else bisect_left(self.buffer, bound, key=self.key)
        taken, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return taken


async def batches(streams: list[Sorted]) -> AsyncIterator[list[list[Row]]]:
    """Batches of rows, one list per stream, in which every subject is complete."""
    while True:
        for s in streams:
            while not s.done and not s.buffer:
                await s.more()
        unfinished = [s for s in streams if not s.done]
        # a subject before the last one buffered from every unfinished query is complete
        bound = min((s.key(s.buffer[-1]) for s in unfinished), default=None)
        taken = [s.take_before(bound) for s in streams]
        if any(taken):
            yield taken
        if not unfinished:
            return
        for s in unfinished:
            if s.key(s.buffer[-1]) == bound:  # it holds only that subject's rows: read on
                await s.more()
