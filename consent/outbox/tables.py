"""Tables of webhook subscriptions, the outbox, and deliveries with their attempts.

The outbox holds ids and blind indexes, never an address in plaintext: where a subscription
may see addresses, they are decrypted from the identity at delivery time, or, for an opt-out
of an address no customer held, from `address_sealed` (consent.outbox.sealed).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
    Uuid,
    text,
)

from cdp.db.metadata import metadata
from cdp.db.types import BigInt, UTCDateTime

webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("url", String(2048), nullable=False),
    Column("kinds", JSON, nullable=False),
    Column("include_address", Boolean, nullable=False),
    Column("description", String(200)),
    Column("secret", LargeBinary, nullable=False),  # ciphertext under the system key
    # the secret replaced by a rotation, signing too until `previous_secret_until`
    Column("previous_secret", LargeBinary),  # ciphertext under the system key
    Column("previous_secret_until", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("deleted_at", UTCDateTime),
)

outbox_events = Table(
    "outbox_events",
    metadata,
    Column("seq", BigInt, primary_key=True, autoincrement=True),
    Column("id", Uuid, nullable=False, unique=True),
    Column("kind", String(32), nullable=False),
    # Deliveries of one subscription with the same key go out in seq order: the address's
    # blind index, else the profile subject ("p:" + profile id).
    Column("order_key", LargeBinary(48), nullable=False),
    Column("profile_id", Uuid),
    # profile.merged / profile.unmerged: the profile merged into (split out of) `profile_id`
    Column("absorbed_profile_id", Uuid),
    Column("address_kind", String(16)),  # email | phone | profile | external_id (erasure)
    Column("address_bidx", LargeBinary(32)),
    # an opt-out's address no customer held: encrypted under the system key until sent
    Column("address_sealed", LargeBinary),
    Column("purpose", String(64)),
    Column("channel", String(16)),
    Column("source", String(64)),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("fanned_out", Boolean, nullable=False),
    Column("streamed_at", UTCDateTime),
)

# How far the announcing of consent lapses has come, per jurisdiction and purpose with a
# validity period (consent.outbox.lapses): the grants whose consent_state row was set by a ledger
# entry up to `ledger_seq` and whose key (since, subject, channel) is at most this row's have
# been dealt with (announced as `consent.lapsed`, or passed over as not lapsing there).
lapse_watermarks = Table(
    "lapse_watermarks",
    metadata,
    Column("jurisdiction", String(16), primary_key=True),
    Column("purpose", String(64), primary_key=True),
    Column("ledger_seq", BigInt, nullable=False),
    Column("since", UTCDateTime, nullable=False),
    Column("subject", LargeBinary(48), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# The grants whose lapse has been announced, by the ledger entry that made them (a
# consent_state row's `seq`): each is announced once, whatever moves its customer makes after.
lapses_announced = Table(
    "lapses_announced",
    metadata,
    Column("seq", BigInt, primary_key=True, autoincrement=False),
)

# Customers whose grants may have lapsed under other rules since they were last looked at:
# their jurisdiction changed, or addresses (or profile-keyed consent) came to them or went back
# in a merge or an unmerge. The next lapse pass reads them and deletes them.
lapse_moves = Table(
    "lapse_moves",
    metadata,
    Column("seq", BigInt, primary_key=True, autoincrement=True),
    Column("profile_id", Uuid, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("subscription_id", Uuid, nullable=False),
    Column("event_seq", BigInt, nullable=False),
    Column("event_id", Uuid, nullable=False),
    Column("order_key", LargeBinary(48), nullable=False),
    Column("status", String(16), nullable=False),  # pending | delivered | dead | cancelled
    Column("attempts", Integer, nullable=False),  # in the current round (replay resets)
    Column("total_attempts", Integer, nullable=False),
    Column("replays", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime),
    Column("claim_token", Uuid),
    Column("last_status_code", Integer),
    Column("last_error", String(64)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime),
    UniqueConstraint("subscription_id", "event_seq"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("delivery_id", Uuid, nullable=False, index=True),
    Column("number", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("status_code", Integer),  # None: no answer (connection error, timeout)
    Column("error", String(64)),  # an error type or "http <code>", never a response body
    Column("duration_ms", Integer, nullable=False),
)

Index(
    "ix_outbox_events_unfanned",
    outbox_events.c.seq,
    postgresql_where=text("NOT fanned_out"),
    sqlite_where=text("NOT fanned_out"),
)
Index(
    "ix_outbox_events_unstreamed",
    outbox_events.c.seq,
    postgresql_where=text("streamed_at IS NULL"),
    sqlite_where=text("streamed_at IS NULL"),
)
Index("ix_outbox_events_recorded", outbox_events.c.recorded_at)
Index(
    "ix_outbox_events_sealed",
    outbox_events.c.seq,
    postgresql_where=text("address_sealed IS NOT NULL"),
    sqlite_where=text("address_sealed IS NOT NULL"),
)
Index(
    "ix_webhook_deliveries_due",
    webhook_deliveries.c.next_attempt_at,
    postgresql_where=text("status = 'pending'"),
    sqlite_where=text("status = 'pending'"),
)
Index(
    "ix_webhook_deliveries_queue",
    webhook_deliveries.c.subscription_id,
    webhook_deliveries.c.order_key,
    webhook_deliveries.c.event_seq,
    postgresql_where=text("status = 'pending'"),
    sqlite_where=text("status = 'pending'"),
)
Index("ix_webhook_deliveries_event", webhook_deliveries.c.event_seq)
# retention (consent.outbox.retention): finished deliveries by the time they finished
Index(
    "ix_webhook_deliveries_delivered",
    webhook_deliveries.c.delivered_at,
    postgresql_where=text("status = 'delivered'"),
    sqlite_where=text("status = 'delivered'"),
)
# the statuses of a delivery that has ended without being delivered: the ended index's WHERE,
# which a query names as `cdp.db.partial.among(status, ENDED)` to use it
ENDED = ("dead", "cancelled")
Index(
    "ix_webhook_deliveries_ended",
    webhook_deliveries.c.next_attempt_at,
    postgresql_where=text("status IN ('dead', 'cancelled')"),
    sqlite_where=text("status IN ('dead', 'cancelled')"),
)
