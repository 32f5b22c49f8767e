"""The batched event write path (`cdp.events.store_events`) racing other writers on PostgreSQL
(SQLite runs one write transaction at a time, so these tests have nothing to race there).

`cdp events import` stores chunks of 500 events, each in one transaction holding the locks of
its events, addresses and customers for the whole chunk, while the service goes on writing
to the same customers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy import text

from cdp.db.engine import lock_key
from cdp.events_import import run_event_import
from cdp.profiles.locks import lock_profiles
from tests.test_erasure_races import waiting_for_a_lock

ANNA = "anna.race@example.com"
ORDER = {  # Anna's order of 100.00 through POST /v1/events
    "source": "shop",
    "event_id": "o-1",
    "type": "purchase",
    "occurred_at": "2026-11-01T10:00:00Z",
    "email": ANNA,
    "amount": "100.00",
    "currency": "RUB",
}


async def customer(client, keys, email: str) -> uuid.UUID:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/profiles", json={"source": "crm", "email": email}, headers=keys["ingest"]
    )
    assert r.status_code == 201, r.text
    return uuid.UUID(r.json()["profile_id"])


def orders(tmp_path, *rows: tuple[str, str, str]):  # type: ignore[no-untyped-def]
    """An NDJSON order history: (event id, email, amount) per purchase."""
    path = tmp_path / "orders.ndjson"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "event_id": eid,
                    "type": "purchase",
                    "occurred_at": "2026-11-01T10:00:00Z",
                    "email": email,
                    "amount": amount,
                    "currency": "RUB",
                }
            )
            + "\n"
            for eid, email, amount in rows
        ),
        encoding="utf-8",
    )
    return path


async def stats_of(client, keys, email: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    r = await client.get("/v1/profiles", params={"email": email}, headers=keys["admin"])
    assert r.status_code == 200, r.text
    s = r.json()["stats"]
    return s["orders_count"], s["total_spent"]


async def deadlocked(platform, pid: uuid.UUID, email: str, start: Callable[[], Awaitable]):  # type: ignore[no-untyped-def]
    """Run `start()` (a write that locks the address `email`, then the profile `pid`) into a
    deadlock with a writer that holds the profile, then asks for the address (an erasure
    whose customer gained an address meanwhile locks it after the profiles; a writer whose
    customer was merged away locks the survivor after the others). That writer waits longer
    before it looks for deadlocks, so PostgreSQL aborts the other one."""
    async with platform.db.write() as other:
        await other.execute(text("SET LOCAL deadlock_timeout = '10s'"))
        await lock_profiles(other, [pid])
        task = asyncio.ensure_future(start())
        for _ in range(2000):  # until the write, holding the address, waits for the profile
            if task.done() or await waiting_for_a_lock(platform):
                break
            await asyncio.sleep(0.005)
        address = lock_key(platform.keys.indexer.email(email))
        await other.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": address})
    return await task


async def test_an_import_chunk_that_loses_a_deadlock_is_run_again_and_the_import_goes_on(
    client, keys, platform, tmp_path
):
    """The import stopped there ("Import stopped (DBAPIError)"), hours into a large file,
    for a chunk that a second run stores at once."""
    if not platform.db.is_postgres:
        return
    pid = await customer(client, keys, ANNA)
    path = orders(tmp_path, ("o-1", ANNA, "100.00"), ("o-2", ANNA, "50.00"))
    summary = await deadlocked(
        platform, pid, ANNA, lambda: run_event_import(platform, path, "shop")
    )
    assert (summary.recorded, summary.repeated, summary.rejected_rows) == (2, 0, 0)
    assert await stats_of(client, keys, ANNA) == (2, "150.00")


async def test_an_event_that_loses_a_deadlock_is_run_again_and_answered(client, keys, platform):
    """It was a 503 the shop had to send again, while profile writes and opt-outs losing the
    same deadlock are run again; an event is idempotent, its transaction all it writes."""
    if not platform.db.is_postgres:
        return
    pid = await customer(client, keys, ANNA)
    r = await deadlocked(
        platform,
        pid,
        ANNA,
        lambda: client.post("/v1/events", json=ORDER, headers=keys["ingest"]),
    )
    assert r.status_code == 201, r.text
    assert r.json()["profile_id"] == str(pid)
    assert await stats_of(client, keys, ANNA) == (1, "100.00")


async def test_an_event_recorded_before_sealing_is_recognised_while_cdp_events_seal_runs(
    client, keys, platform
):
    """A batch looks its events up by sealed key, then by the plain id of rows recorded
    before sealing (migration 0012), in two statements. `cdp events seal` committing between
    the two moved a row from where the second looks to where the first had looked: the event
    was taken for new and its insert broke the unique key, a 500 (an import stopped there).
    Here the seal runs, for real, right after the batch's first look-up, whichever it is."""
    if not platform.db.is_postgres:
        return
    from sqlalchemy import event as sa_event
    from sqlalchemy import update
    from sqlalchemy.util import await_only

    from cdp.db.tables import events
    from cdp.event_ids import event_key, seal_plain_ids

    pid = await customer(client, keys, ANNA)
    r = await client.post("/v1/events", json=ORDER, headers=keys["ingest"])
    assert r.status_code == 201, r.text
    async with platform.db.write() as conn:  # as a release before 0012 stored it
        await conn.execute(
            update(events)
            .where(events.c.event_key == event_key(platform.keys.indexer, "shop", "o-1"))
            .values(event_id="o-1", event_key=None, event_ref=None, key_id=None)
        )
    sealed: list[int] = []

    def seal_now(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        looks_up = "event_key IN" in statement or "event_id IN" in statement
        if not sealed and "FROM events" in statement and looks_up:  # the first look-up
            sealed.append(await_only(seal_plain_ids(platform.db, platform.keys)))

    engine = platform.db.engine.sync_engine
    sa_event.listen(engine, "after_cursor_execute", seal_now)
    try:
        r = await client.post("/v1/events", json=ORDER, headers=keys["ingest"])
    finally:
        sa_event.remove(engine, "after_cursor_execute", seal_now)
    assert sealed == [1]  # the seal ran in between
    assert r.status_code == 200, r.text
    assert r.json()["profile_id"] == str(pid)
    assert await stats_of(client, keys, ANNA) == (1, "100.00")
