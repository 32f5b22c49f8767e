"""The SQLite driver adapter (cdp.db.sqlite_driver): each statement is one hop to aiosqlite's
thread, and what SQLAlchemy reads back (rows, columns, counts, errors) is what the stock
adapter gave."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from cdp.db.engine import Database

meta = MetaData()
things = Table(
    "things",
    meta,
    Column("id", Integer, primary_key=True),
    Column("name", String, unique=True, nullable=False),
)


@pytest.fixture
async def db(tmp_path: Path):
    d = Database(f"sqlite+aiosqlite:///{tmp_path / 'driver.db'}")
    async with d.engine.begin() as conn:
        await conn.run_sync(meta.create_all)
    yield d
    await d.dispose()


async def test_rows_columns_and_counts(db: Database) -> None:
    async with db.write() as conn:
        many = await conn.execute(insert(things), [{"name": f"n{i}"} for i in range(5)])
        assert many.rowcount == 5
        one = await conn.execute(insert(things).values(name="solo"))
        assert one.inserted_primary_key == (6,)  # the last row id, read back
        back = await conn.execute(insert(things).values(name="ret").returning(things.c.id))
        assert back.scalar_one() == 7
        changed = await conn.execute(
            update(things).where(things.c.id > 3).values(name=things.c.name + "x")
        )
        assert changed.rowcount == 4
    async with db.read() as conn:
        rows = (await conn.execute(select(things).order_by(things.c.id))).all()
        assert [r.name for r in rows] == ["n0", "n1", "n2", "n3x", "n4x", "solox", "retx"]
        empty = await conn.execute(select(things.c.id, things.c.name).where(things.c.id < 0))
        assert list(empty.keys()) == ["id", "name"]
        assert empty.all() == []
        assert (await conn.execute(text("SELECT count(*) FROM things"))).scalar() == 7


async def test_a_refused_write_raises_and_rolls_back(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(insert(things).values(name="taken"))
    with pytest.raises(IntegrityError):
        async with db.write() as conn:
            await conn.execute(insert(things).values(name="other"))
            await conn.execute(insert(things).values(name="taken"))
    async with db.read() as conn:
        names = (await conn.execute(select(things.c.name))).scalars().all()
    assert names == ["taken"]  # "other" went with its transaction
    async with db.write() as conn:  # the connection is usable again
        await conn.execute(insert(things).values(name="after"))


async def test_streamed_results_still_fetch_as_they_go(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(insert(things), [{"name": f"n{i:03}"} for i in range(250)])
    async with db.read() as conn:
        result = await conn.stream(select(things.c.name).order_by(things.c.id))
        parts = [len(p) async for p in result.partitions(100)]
    assert parts == [100, 100, 50]


async def test_a_statement_is_one_hop(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the adapter: the stock one made three or four hops a statement (open a
    cursor, execute, fetch, close), which cost most of a small request's CPU time."""
    async with db.write() as conn:
        await conn.execute(insert(things), [{"name": f"n{i}"} for i in range(3)])
        hops = 0
        original = aiosqlite.Connection._execute

        async def counted(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal hops
            hops += 1
            return await original(self, fn, *args, **kwargs)

        monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
        assert len((await conn.execute(select(things))).all()) == 3
        await conn.execute(insert(things), [{"name": "a"}, {"name": "b"}])
        await conn.execute(update(things).values(name=things.c.name + "!"))
        assert hops == 3  # the stock adapter: 10


async def test_a_cursor_whose_statement_failed_reports_nothing_of_the_one_before(
    db: Database,
) -> None:
    """As sqlite3 at each execute: a reused cursor (the connection's PRAGMAs use one) whose
    statement failed holds no columns, rows or count of the statement before it."""
    async with db.engine.connect() as conn:

        def reuse(sync_conn):  # type: ignore[no-untyped-def]
            cursor = sync_conn.connection.dbapi_connection.cursor()
            cursor.execute("INSERT INTO things (name) VALUES ('once')")
            cursor.execute("SELECT id, name FROM things")
            assert cursor.description is not None
            with pytest.raises(Exception, match="UNIQUE"):
                cursor.execute("INSERT INTO things (name) VALUES ('once')")
            return cursor.description, cursor.rowcount, cursor.fetchall()

        assert await conn.run_sync(reuse) == (None, -1, [])
        await conn.rollback()
