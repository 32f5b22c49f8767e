"""Signed checkpoints of the consent ledger (see consent/audit/checkpoints.py).

A checkpoint states "the ledger held `entries` entries whose last hash was `head_hash` at
`created_at`", signed with the audit signing key (Ed25519, separate from the master key). The
public key is stored with each checkpoint; exported copies kept outside the database are what
makes a consistent rewrite of the ledger detectable.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, LargeBinary, String, Table, Uuid

from cdp.db.metadata import metadata
from cdp.db.types import BigInt, UTCDateTime

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("entries", BigInt, nullable=False),
    Column("head_hash", LargeBinary(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("public_key", LargeBinary(32), nullable=False),
    Column("signature", LargeBinary(64), nullable=False),
)

Index("ix_audit_checkpoints_entries", audit_checkpoints.c.entries)
