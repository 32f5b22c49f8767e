"""An opt-out is honoured at once (DESIGN.md), also while clients post batches of records: on
SQLite its write goes ahead of the batches queued before it (cdp.db.write_lock), and a process
works on two batches at a time (cdp.platform.BATCH_LANES), so the others queue without taking
CPU, connections or PostgreSQL's shared lock table. bench/optout_latency.py measures it."""

from __future__ import annotations

import asyncio

import pytest

from cdp.db.tables import profiles
from cdp.db.write_lock import WriteLock
from consent.tables import suppressions
from tests.helpers import count, until


async def test_urgent_waiters_are_let_in_before_ordinary_ones_each_in_arrival_order():
    lock = WriteLock()
    order: list[str] = []
    await lock.acquire()

    async def take(name: str, urgent: bool) -> None:
        await lock.acquire(urgent=urgent)
        order.append(name)
        await asyncio.sleep(0)
        lock.release()

    tasks = []
    for name, urgent in [("a", False), ("b", False), ("u1", True), ("c", False), ("u2", True)]:
        tasks.append(asyncio.create_task(take(name, urgent)))
        await asyncio.sleep(0)
    assert (lock.waiting(urgent=True), lock.waiting()) == (2, 3)
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["u1", "u2", "a", "b", "c"]
    await lock.acquire()  # free again: taken at once
    lock.release()


async def test_a_waiter_cancelled_before_or_after_its_turn_does_not_keep_the_lock():
    lock = WriteLock()
    await lock.acquire()
    gone = asyncio.create_task(lock.acquire(urgent=True))
    handed = asyncio.create_task(lock.acquire())
    last = asyncio.create_task(lock.acquire())
    await asyncio.sleep(0)
    gone.cancel()  # still waiting: skipped
    await asyncio.sleep(0)
    lock.release()  # handed to `handed`, which is cancelled before it runs: it passes it on
    handed.cancel()
    await asyncio.wait_for(last, 5)
    assert gone.cancelled() and handed.cancelled()
    lock.release()


async def test_an_opt_out_is_stored_before_the_batches_queued_ahead_of_it(
    backend, client, keys, platform
):
    """A busy writer (here the test) holds SQLite's one write lock while two batches of
    records and then an opt-out queue for it: the opt-out is stored and answered while both
    batches still wait. Before, it waited for both."""
    if backend != "sqlite":
        pytest.skip("SQLite's write lock; PostgreSQL writers do not queue on one")
    lock = platform.db._write_lock
    records = [{"source": "shop", "email": f"q{i}@example.com"} for i in range(200)]
    await lock.acquire()
    batches = [
        asyncio.create_task(
            client.post("/v1/profiles/batch", json={"records": records}, headers=keys["ingest"])
        )
        for _ in range(2)
    ]
    try:
        # each in a lane of its own, validated
        await until(lambda: lock.waiting() == 2, "the batches queued")
        opting = asyncio.create_task(
            client.post(
                "/v1/opt-outs",
                json={"source": "esp", "email": "q7@example.com"},
                headers=keys["ingest"],
            )
        )
        await until(lambda: lock.waiting(urgent=True) == 1, "the opt-out queued")
        lock.release()  # to the opt-out; the test takes it back next, ahead of the batches
        await lock.acquire(urgent=True)
        try:
            r = await asyncio.wait_for(opting, 30)
            assert r.status_code == 200, r.text
            assert await count(platform, suppressions) == 1
            assert await count(platform, profiles) == 0
            assert lock.waiting() == 2 and not any(b.done() for b in batches)
        finally:
            lock.release()
        for b in batches:
            assert (await b).status_code == 200
        assert await count(platform, profiles) == 200
    finally:
        for b in batches:
            if not b.done():
                b.cancel()
        await asyncio.gather(*batches, return_exceptions=True)


async def test_many_batches_at_once_are_all_stored(backend, client, keys, platform):
    """Twelve clients posting a batch of 1,000 new customers at once. On PostgreSQL each batch's
    transaction takes an advisory lock per identifier (2,000 here) in the shared lock table
    (6,400 entries by default): with every batch at work at once most were answered 503."""
    bodies = [
        {
            "records": [
                {
                    "source": "shop",
                    "email": f"m{c}.{i}@example.com",
                    "phone": f"+7926{c:02d}{i:05d}",
                }
                for i in range(1000)
            ]
        }
        for c in range(12)
    ]
    answers = await asyncio.gather(
        *(client.post("/v1/profiles/batch", json=b, headers=keys["ingest"]) for b in bodies)
    )
    assert [r.status_code for r in answers] == [200] * 12
    assert await count(platform, profiles) == 12_000
