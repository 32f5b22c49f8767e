"""Driver-level bulk inserts (cdp.db.bulk): what is stored equals what was given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from cdp.db.bulk import bulk_insert_rows
from cdp.db.tables import profile_sources
from cdp.ids import new_id
from cdp.platform import Platform

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
