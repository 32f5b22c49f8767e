"""Small portable statement helpers (SQLite and PostgreSQL)."""

from __future__ import annotations

from functools import cache

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection


def insert_ignore(conn: AsyncConnection, table: Table):  # type: ignore[no-untyped-def]
    """INSERT that silently skips rows whose key already exists."""
    return _insert_ignore(conn.dialect.name, table)


@cache  # built once per table: SQLAlchemy then reuses its compiled form without rebuilding it
def _insert_ignore(dialect: str, table: Table):  # type: ignore[no-untyped-def]
    return dialect_insert(dialect, table).on_conflict_do_nothing()


def dialect_insert(dialect: str, table: Table):  # type: ignore[no-untyped-def]
    """The dialect's own INSERT (`conn.dialect.name`), which has ON CONFLICT clauses."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
