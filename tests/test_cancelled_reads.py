"""A read cancelled while its statement runs ends with CancelledError, so a background loop
that catches Exception (the erasure worker, retention, checkpoints) still stops when cancelled.

`Database.read` asked the connection for `info` on the way out; where the cancellation had
left the connection invalidated, that reconnected without a greenlet and raised MissingGreenlet
over the CancelledError. The erasure worker logged it as a failed pass and slept again, and
`cdp serve`'s shutdown (and a test) waited for it forever."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

SLOW = {
    "sqlite": "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 5000000)"
    " SELECT count(*) FROM c",
    "postgresql": "SELECT pg_sleep(30)",
}


async def test_a_read_cancelled_mid_statement_ends_cancelled(platform):
    started = asyncio.Event()

    async def reader() -> None:
        async with platform.db.read() as conn:
            started.set()
            await conn.execute(text(SLOW[conn.dialect.name]))

    task = asyncio.create_task(reader())
    await started.wait()
    await asyncio.sleep(0.2)  # inside the statement
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with platform.db.read() as conn:  # and the pool still serves reads
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
