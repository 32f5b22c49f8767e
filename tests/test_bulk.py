"""Driver-level bulk inserts (cdp.db.bulk): what is stored equals what was given."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select
from sqlalchemy.dialects import sqlite

from cdp.db.bulk import _compiled, bulk_insert_rows
from cdp.db.tables import identities, profile_sources
from cdp.ids import new_id
from cdp.platform import Platform
from cdp.profiles.ingest import IDENTITY_COLUMNS

COLUMNS = ("profile_id", "source", "first_seen_at")


def _rows(n: int) -> list[tuple]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return [(new_id(), f"src{i % 7}", start + timedelta(seconds=i)) for i in range(n)]


async def _stored(p: Platform) -> set[tuple]:
    async with p.db.read() as conn:
        rows = await conn.execute(select(*[profile_sources.c[c] for c in COLUMNS]))
        return {tuple(r) for r in rows}


async def test_rows_are_stored_as_given(platform: Platform) -> None:
    rows = _rows(1037)
    async with platform.db.write() as conn:
        await bulk_insert_rows(conn, profile_sources, COLUMNS, rows)
    assert await _stored(platform) == set(rows)


async def test_ignored_conflicts_skip_only_the_repeated_keys(platform: Platform) -> None:
    first = _rows(505)
    async with platform.db.write() as conn:
        await bulk_insert_rows(conn, profile_sources, COLUMNS, first[:10])
    # repeats of rows already stored, at the start and at the end of the batch
    again = [(pid, source, seen + timedelta(days=1)) for pid, source, seen in first[:10]]
    batch = again[:5] + first[10:] + again[5:]
    async with platform.db.write() as conn:
        await bulk_insert_rows(conn, profile_sources, COLUMNS, batch, ignore_conflicts=True)
    assert await _stored(platform) == set(first)  # the repeats kept their first_seen_at


async def test_binary_and_empty_columns_are_stored_as_given(platform: Platform) -> None:
    """Blobs, a column empty in every row (written as NULL in the statement on SQLite) and
    one empty in some rows only come back as they were given, batch after batch."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    pid = new_id()
    batches = [
        [  # confirmed_at and linked_via empty in every row
            (
                new_id(),
                pid,
                "email",
                bytes([i]) * 32,
                b"\x00sealed" * i,
                "crm",
                at,
                at,
                None,
                "new",
                None,
            )
            for i in range(1, 6)
        ],
        [  # empty in some rows only
            (
                new_id(),
                pid,
                "phone",
                bytes([100 + i]) * 32,
                b"v%d" % i,
                "shop",
                at,
                at,
                at + timedelta(days=i) if i % 2 else None,
                None,
                pid if i % 2 else None,
            )
            for i in range(4)
        ],
    ]
    for batch in batches:
        async with platform.db.write() as conn:
            await bulk_insert_rows(conn, identities, IDENTITY_COLUMNS, batch)
    async with platform.db.read() as conn:
        stored = {
            tuple(r)
            for r in await conn.execute(select(*[identities.c[c] for c in IDENTITY_COLUMNS]))
        }
    assert stored == {row for batch in batches for row in batch}
    assert all(isinstance(row[3], bytes) and isinstance(row[4], bytes) for row in stored)


def _created_at_conversions() -> tuple[Callable, Callable]:
    """(SQLAlchemy's bind processor of identities.created_at on SQLite, the bulk path's)."""
    dialect = sqlite.dialect()
    compiled = insert(identities).values(dict.fromkeys(IDENTITY_COLUMNS)).compile(dialect=dialect)
    order = _compiled(identities, dialect, IDENTITY_COLUMNS, False)[1]
    created_at = IDENTITY_COLUMNS.index("created_at")
    bulk = next(proc for i, proc in order if i == created_at)
    assert bulk is not None
    return compiled._bind_processors["created_at"], bulk


@settings(max_examples=300, deadline=None)
@given(
    at=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()
    )
)
def test_sqlite_datetimes_are_written_as_sqlalchemy_writes_them(at: datetime) -> None:
    """The SQLite bulk path's own conversion of a UTCDateTime gives the text SQLAlchemy's
    bind processors give, whatever the time zone (the text is what SQLite compares)."""
    sqlalchemy_does, bulk_does = _created_at_conversions()
    assert bulk_does(at) == sqlalchemy_does(at)
    assert isinstance(bulk_does(at), str)


def test_sqlite_refuses_naive_datetimes_as_sqlalchemy_does() -> None:
    sqlalchemy_does, bulk_does = _created_at_conversions()
    for convert in (sqlalchemy_does, bulk_does):
        with pytest.raises(ValueError, match="naive"):
            convert(datetime(2026, 1, 1))
