"""Transient write conflicts, which a retry of the whole transaction resolves.

PostgreSQL aborts one of two transactions that wait for each other's locks (deadlock, SQLSTATE
40P01) and a transaction a serializable snapshot cannot order (40001). The aborted transaction
changed nothing; run again, it succeeds. SQLite never reports either: its writers queue behind
one write lock.
"""

from __future__ import annotations

TRANSIENT_SQLSTATES = frozenset({"40P01", "40001"})


def is_transient_conflict(exc: BaseException) -> bool:
    """True for a deadlock or serialization failure, as SQLAlchemy raises it (the driver's
    error in `orig`) or as asyncpg does."""
    for err in (exc, getattr(exc, "orig", None)):
        if getattr(err, "sqlstate", None) in TRANSIENT_SQLSTATES:
            return True
    return False
