"""Tables of identity-resolution review: merge snapshots, merge reviews, match suggestions.

None of them holds personal data in plaintext: snapshots are ciphertext under the data keys of
the profiles they describe; reviews and suggestions hold ids, scores and reasons only.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    cast,
    or_,
)

from cdp.db.metadata import metadata
from cdp.db.types import UTCDateTime

# What a merge changed, so that an unmerge can put it back. One row per merges row (same id).
# absorbed_state: under the absorbed profile's data key (kept after the merge for this);
# survivor_state: the survivor's pre-merge values, under the survivor's key.
merge_snapshots = Table(
    "merge_snapshots",
    metadata,
    Column("merge_id", Uuid, primary_key=True),
    Column("survivor_id", Uuid, nullable=False, index=True),
    Column("absorbed_id", Uuid, nullable=False, index=True),
    Column("absorbed_key_id", Integer, nullable=False),
    Column("absorbed_state", LargeBinary, nullable=False),
    Column("survivor_key_id", Integer, nullable=False),
    Column("survivor_state", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# Merges the guards refused. reason: {"code": ..., ...}; profile_ids: oldest first.
merge_reviews = Table(
    "merge_reviews",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("status", String(16), nullable=False),  # open | accepted | rejected
    Column("reason", JSON, nullable=False),
    Column("profile_ids", JSON, nullable=False),
    Column("attached_to", Uuid, nullable=False, index=True),
    Column("matched_on", JSON, nullable=False),
    Column("source", String(64)),
    Column("actor", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("decided_at", UTCDateTime),
    Column("decided_by", String(64)),
    Index("ix_merge_reviews_status_id", "status", "id"),
)


def reviews_naming(profile_ids: Collection[uuid.UUID]) -> ColumnElement[bool]:
    """The merge reviews that name one of these profiles: as the profile their record was
    stored in (`attached_to`, indexed) or in their list of profiles (JSON text, no index: one
    scan of the reviews, which the guards queue rarely). A customer's access export shows
    these, and their erasure deletes them."""
    mr = merge_reviews.c
    listed = [
        cast(mr.profile_ids, Text).like(f'%"{pid}"%') for pid in sorted(map(str, profile_ids))
    ]
    return or_(mr.attached_to.in_(list(profile_ids)), *listed)


# Pairs the probabilistic matcher proposes. profile_a < profile_b; reasons: per-field similarity.
match_suggestions = Table(
    "match_suggestions",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("profile_a", Uuid, nullable=False, index=True),
    Column("profile_b", Uuid, nullable=False, index=True),
    Column("score", Float, nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # open | accepted | rejected | stale
    Column("created_at", UTCDateTime, nullable=False),
    Column("decided_at", UTCDateTime),
    Column("decided_by", String(64)),
    UniqueConstraint("profile_a", "profile_b", name="uq_match_suggestions_pair"),
    Index("ix_match_suggestions_status_id", "status", "id"),
)
