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
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)


def time_problem(at: datetime | None) -> str | None:
    """What is wrong with a time a client reports as when something happened (a consent's, an
    opt-out's, an event's occurred_at), or None:
    - more than MAX_AHEAD after this server's clock: it has not happened yet (and a grant
      dated 2099 would outrank every opt-out until then);
    - before 1900: no consent or purchase is that old, and 0001-01-01T00:00+10:56 is not even
      a time in UTC (storing it was a 500)."""
    if at is None:
        return None
    if at > utcnow() + MAX_AHEAD:
        return "is in the future"
    if at < EARLIEST:
        return "is before 1900"
    return None
