"""The hash chain over data-subject-request transitions.

Every transition (created, status change, extension, joined, resumed) is chained exactly like
the consent ledger: hash = SHA-256(prev_hash || canonical JSON of its fields), appended under a
lock so there are no gaps, so a rewritten request history is detected by `GET /v1/audit/verify`
and `cdp audit verify`.

An officer's free-text reason (an extension's, a rejection's) may name the customer, so it is
stored encrypted under the customer's data key (consent.dsr.requests) and the hash covers its
ciphertext, owner and key id (`SEALED`), as the consent ledger's covers its evidence: after the
customer's erasure destroys the key, the reason is unreadable and the chain still verifies.
A transition without a sealed reason (a fixed system text, and every transition recorded before
migration 0017) is hashed over `HASHED` alone, as it always was.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from consent.chain import GENESIS, Verification, chain_head, entry_hash
from consent.dsr_tables import dsr_transitions

HASHED = (
    "seq",
    "id",
    "request_id",
    "event",
    "from_status",
    "to_status",
    "at",
    "actor",
    "reason",
    "due_at",
)
# a transition whose reason is sealed: its ciphertext, owner and key id are hashed too (the copy
# an unmerge keeps under the owner's next key, `reason_copy`, is not: it changes)
SEALED = (*HASHED, "reason_sealed", "reason_owner", "reason_key_id")
DSR_CHAIN_LOCK = 5_147_001_002


def _get(row: Any, name: str) -> Any:
    return row.get(name) if isinstance(row, dict) else getattr(row, name, None)


def is_sealed(row: Any) -> bool:
    return any(_get(row, name) is not None for name in SEALED[len(HASHED) :])


def transition_hash(prev: bytes, row: Any) -> bytes:
    return entry_hash(prev, row, SEALED if is_sealed(row) else HASHED)


async def append_transition(conn: AsyncConnection, values: dict[str, Any]) -> None:
    seq, prev = await chain_head(conn, dsr_transitions, DSR_CHAIN_LOCK)
    row = {**values, "seq": seq + 1, "prev_hash": prev}
    row["hash"] = transition_hash(prev, row)
    await conn.execute(insert(dsr_transitions).values(**row))


async def verify_transitions(conn: AsyncConnection) -> Verification:
    t = dsr_transitions.c
    prev, expected, count = GENESIS, 1, 0
    rows = await conn.execute(select(dsr_transitions).order_by(t.seq))
    for row in rows:
        if row.seq != expected:
            return Verification(False, count, prev.hex(), expected, "missing transition")
        if row.prev_hash != prev:
            return Verification(False, count, prev.hex(), row.seq, "broken link")
        if transition_hash(prev, row) != row.hash:
            return Verification(False, count, prev.hex(), row.seq, "hash mismatch")
        prev, expected, count = row.hash, expected + 1, count + 1
    return Verification(True, count, prev.hex() if count else None, None)
