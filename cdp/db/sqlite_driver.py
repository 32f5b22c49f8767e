"""SQLAlchemy's aiosqlite adapter, with one thread hop per statement instead of three or four.

aiosqlite runs the sqlite3 connection in a thread of its own; every call on it (open a cursor,
execute, fetch the rows, close the cursor) is a hop to that thread and back through the event
loop, and SQLAlchemy's adapter makes one of each for every statement. A hop costs more than most
of our statements do in SQLite: an opt-out's sixteen statements made 114 hops, two thirds of the
event loop's CPU time for it. Here a statement's cursor is opened, executed, read to the end and
closed in one function run in aiosqlite's thread (`_run`), and the cursor SQLAlchemy sees holds
the rows, the description, the row count and the last row id it returned. Server-side cursors
(`stream()`, a segment export) are aiosqlite's as before: they fetch as they go.

This leans on two private members of aiosqlite's Connection, `_execute` (run a function in its
thread) and `_conn` (the sqlite3 connection), as SQLAlchemy's own adapter does for its
isolation level; pyproject.toml pins the aiosqlite versions they were read from.
"""

from __future__ import annotations

import collections
import logging
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)

# aiosqlite's own logger writes, at DEBUG, every call it runs with its arguments: a statement's
# bound values (the plaintext city and traits, ciphertexts, blind indexes) and the exception
# of a failed one. SQLAlchemy's `hide_parameters` does not reach it, so it is held at INFO
# whatever level the root logger is given (a DEBUG root logger used to print them all).
logging.getLogger("aiosqlite").setLevel(logging.INFO)


def _run(connection: aiosqlite.Connection, sql: str, params: Any, many: bool) -> tuple:
    """In aiosqlite's thread: one statement, start to end."""
    cursor = connection._conn.cursor()
    try:
        if many:
            cursor.executemany(sql, params)
        elif params is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, params)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A client-side cursor whose statement ran in one hop (see the module's docstring)."""

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # no aiosqlite cursor: each statement opens and closes its own in the thread
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = {}
        self._rows = collections.deque()
        self._description = None
        self._rowcount = -1
        self._lastrowid = None
        self._arraysize = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _async_soft_close(self) -> None:
        return  # the thread closed the sqlite3 cursor already; the rows stay readable

    def close(self) -> None:
        self._rows.clear()

    async def _execute_async(self, operation: Any, parameters: Any) -> None:
        await self._hop(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> None:
        await self._hop(operation, seq_of_parameters, many=True)

    async def _hop(self, sql: str, params: Any, *, many: bool) -> None:
        # as sqlite3 does at each execute: a statement that fails leaves nothing of the last
        self._description, self._rowcount = None, -1
        self._rows = collections.deque()
        async with self._adapt_connection._execute_mutex:
            conn = self._connection
            description, rows, rowcount, lastrowid = await conn._execute(
                _run, conn, sql, params, many
            )
        self._description = description
        self._rows = collections.deque(rows) if rows else collections.deque()
        self._rowcount = rowcount
        self._lastrowid = lastrowid

    def nextset(self) -> None:
        return None  # sqlite3 has one result set per statement

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None  # a no-op in sqlite3 too


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneHopCursor


class OneHopDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The aiosqlite DBAPI adapter, making `OneHopConnection`s."""

    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        adapted = super().connect(*arg, **kw)
        return OneHopConnection(self, adapted._connection)


def one_hop_dbapi() -> OneHopDBAPI:
    import sqlite3

    return OneHopDBAPI(aiosqlite, sqlite3)
