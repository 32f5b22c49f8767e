"""The hash chain over the consent ledger: canonical encoding, hashing, verification.

hash = SHA-256(prev_hash || canonical JSON of the entry's fields). The evidence is hashed as
ciphertext, so destroying a data key (erasure) leaves every hash valid.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from consent.tables import consent_ledger

GENESIS = bytes(32)
HASHED_FIELDS = (
    "seq",
    "event_id",
    "profile_id",
    "subject_kind",
    "address_bidx",
    "purpose",
    "channel",
    "status",
    "occurred_at",
    "recorded_at",
    "source",
    "actor",
    "method",
    "wording_id",
    "policy_version",
    "evidence",
    "evidence_owner",
    "evidence_key_id",
    "effective",
)
_encoder = msgspec.json.Encoder()


def _canonical(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def entry_hash(prev_hash: bytes, row: Any) -> bytes:
    get = row.__getitem__ if isinstance(row, dict) else lambda k: getattr(row, k)
    payload = _encoder.encode([_canonical(get(name)) for name in HASHED_FIELDS])
    return hashlib.sha256(prev_hash + payload).digest()


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    entries: int
    head_hash: str | None
    first_invalid_seq: int | None
    reason: str | None = None


async def verify_chain(conn: AsyncConnection, batch: int = 20_000) -> Verification:
    """Recompute the chain in seq order. Detects edits, deletions, insertions and reordering."""
    prev = GENESIS
    expected_seq = 1
    count = 0
    cols = [consent_ledger.c[name] for name in HASHED_FIELDS] + [
        consent_ledger.c.prev_hash,
        consent_ledger.c.hash,
    ]
    last_seq = 0
    while True:
        rows = (
            await conn.execute(
                select(*cols)
                .where(consent_ledger.c.seq > last_seq)
                .order_by(consent_ledger.c.seq)
                .limit(batch)
            )
        ).all()
        if not rows:
            break
        for row in rows:
            if row.seq != expected_seq:
                return Verification(False, count, prev.hex(), expected_seq, "missing entry")
            if row.prev_hash != prev:
                return Verification(False, count, prev.hex(), row.seq, "broken link")
            if entry_hash(prev, row) != row.hash:
                return Verification(False, count, prev.hex(), row.seq, "hash mismatch")
            prev = row.hash
            expected_seq += 1
            count += 1
        last_seq = rows[-1].seq
    return Verification(True, count, prev.hex() if count else None, None)
