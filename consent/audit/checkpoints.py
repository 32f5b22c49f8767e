"""Signed checkpoints of the consent ledger: create, list, export to a file, read back.

A checkpoint is only written for a chain that verifies: the entries since the previous
checkpoint are recomputed (the whole chain when there is none, or when the previous one is not
signed by the configured key), so a checkpoint never blesses a tampered ledger.

The export file holds one JSON object per line; exporting adds the checkpoints the file lacks
and never removes a line, so a file kept outside the database keeps vouching for history that
someone later rewrote or deleted inside it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.cancellation import run_every
from cdp.ids import new_id, utcnow
from cdp.platform import Platform
from consent.audit.signing import AuditSigner, key_id_of, signature_valid, signer_for
from consent.audit_tables import audit_checkpoints
from consent.chain import GENESIS, Verification, verify_chain

log = structlog.get_logger(__name__)
STATEMENT_TYPE = "cdp-consent-ledger-checkpoint/v1"


class ChainBrokenError(Exception):
    """The ledger does not verify, so no checkpoint is written."""

    def __init__(self, verification: Verification) -> None:
        super().__init__(
            f"the consent ledger does not verify at seq {verification.first_invalid_seq}: "
            f"{verification.reason}"
        )
        self.verification = verification


class CheckpointFileError(ValueError):
    """A line of a checkpoint file cannot be read."""


def time_text(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    id: uuid.UUID
    entries: int
    head_hash: bytes
    created_at: datetime
    key_id: str
    public_key: bytes
    signature: bytes

    def statement(self) -> str:
        """The exact text that is signed (UTF-8)."""
        return (
            f"{STATEMENT_TYPE}\nentries={self.entries}\nhead_hash={self.head_hash.hex()}\n"
            f"created_at={time_text(self.created_at)}\n"
        )

    def signature_ok(self) -> bool:
        return key_id_of(self.public_key) == self.key_id and signature_valid(
            self.public_key, self.signature, self.statement().encode()
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "entries": self.entries,
            "head_hash": self.head_hash.hex(),
            "created_at": time_text(self.created_at),
            "key_id": self.key_id,
            "public_key": base64.b64encode(self.public_key).decode(),
            "signature": base64.b64encode(self.signature).decode(),
            "algorithm": "Ed25519",
            "statement": self.statement(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Checkpoint:
        try:
            cp = cls(
                id=uuid.UUID(str(data["id"])),
                entries=int(data["entries"]),
                head_hash=bytes.fromhex(str(data["head_hash"])),
                created_at=datetime.fromisoformat(str(data["created_at"]).replace("Z", "+00:00")),
                key_id=str(data["key_id"]),
                public_key=base64.b64decode(str(data["public_key"]), validate=True),
                signature=base64.b64decode(str(data["signature"]), validate=True),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise CheckpointFileError(f"not a checkpoint: {type(exc).__name__}") from exc
        if len(cp.head_hash) != 32 or cp.entries < 0 or cp.created_at.tzinfo is None:
            raise CheckpointFileError("not a checkpoint: bad entries, head_hash or created_at")
        return cp


def sign_checkpoint(signer: AuditSigner, entries: int, head: bytes, at: datetime) -> Checkpoint:
    unsigned = Checkpoint(new_id(), entries, head, at, signer.key_id, signer.public_key, b"")
    return replace(unsigned, signature=signer.sign(unsigned.statement().encode()))


def _from_row(row: Any) -> Checkpoint:
    return Checkpoint(
        id=row.id,
        entries=row.entries,
        head_hash=row.head_hash,
        created_at=row.created_at,
        key_id=row.key_id,
        public_key=row.public_key,
        signature=row.signature,
    )


async def list_checkpoints(conn: AsyncConnection) -> list[Checkpoint]:
    """Every checkpoint stored in the database, oldest first."""
    rows = await conn.execute(
        select(audit_checkpoints).order_by(
            audit_checkpoints.c.entries, audit_checkpoints.c.created_at
        )
    )
    return [_from_row(r) for r in rows]


async def latest_trusted(conn: AsyncConnection, signer: AuditSigner) -> Checkpoint | None:
    """The newest stored checkpoint that the configured key signed, with a valid signature."""
    rows = await conn.execute(
        select(audit_checkpoints)
        .where(audit_checkpoints.c.public_key == signer.public_key)
        .order_by(audit_checkpoints.c.entries.desc(), audit_checkpoints.c.created_at.desc())
        .limit(20)
    )
    for row in rows:
        cp = _from_row(row)
        if cp.signature_ok():
            return cp
    return None


async def create_checkpoint(p: Platform, *, only_if_changed: bool = False) -> Checkpoint | None:
    """Verify the entries since the last checkpoint, then sign and store the head.

    Raises ChainBrokenError when the ledger does not verify. With `only_if_changed`, returns
    None (and writes nothing) when the ledger has not grown since the last checkpoint.
    """
    signer = signer_for(p.settings)
    async with p.db.read() as conn:
        last = await latest_trusted(conn, signer)
        after = (last.entries, last.head_hash) if last is not None else None
        result = await verify_chain(conn, after=after)
    if not result.ok:
        log.error(
            "audit_chain_broken", first_invalid_seq=result.first_invalid_seq, reason=result.reason
        )
        raise ChainBrokenError(result)
    head = bytes.fromhex(result.head_hash) if result.head_hash else GENESIS
    if only_if_changed and last is not None and last.entries == result.entries:
        return None
    cp = sign_checkpoint(signer, result.entries, head, utcnow())
    async with p.db.write() as conn:
        await conn.execute(insert(audit_checkpoints).values(**asdict(cp)))
    log.info("audit_checkpoint", entries=cp.entries, key_id=cp.key_id)
    return cp


async def checkpoint_periodically(p: Platform, interval_s: float) -> None:
    """Checkpoint the ledger every `interval_s` seconds when it has grown; runs until cancelled.

    A failure (database down, broken chain) is logged and retried at the next interval.
    """
    await run_every(
        interval_s,
        lambda: create_checkpoint(p, only_if_changed=True),
        failed="audit_checkpoint_failed",
    )


def read_checkpoint_file(path: Path) -> list[Checkpoint]:
    """Checkpoints of an exported file (JSON lines); raises CheckpointFileError naming the line."""
    out: list[Checkpoint] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise CheckpointFileError("not a JSON object")
            out.append(Checkpoint.from_json(data))
        except (json.JSONDecodeError, CheckpointFileError) as exc:
            raise CheckpointFileError(f"{path}, line {number}: {exc}") from None
    return out


async def export_checkpoints(p: Platform, path: Path) -> tuple[int, int]:
    """Append to `path` the stored checkpoints it lacks; returns (added, skipped).

    Only checkpoints signed by the configured key with a valid signature are exported; others
    (skipped) may have been planted in the database.
    """
    signer = signer_for(p.settings)
    known = await asyncio.to_thread(_known_signatures, path)
    async with p.db.read() as conn:
        stored = await list_checkpoints(conn)
    fresh = [cp for cp in stored if cp.signature not in known]
    good = [cp for cp in fresh if cp.public_key == signer.public_key and cp.signature_ok()]
    if good:
        await asyncio.to_thread(_append, path, good)
    return len(good), len(fresh) - len(good)


def _known_signatures(path: Path) -> set[bytes]:
    return {cp.signature for cp in read_checkpoint_file(path)} if path.exists() else set()


def _append(path: Path, checkpoints: list[Checkpoint]) -> None:
    with path.open("a+b") as fh:
        if fh.tell() > 0:
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":  # a hand-edited file without a final newline
                fh.write(b"\n")
        for cp in checkpoints:
            line = json.dumps(cp.to_json(), ensure_ascii=False, sort_keys=True) + "\n"
            fh.write(line.encode())
