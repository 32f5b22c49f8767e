"""How much of a table a statement reads, on both databases, for tests of the scale review
(docs/testing.md, "Scale review (2026-12-07)"): a request that names one customer, one id or one
page, or a background pass with nothing to do, must not read a whole table.

`captured(p)` collects the statements the platform runs; `rows_read(p, sql, params)` runs one
of them again and says how much it read:
- PostgreSQL: rows the plan's nodes produced or filtered away (EXPLAIN ANALYZE), with
  sequential scans discouraged, so that a statement that could use an index does;
- SQLite: virtual machine steps, in hundreds (a progress handler on a connection of its own):
  reading a row costs several, so a scan of n rows costs well over n / 100.
Both grow with the table where the statement scans it, and stay small where an index finds the
rows; a test fills a table with a few thousand rows that the statement must not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event

from cdp.platform import Platform


@contextlib.contextmanager
def captured(p: Platform) -> Iterator[list[tuple[str, Any]]]:
    """The statements (text, DBAPI parameters) run on the platform's database meanwhile."""
    seen: list[tuple[str, Any]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        seen.append((statement, parameters))

    engine = p.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def reads_of(statements: list[tuple[str, Any]], table: str) -> list[tuple[str, Any]]:
    """The SELECTs among these statements that name this table."""
    return [
        (sql, params)
        for sql, params in statements
        if sql.lstrip().upper().startswith(("SELECT", "WITH")) and table in sql
    ]


def _pg_rows(node: dict) -> float:
    loops = node.get("Actual Loops", 1)
    own = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * loops
    return own + sum(_pg_rows(child) for child in node.get("Plans", []))


def _sqlite_steps(path: str, sql: str, params: Any) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    ticks = [0]

    def tick() -> int:
        ticks[0] += 1
        return 0

    try:
        con.execute("SELECT count(*) FROM sqlite_master").fetchall()  # the schema, read once
        con.set_progress_handler(tick, 100)
        con.execute(sql, params or ()).fetchall()
    finally:
        con.close()
    return ticks[0]


async def rows_read(p: Platform, sql: str, params: Any) -> float:
    """How much this read reads (see the module's docstring)."""
    if p.db.engine.dialect.name == "postgresql":
        async with p.db.engine.connect() as conn:
            await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = (
                await conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params)
            ).scalar()
            await conn.rollback()
        plan = json.loads(plan) if isinstance(plan, str) else plan
        return _pg_rows(plan[0]["Plan"])
    path = p.settings.database_url.split("///", 1)[1]
    return await asyncio.to_thread(_sqlite_steps, path, sql, params)


async def most_read(p: Platform, statements: list[tuple[str, Any]], table: str) -> float:
    """The most any read of this table among these statements reads."""
    reads = reads_of(statements, table)
    assert reads, f"no read of {table}"
    amounts = [await rows_read(p, sql, params) for sql, params in reads]
    worst = max(range(len(reads)), key=amounts.__getitem__)
    print(f"most read of {table}: {amounts[worst]} by {reads[worst][0]}")  # shown on failure
    return amounts[worst]
