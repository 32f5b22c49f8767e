"""Verification of the consent ledger against signed checkpoints.

The chain alone shows that no entry was changed, removed or reordered without recomputing the
hashes after it. A checkpoint adds: the chain at `entries` entries must end in `head_hash`, and
the checkpoint must carry a valid Ed25519 signature. So a ledger rewritten consistently from
some entry on (every later hash recomputed), or cut short, fails against any checkpoint taken
before the rewrite. Checkpoints read from a file the compliance officer keeps outside the
database are the ones an intruder with database access cannot touch.

Where the chain verifies but a checkpoint does not match, the first entry that no matching
checkpoint vouches for is reported as `first_invalid_seq` (the rewrite began at or after it,
and at or before the mismatching checkpoint's size).

Where the chain verifies, the derived consent state and the suppression list are checked
against it too (consent.audit.state): `state_mismatches` counts what disagrees, and any
mismatch fails the verification. `first_invalid_seq` keeps its meaning (the ledger itself);
where only the state disagrees it is null.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.engine import Database
from consent.audit.checkpoints import Checkpoint, time_text
from consent.audit.findings import NOT_CHECKED, Findings
from consent.audit.parallel import chain_and_state
from consent.chain import Verification, verify_chain
from consent.policy import Policy

# statuses of a checkpoint; the first three fail the verification
MISMATCH, TRUNCATED, BAD_SIGNATURE = "mismatch", "truncated", "bad_signature"
OK, UNTRUSTED_KEY, NOT_REACHED = "ok", "untrusted_key", "not_reached"
FAILING = {MISMATCH, TRUNCATED, BAD_SIGNATURE}


@dataclass(frozen=True, slots=True)
class CheckpointResult:
    checkpoint: Checkpoint
    status: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        cp = self.checkpoint
        return {
            "entries": cp.entries,
            "head_hash": cp.head_hash.hex(),
            "created_at": time_text(cp.created_at),
            "key_id": cp.key_id,
            "status": self.status,
            "ok": self.status not in FAILING,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class AuditReport:
    chain: Verification
    checkpoints: list[CheckpointResult] = field(default_factory=list)
    # the state check (consent.audit.state), where it was asked for: None when the chain does
    # not verify (nothing trustworthy to compare the state with)
    state: Findings | None = None
    state_asked: bool = False

    @property
    def failing(self) -> list[CheckpointResult]:
        return [r for r in self.checkpoints if r.status in FAILING]

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.failing and (self.state is None or self.state.ok)

    @property
    def first_invalid_seq(self) -> int | None:
        if not self.chain.ok:
            return self.chain.first_invalid_seq
        broken = [r for r in self.failing if r.status in (MISMATCH, TRUNCATED)]
        if not broken:
            return None
        first_bad = min(r.checkpoint.entries for r in broken)
        if any(r.status == TRUNCATED and r.checkpoint.entries == first_bad for r in broken):
            return self.chain.entries + 1
        vouched = [
            r.checkpoint.entries
            for r in self.checkpoints
            if r.status == OK and r.checkpoint.entries < first_bad
        ]
        return max(vouched, default=0) + 1

    @property
    def reason(self) -> str | None:
        if not self.chain.ok:
            return self.chain.reason
        failing = self.failing
        if not failing:
            return None if self.state is None or self.state.ok else self.state.summary()
        first = min(failing, key=lambda r: (r.checkpoint.entries, r.status))
        if first.status == MISMATCH:
            return (
                f"{first.detail}: an entry from seq {self.first_invalid_seq} to "
                f"{first.checkpoint.entries} was changed and the hashes after it recomputed"
            )
        return first.detail

    def to_json(self) -> dict[str, Any]:
        body = {
            "ok": self.ok,
            "entries": self.chain.entries,
            "head_hash": self.chain.head_hash,
            "first_invalid_seq": self.first_invalid_seq,
            "reason": self.reason,
            "checkpoints": {
                "checked": len(self.checkpoints),
                "failed": len(self.failing),
                "items": [r.to_json() for r in self.checkpoints],
            },
        }
        if self.state_asked:
            body["state_mismatches"] = None if self.state is None else self.state.mismatches
            body["state"] = NOT_CHECKED if self.state is None else self.state.to_json()
        return body


def judge(
    cp: Checkpoint, chain: Verification, trusted_keys: Collection[bytes] | None
) -> CheckpointResult:
    if not cp.signature_ok():
        return CheckpointResult(cp, BAD_SIGNATURE, "the checkpoint's signature does not verify")
    if cp.entries > chain.entries:
        if not chain.ok:
            return CheckpointResult(cp, NOT_REACHED, "the chain breaks before this checkpoint")
        return CheckpointResult(
            cp,
            TRUNCATED,
            f"the ledger holds {chain.entries} entries, the checkpoint vouches for {cp.entries}: "
            f"entries after seq {chain.entries} were removed",
        )
    if chain.heads.get(cp.entries) != cp.head_hash.hex():
        return CheckpointResult(
            cp,
            MISMATCH,
            f"the chain at {cp.entries} entries does not end in the hash checkpointed at "
            f"{time_text(cp.created_at)}",
        )
    if trusted_keys is not None and cp.public_key not in trusted_keys:
        return CheckpointResult(
            cp, UNTRUSTED_KEY, f"matches, but signed by key {cp.key_id}, not the configured key"
        )
    return CheckpointResult(cp, OK, "matches")


async def verify_ledger(
    conn: AsyncConnection,
    checkpoints: list[Checkpoint],
    *,
    policy: Policy | None,
    trusted_keys: Collection[bytes] | None = None,
) -> AuditReport:
    """Recompute the whole chain, judge every checkpoint against it and, given the loaded
    `policy`, check the derived state against the chain where it verifies (None: the chain and
    the checkpoints only, as the evidence bundle reports them). Run it in `snapshot`.

    `trusted_keys`: public keys whose signatures count; a checkpoint signed by another key is
    reported (`untrusted_key`) without failing the verification. None trusts every key (a
    file the compliance officer keeps).
    """
    marks = {cp.entries for cp in checkpoints}
    if policy is None:
        chain = await verify_chain(conn, marks=marks)
        return AuditReport(chain, [judge(cp, chain, trusted_keys) for cp in checkpoints])
    chain, state = await chain_and_state(conn, policy, marks)
    results = [judge(cp, chain, trusted_keys) for cp in checkpoints]
    return AuditReport(chain, results, state, state_asked=True)


@asynccontextmanager
async def snapshot(db: Database) -> AsyncIterator[AsyncConnection]:
    """A read-only transaction that sees one state of the database from start to end, so that
    writes committed during a verification cannot look like mismatches. PostgreSQL: REPEATABLE
    READ (its default, READ COMMITTED, takes a new snapshot for every statement). SQLite: any
    read transaction does (WAL mode: the snapshot of its first read); for its duration the
    connection's sorts spill to temporary files rather than memory (`temp_store`, which SQLite
    lets change only outside a transaction), so sorting the ledger by address (the state check)
    takes the same memory whatever the ledger's size."""
    if db.is_postgres:
        async with db.engine.connect() as conn:
            conn = await conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            async with conn.begin():
                yield conn
        return
    async with db.engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        before = await _pragma(driver, "PRAGMA temp_store")
        await _pragma(driver, "PRAGMA temp_store = FILE")
        try:
            async with conn.begin():
                yield conn
        finally:
            await _pragma(driver, f"PRAGMA temp_store = {int(before)}")


async def _pragma(driver: Any, sql: str) -> Any:
    async with driver.execute(sql) as cursor:
        row = await cursor.fetchone()
    return row[0] if row else None
