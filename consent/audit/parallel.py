"""The hash chain and the state check of one verification, on two cores for a large ledger.

Each costs seconds of one core at a million entries. From PARALLEL_FROM entries the chain is
recomputed in a child process while this process checks the state in its snapshot. The child
reads the ledger in a transaction of its own, up to the last seq this snapshot holds: entries
are only ever appended, so it recomputes the very entries the state check reads (one appended
meanwhile is beyond that seq and left to the next verification).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from consent.audit.findings import Findings
from consent.audit.state import check_state
from consent.chain import Verification, verify_chain
from consent.policy import Policy
from consent.tables import consent_ledger

PARALLEL_FROM = 50_000


async def chain_and_state(
    conn: AsyncConnection, policy: Policy, marks: Collection[int]
) -> tuple[Verification, Findings | None]:
    """The chain and, where it verifies, the state check (None where it does not)."""
    upto = (await conn.execute(select(func.max(consent_ledger.c.seq)))).scalar() or 0
    if upto < PARALLEL_FROM:
        chain = await verify_chain(conn, marks=marks, upto=upto)
        return chain, (await check_state(conn, policy) if chain.ok else None)
    url = conn.engine.url.render_as_string(hide_password=False)
    elsewhere = asyncio.ensure_future(_in_child(url, upto, tuple(marks)))
    try:
        state = await check_state(conn, policy)
    finally:
        chain = await elsewhere
    return chain, (state if chain.ok else None)


async def _in_child(url: str, upto: int, marks: tuple[int, ...]) -> Verification:
    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
    try:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, _verify_chain, url, upto, marks)
    finally:
        await asyncio.to_thread(pool.shutdown)


def _verify_chain(url: str, upto: int, marks: tuple[int, ...]) -> Verification:
    """In the child process: the chain up to `upto`, on a connection of its own."""
    from cdp.db.engine import Database

    async def run() -> Verification:
        db = Database(url)
        try:
            async with db.read() as conn:
                return await verify_chain(conn, marks=marks, upto=upto)
        finally:
            await db.dispose()

    return asyncio.run(run())
