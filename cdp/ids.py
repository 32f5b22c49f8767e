"""Identifiers: random, time-ordered UUIDv7 so inserts stay local in B-trees."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from uuid_utils.compat import uuid7


def new_id() -> uuid.UUID:
    return uuid7()


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        return None


def utcnow() -> datetime:
    return datetime.now(UTC)
