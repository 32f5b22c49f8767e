"""Identifiers: random, time-ordered UUIDv7 so inserts stay local in B-trees."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

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


# How far ahead of this server's clock a reported time may be (a client's clock skew)
MAX_AHEAD = timedelta(minutes=5)


def in_the_future(at: datetime | None) -> bool:
    """A time a client reports (a consent's, an opt-out's, an event's occurred_at) that is more
    than MAX_AHEAD after this server's clock: it has not happened yet."""
    return at is not None and at > utcnow() + MAX_AHEAD
