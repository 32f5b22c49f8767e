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

from sqlalchemy import text

from cdp.db.engine import lock_key
from cdp.events_import import run_event_import
from cdp.profiles.locks import lock_profiles
from tests.test_erasure_races import waiting_for_a_lock

ANNA = "anna.race@example.com"


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


async def test_an_import_chunk_that_loses_a_deadlock_is_run_again_and_the_import_goes_on(
    client, keys, platform, tmp_path
):
    """A chunk holds its addresses' locks, then waits for its customers' profiles. A writer
    that holds one of those profiles and then asks for one of the addresses (an erasure
    whose customer gained an address meanwhile locks it after the profiles; a writer whose
    customer was merged away locks the survivor after the others) closes a cycle, and
    PostgreSQL aborts one of the two. The import stopped there ("Import stopped
    (DBAPIError)"), hours into a large file, for a chunk that a second run stores at once."""
    if not platform.db.is_postgres:
        return
    pid = await customer(client, keys, ANNA)
    path = orders(tmp_path, ("o-1", ANNA, "100.00"), ("o-2", ANNA, "50.00"))
    async with platform.db.write() as other:
        await other.execute(text("SET LOCAL deadlock_timeout = '10s'"))  # the chunk loses
        await lock_profiles(other, [pid])  # a writer holds the customer's profile...
        task = asyncio.ensure_future(run_event_import(platform, path, "shop"))
        for _ in range(2000):  # ...while the chunk, holding the address, waits for it
            if task.done() or await waiting_for_a_lock(platform):
                break
            await asyncio.sleep(0.005)
        address = lock_key(platform.keys.indexer.email(ANNA))
        await other.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": address})
    summary = await task
    assert (summary.recorded, summary.repeated, summary.rejected_rows) == (2, 0, 0)
    assert await stats_of(client, keys, ANNA) == (2, "150.00")
