"""Tables of data subject requests (erasure) and their recorded transitions.

No personal data in plaintext: a request names its customer by profile id; the optional note,
and an officer's free-text reason for an extension or a rejection, are ciphertext under the
customer's data key, so they are destroyed with the customer's data.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, Index, Integer, LargeBinary, String, Table, Uuid

from cdp.db.metadata import metadata
from cdp.db.types import BigInt, UTCDateTime

dsr_requests = Table(
    "dsr_requests",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("kind", String(16), nullable=False),  # erasure
    Column("status", String(16), nullable=False),  # received | in_progress | completed | rejected
    Column("profile_id", Uuid, nullable=False, index=True),  # the customer, as named at receipt
    Column("identifier_kind", String(16), nullable=False),  # profile_id | email | phone | ...
    Column("jurisdiction", String(16), nullable=False),  # as named (else the customer's own)
    # of the named and the customer's own, the one whose deadline comes first (migration 0023)
    Column("deadline_jurisdiction", String(16), nullable=False),
    Column("policy_version", String(64)),  # the policy that set due_at (null before 0023)
    Column("requested_by", String(16), nullable=False),  # customer | operator
    Column("actor", String(64), nullable=False),  # the key (or "customer") that submitted it
    Column("received_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("extensions", Integer, nullable=False),
    Column("completed_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", String(64)),  # an exception type, never a message
    Column("result", JSON),  # counts of what was erased; ids only
    Column("note", LargeBinary),  # ciphertext under the customer's data key
    Column("note_owner", Uuid),
    Column("note_key_id", Integer),
    Index("ix_dsr_requests_status_received", "status", "received_at"),
)

dsr_transitions = Table(
    "dsr_transitions",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("request_id", Uuid, nullable=False, index=True),
    Column("event", String(16), nullable=False),  # created | status | extension | joined | resumed
    Column("from_status", String(16)),
    Column("to_status", String(16), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(64), nullable=False),
    # a fixed system text; for an officer's free-text reason (since migration 0017) only
    # SEALED_REASON, the reason itself being sealed below
    Column("reason", String(500), nullable=False),
    Column("due_at", UTCDateTime, nullable=False),  # the due date after this transition
    # an officer's reason: ciphertext under the data key of the request's profile (owner, key
    # id), bound to this transition's id; hashed with the transition (consent/dsr/chain.py)
    Column("reason_sealed", LargeBinary),
    Column("reason_owner", Uuid),
    Column("reason_key_id", Integer),
    # the same reason under the owner's later key (an unmerge gives the holder a new key): not
    # hashed, rewritten at each new key (consent.dsr.requests.rekey_reasons)
    Column("reason_copy", LargeBinary),
    Column("reason_copy_key_id", Integer),
    # hash chain over every transition (consent/dsr/chain.py), like the consent ledger
    Column("seq", BigInt, nullable=False, unique=True),
    Column("prev_hash", LargeBinary(32), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
)
