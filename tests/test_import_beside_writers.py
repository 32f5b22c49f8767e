"""SQLite: `cdp import` lets the writers of other processes in between its chunks
(cdp.db.writer_turnstile). Before, it committed about once a second and began its next
transaction at once, and a writer of another process (an opt-out answered by `cdp serve`)
found SQLite's one write lock taken nearly every time it looked: up to 7.5 s for a transaction
of nothing during an import of 60,000 rows. bench/optout_latency.py --load import measures it.

Two `WriterTurnstile`s, or two `Database`s, on one file stand for two processes: flock locks
belong to an open file, not to a process."""

from __future__ import annotations

import asyncio
import csv

import pytest
from sqlalchemy import func, select

import cdp.importer as importer
from cdp.db.engine import Database
from cdp.db.tables import profiles
from cdp.db.writer_turnstile import WriterTurnstile
from cdp.importer import CHUNK, run_import


def sqlite_only(backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's one write lock; PostgreSQL's writers do not take turns")


async def test_a_bulk_load_sees_a_writer_waiting_and_waits_for_it(tmp_path):
    path = str(tmp_path / "cdp.db")
    service, bulk = WriterTurnstile(path), WriterTurnstile(path)
    assert not bulk.writers_waiting()
    await service.enter()  # an opt-out waiting for the write lock, or writing
    assert bulk.writers_waiting()
    going = asyncio.create_task(bulk.let_writers_go())
    await asyncio.sleep(0.05)
    assert not going.done()  # the bulk load waits before its next transaction
    service.leave()
    await asyncio.wait_for(going, 5)
    assert not bulk.writers_waiting()
    service.close()
    bulk.close()


async def test_a_writer_that_never_ends_delays_a_bulk_load_but_does_not_stop_it(tmp_path):
    path = str(tmp_path / "cdp.db")
    service, bulk = WriterTurnstile(path), WriterTurnstile(path)
    await service.enter()
    await asyncio.wait_for(bulk.let_writers_go(), 10)  # YIELD_LIMIT, then it goes on
    service.close()
    bulk.close()


async def test_a_writer_of_another_process_gets_in_within_a_chunk_of_an_import(
    backend, platform, tmp_path, monkeypatch
):
    """A write transaction of another process (here a second `Database` on the file) asked
    for while an import holds its transaction open gets in once the chunk being stored is:
    it sees the import's rows up to that chunk, not the whole file. Before, it waited for the
    import's transaction to end (here made long: it ends only with the statistics refresh at
    8,000 rows, or with the file)."""
    sqlite_only(backend)
    monkeypatch.setattr(importer, "TXN_SECONDS", 600.0)
    rows = 8 * CHUNK
    data = tmp_path / "crm.csv"
    with data.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["email", "first_name"])
        for i in range(rows):
            w.writerow([f"beside{i}@example.com", "Анна"])
    other = Database(platform.db.url)
    mid_transaction = asyncio.Event()

    def progress(done: int) -> None:
        if done == 5 * CHUNK:  # committed at 4,000 (statistics); the fifth chunk is not
            mid_transaction.set()

    async def write_beside() -> int:
        await mid_transaction.wait()
        async with other.write() as conn:
            return (await conn.execute(select(func.count()).select_from(profiles))).scalar_one()

    try:
        seen, summary = await asyncio.gather(
            write_beside(), run_import(platform, data, "crm", workers=0, on_progress=progress)
        )
    finally:
        await other.dispose()
    assert summary.created == rows
    assert 5 * CHUNK <= seen <= 6 * CHUNK, seen
