"""The hash chain and the state check of one verification, on two cores for a large ledger.

Each costs seconds of one core at a million entries. From PARALLEL_FROM entries a child process
recomputes the chain while this process checks the state. The child reads the ledger in a
transaction of its own, up to the last seq this snapshot holds: entries are only ever appended,
so it recomputes the very entries the state check reads (one appended meanwhile is beyond that
seq, left to the next verification). On PostgreSQL the child also checks the profile-keyed
state, in this transaction's snapshot (pg_export_snapshot), so the two processes share the work
more evenly; SQLite cannot share a snapshot between connections, so all of the state is checked
here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from consent.audit.findings import Findings
from consent.audit.rows import export_snapshot, imported_snapshot
from consent.audit.state import check_addresses, check_profiles, check_state
from consent.chain import Verification, verify_chain
from consent.policy import Policy
from consent.tables import consent_ledger

PARALLEL_FROM = 200_000  # below it, starting the child costs more than it saves


async def chain_and_state(
    conn: AsyncConnection, policy: Policy, marks: Collection[int]
) -> tuple[Verification, Findings | None]:
    """The chain and, where it verifies, the state check (None where it does not)."""
    upto = (await conn.execute(select(func.max(consent_ledger.c.seq)))).scalar() or 0
    if upto < PARALLEL_FROM:
        chain = await verify_chain(conn, marks=marks, upto=upto)
        return chain, (await check_state(conn, policy) if chain.ok else None)
    url = conn.engine.url.render_as_string(hide_password=False)
    shared = await export_snapshot(conn) if conn.dialect.name == "postgresql" else None
    child = asyncio.ensure_future(_in_child(url, upto, tuple(marks), policy, shared))
    found = Findings()
    try:
        if shared is None:
            found = await check_state(conn, policy)
        else:
            await check_addresses(conn, policy, found)
    finally:
        chain, theirs = await child  # this transaction (and its snapshot) outlives the child
    if theirs is not None:
        found.merge(theirs)
    return chain, (found if chain.ok else None)


async def _in_child(
    url: str, upto: int, marks: tuple[int, ...], policy: Policy, shared: str | None
) -> tuple[Verification, Findings | None]:
    pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
    try:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, _child, url, upto, marks, policy, shared)
    finally:
        await asyncio.to_thread(pool.shutdown)


def _child(
    url: str, upto: int, marks: tuple[int, ...], policy: Policy, shared: str | None
) -> tuple[Verification, Findings | None]:
    """In the child process: the profile-keyed state in the `shared` snapshot (PostgreSQL),
    then the chain up to `upto`, on connections of its own."""
    from cdp.db.engine import Database

    async def run() -> tuple[Verification, Findings | None]:
        db = Database(url)
        try:
            found = None
            if shared is not None:
                found = Findings()
                async with imported_snapshot(db.engine, shared) as conn:
                    await check_profiles(conn, policy, found)
            async with db.read() as conn:
                return await verify_chain(conn, marks=marks, upto=upto), found
        finally:
            await db.dispose()

    return asyncio.run(run())
