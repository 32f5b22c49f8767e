"""Tables of the consent ledger, its derived state, and the suppression list."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Uuid,
    text,
)

from cdp.db.metadata import metadata
from cdp.db.types import BigInt, UTCDateTime

consent_ledger = Table(
    "consent_ledger",
    metadata,
    Column("seq", BigInt, primary_key=True, autoincrement=False),
    Column("event_id", Uuid, nullable=False, unique=True),
    Column("profile_id", Uuid, index=True),
    Column("subject_kind", String(16), nullable=False),  # email | phone | profile
    Column("address_bidx", LargeBinary(32), index=True),
    Column("purpose", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # granted | withdrawn
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("source", String(64), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("method", String(32)),
    Column("wording_id", String(128)),
    Column("policy_version", String(64), nullable=False),
    Column("evidence", LargeBinary),  # ciphertext; the hash covers the ciphertext
    Column("evidence_owner", String(40)),
    Column("evidence_key_id", Integer),
    Column("effective", Boolean, nullable=False),
    Column("prev_hash", LargeBinary(32), nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    # An entry on an address: false where the request named the address, true where it reached
    # the address as one of the addresses of a customer it named otherwise (by profile id,
    # external id, another address, or every channel). NULL on a profile's own entries (push,
    # messenger) and on entries recorded before migration 0018 (not known). Hashed where set
    # (consent.chain). An unmerge treats what reached an address through the merged profile
    # as possibly the other customer's (cdp.profiles.unmerge).
    Column("via_profile", Boolean),
)

# The derived current state: one row per (subject, purpose, channel). For email, sms and phone
# the subject is the address's blind index, so consent belongs to the address, not the profile;
# for push and messenger it is the profile ("p:" + profile id).
consent_state = Table(
    "consent_state",
    metadata,
    Column("subject", LargeBinary(48), primary_key=True),
    Column("purpose", String(64), primary_key=True),
    Column("channel", String(16), primary_key=True),
    Column("profile_id", Uuid, index=True),
    Column("status", String(16), nullable=False),
    Column("since", UTCDateTime, nullable=False),
    Column("seq", BigInt, nullable=False),
    Column("source", String(64), nullable=False),
)

# The grants of a purpose by their time: what the announcing of lapses walks, from where it
# stopped up to now less the period (consent.outbox.lapses), instead of reading every grant.
Index(
    "ix_consent_state_granted_since",
    consent_state.c.purpose,
    consent_state.c.since,
    consent_state.c.subject,
    consent_state.c.channel,
    postgresql_where=text("status = 'granted'"),
    sqlite_where=text("status = 'granted'"),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("bidx", LargeBinary(48), primary_key=True),
    Column("purpose", String(64), primary_key=True),
    Column("channel", String(16), primary_key=True),  # a channel, or "*"
    Column("reason", String(32), nullable=False),
    Column("source", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

Index("ix_consent_ledger_occurred", consent_ledger.c.occurred_at)

# When an address (or external id) was erased with its customer: the completion time of the
# erasure request. What was recorded on the address up to then was the erased customer's, not
# whoever holds the address since (a reassigned phone number: consent.dsr.customer). Kept apart
# from the erasure's suppression, which a later opt-out of the address overwrites (a
# suppression keeps its latest time and reason). Nothing deletes a row.
address_erasures = Table(
    "address_erasures",
    metadata,
    Column("bidx", LargeBinary(48), primary_key=True),
    Column("at", UTCDateTime, primary_key=True),
)

# A ledger entry's evidence re-encrypted under the data key of the customer it belongs to, where
# that differs from the key it was recorded under (consent.evidence): an unmerge gives an
# address back to a customer while the evidence of a grant recorded on the merged profile is
# under the other customer's key, which that customer's erasure would destroy. The ledger entry
# itself never changes (its hash covers the original ciphertext).
consent_evidence_copies = Table(
    "consent_evidence_copies",
    metadata,
    Column("seq", BigInt, primary_key=True, autoincrement=False),
    Column("owner", String(40), primary_key=True),
    Column("key_id", Integer, nullable=False),
    Column("evidence", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_consent_evidence_copies_owner", "owner"),
)
