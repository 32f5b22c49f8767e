"""Transient write conflicts, which a retry of the whole transaction resolves.

PostgreSQL aborts one of two transactions that wait for each other's locks (deadlock, SQLSTATE
40P01), a transaction a serializable snapshot cannot order (40001), and one that finds its shared
lock table full (53200, "out of shared memory": writers take an advisory lock per identifier,
and 60 batches of 1,000 records at once filled the default table of 6,400). The aborted
transaction changed nothing; run again, it succeeds (once the others have committed). SQLite
never reports any of them: its writers queue behind one write lock. `write_retried` runs a
write transaction again when it lost one (group commits, `cdp events import`'s chunks); a
request that does not is answered 503 (api.errors).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.availability import sqlstate

if TYPE_CHECKING:
    from cdp.db.engine import Database

R = TypeVar("R")

log = structlog.get_logger(__name__)

LOCK_TABLE_FULL = "53200"
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001", LOCK_TABLE_FULL})
RETRIES = 3  # runs of a transaction that lost a deadlock, after the first


def is_transient_conflict(exc: BaseException) -> bool:
    """True for a deadlock, a serialization failure or a full lock table, as SQLAlchemy raises
    it (the driver's error in `orig`) or as asyncpg does."""
    return sqlstate(exc) in TRANSIENT_SQLSTATES


def is_lock_table_full(exc: BaseException) -> bool:
    """PostgreSQL's shared lock table is full: the server needs a larger
    `max_locks_per_transaction` for the writes it is given at once."""
    return sqlstate(exc) == LOCK_TABLE_FULL


async def write_retried(
    db: Database,
    work: Callable[[AsyncConnection], Awaitable[R]],
    *,
    name: str,
    urgent: bool = False,
) -> R:
    """`work` in a write transaction, run again (up to RETRIES times, after a short random
    pause) when PostgreSQL aborted it to break a deadlock. `work` must make nothing outside
    the transaction that a second run would make twice."""
    for attempt in range(RETRIES + 1):
        try:
            async with db.write(urgent=urgent) as conn:
                return await work(conn)
        except Exception as exc:
            if attempt == RETRIES or not is_transient_conflict(exc):
                raise
            log.info("write_conflict_retried", name=name, attempt=attempt + 1)
            await asyncio.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
    raise AssertionError("unreachable")
