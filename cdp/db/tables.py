"""Tables of the profile store. Personal fields are LargeBinary ciphertext (cdp.crypto)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Table,
    UniqueConstraint,
    Uuid,
    false,
    text,
)

from cdp.db.metadata import metadata
from cdp.db.types import UTCDateTime

keyring = Table(
    "keyring",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("master_key_id", String(16), nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

profiles = Table(
    "profiles",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("status", String(16), nullable=False),  # active | merged | erased
    Column("merged_into", Uuid, nullable=True),
    Column("jurisdiction", String(16), nullable=False),
    # whether a record gave the jurisdiction (true), or it came from a country or the default;
    # a country changes only a jurisdiction no record gave (migration 0019; NULL: not known)
    Column("jurisdiction_given", Boolean),
    Column("country", String(2)),
    Column("city", String(120)),
    # cdp.labels.city_key(city), what segment rules compare; case folding at most triples a
    # character ("ﬃ" is "ffi"), so 120 characters of city fold into at most 360
    Column("city_key", String(360)),
    Column("traits", JSON, nullable=False),
    Column("key_id", Integer, nullable=False),
    # ciphertext under the profile's data key
    Column("first_name", LargeBinary),
    Column("last_name", LargeBinary),
    Column("birth_date", LargeBinary),
    Column("postal_address", LargeBinary),
    Column("postcode", LargeBinary),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # when each value was given, where not at updated_at (cdp.profiles.freshness)
    Column("field_times", JSON, nullable=True),
    Index("ix_profiles_status_created", "status", "created_at"),
    # Only merged profiles (few): with every row in it, SQLite's statistics said a key matches
    # a thousand rows, and it scanned the table for `merged_into IN (...)` (migration 0005).
    Index(
        "ix_profiles_merged_into",
        "merged_into",
        sqlite_where=text("merged_into IS NOT NULL"),
        postgresql_where=text("merged_into IS NOT NULL"),
    ),
)

ENCRYPTED_PROFILE_FIELDS = ("first_name", "last_name", "birth_date", "postal_address", "postcode")

profile_keys = Table(
    "profile_keys",
    metadata,
    Column("profile_id", Uuid, primary_key=True),
    Column("key_id", Integer, primary_key=True),
    Column("master_key_id", String(16), nullable=False),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # True: `wrapped` holds one half of the data key, the key store the other (cdp.key_store);
    # False: a key stored whole, from before the key store (`cdp keys split` converts them)
    Column("split", Boolean, nullable=False, server_default=false()),
    Index(
        "ix_profile_keys_whole",
        "profile_id",
        sqlite_where=text("NOT split"),
        postgresql_where=text("NOT split"),
    ),
)

# A share in the key store that is not kept under its profile's own id (a data key after the
# first: an unmerge gives the holder a new one, cdp.profiles.rekey), and each profile whose
# erasure destroys it (consent.dsr.shares): the holder's current key goes with the holder; a key
# retired by an unmerge goes with any customer who was ever merged into the holder, since what
# was recorded for them while merged is under it in the database's older copies.
key_share_owners = Table(
    "key_share_owners",
    metadata,
    Column("share_id", Uuid, primary_key=True),
    Column("profile_id", Uuid, primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_key_share_owners_profile_id", "profile_id"),
)

# The key store this database's data keys are split with, and the last of its erasures that
# this database has honoured (a database restored from a backup has an older number).
key_store_link = Table(
    "key_store_link",
    metadata,
    Column("store_id", String(64), primary_key=True),
    Column("reconciled_seq", BigInteger, nullable=False),
)

identities = Table(
    "identities",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("profile_id", Uuid, nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # email | phone | external_id
    Column("bidx", LargeBinary(32), nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("source", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("confirmed_at", UTCDateTime, nullable=True),
    # provenance of the link: "new" (created the profile) | "deterministic" (joined it on an
    # identifier); linked_via is the identity the record matched (unmerge follows it)
    Column("link_rule", String(16), nullable=True),
    Column("linked_via", Uuid, nullable=True),
    UniqueConstraint("bidx", name="uq_identities_bidx"),
)

profile_sources = Table(
    "profile_sources",
    metadata,
    Column("profile_id", Uuid, primary_key=True),
    Column("source", String(64), primary_key=True),
    Column("first_seen_at", UTCDateTime, nullable=False),
)

merges = Table(
    "merges",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("survivor_id", Uuid, nullable=False, index=True),
    Column("absorbed_id", Uuid, nullable=False, index=True),
    Column("matched_on", JSON, nullable=False),
    Column("provenance", String(16), nullable=False),  # deterministic | reviewed
    Column("source", String(64)),
    Column("actor", String(64)),
    Column("at", UTCDateTime, nullable=False),
    Column("undone_at", UTCDateTime, nullable=True),  # set by an unmerge
    Column("undone_by", String(64), nullable=True),
)

events = Table(
    "events",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("profile_id", Uuid, nullable=False, index=True),
    Column("source", String(64), nullable=False),
    # The sender's event id is sealed (cdp.event_ids): a blind index for idempotency and
    # ciphertext under the profile's data key, as senders put emails in them ("o-{email}").
    # `event_id` holds the plain id of rows recorded before revision 0012 until `cdp events
    # seal` seals them; NULL otherwise.
    Column("event_id", String(200), nullable=True),
    Column("event_key", LargeBinary(32), nullable=True),
    Column("event_ref", LargeBinary, nullable=True),
    Column("type", String(64), nullable=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("amount", Numeric(18, 2)),
    Column("currency", String(3)),
    Column("category", String(120)),
    Column("properties", LargeBinary),  # ciphertext: free-form properties may hold personal data
    Column("key_id", Integer),  # the data key of event_ref and properties
    # the identity that named the event (an unmerge gives the event to the side that has it);
    # None where a profile id named it
    Column("identity_id", Uuid, nullable=True),
    # the profile id that named the event, where a profile id did (an unmerge gives the event
    # back to that profile); None where an identifier named it
    Column("named_profile_id", Uuid, nullable=True),
    UniqueConstraint("source", "event_id", name="uq_events_source_event_id"),
    UniqueConstraint("source", "event_key", name="uq_events_source_event_key"),
    Index(
        "ix_events_plain_id",
        "id",
        sqlite_where=text("event_id IS NOT NULL"),
        postgresql_where=text("event_id IS NOT NULL"),
    ),
)

profile_stats = Table(
    "profile_stats",
    metadata,
    Column("profile_id", Uuid, primary_key=True),
    Column("orders_count", Integer, nullable=False),
    Column("total_spent", Numeric(18, 2), nullable=False),
    Column("first_order_at", UTCDateTime),
    Column("last_order_at", UTCDateTime),
)

profile_categories = Table(
    "profile_categories",
    metadata,
    Column("profile_id", Uuid, primary_key=True),
    Column("category", String(120), primary_key=True),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("key_hash", LargeBinary(32), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
    Column("last_used_at", UTCDateTime),
)

access_log = Table(
    "access_log",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("action", String(48), nullable=False),
    Column("object_type", String(32), nullable=False),
    Column("object_id", String(64)),
    Column("profile_id", Uuid, index=True),
    Column("rows", Integer, nullable=False),
    Column("detail", JSON),
    # pages in (at, id) order, and a key's entries (`actor=`), found by index (migration 0024)
    Index("ix_access_log_at_id", "at", "id"),
    Index("ix_access_log_actor_at_id", "actor", "at", "id"),
)

segments = Table(
    "segments",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("rules", JSON, nullable=False),
    Column("created_by", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("deleted", Boolean, nullable=False),
    # sent by automatic dialling or mailing (38-FZ art. 18(2); consent.rule): migration 0022
    Column("automated", Boolean, nullable=False, server_default=false()),
)

# A record of every segment export: who, which segment, when, how many rows (kept while the
# export streams: `rows` grows page by page, `finished_at` stays NULL when it was cut short).
segment_exports = Table(
    "segment_exports",
    metadata,
    Column("id", Uuid, primary_key=True),  # UUIDv7: newest last
    Column("segment_id", Uuid, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("purpose", String(64), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("format", String(8), nullable=False),
    Column("started_at", UTCDateTime, nullable=False, index=True),
    Column("finished_at", UTCDateTime),
    Column("rows", Integer, nullable=False),
    Index("ix_segment_exports_segment_id_id", "segment_id", "id"),
)

# Who an export handed out: one row per page, `members` the page's members as 32-byte records
# (profile id, then the id of the identity whose address was sent; zeros for push/messenger).
# Ids only: an erased customer's identity row is gone, so the record points at nothing.
segment_export_chunks = Table(
    "segment_export_chunks",
    metadata,
    Column("export_id", Uuid, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("rows", Integer, nullable=False),
    Column("members", LargeBinary, nullable=False),
)

# Console sessions that were signed out before they expired (the cookie alone is not trusted to
# be gone: a copied cookie stops working too). Rows past expires_at are deleted on sign-out.
console_signouts = Table(
    "console_signouts",
    metadata,
    Column("sid", String(64), primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False),
)
