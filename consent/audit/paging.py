"""Cursor pagination and the common filters of the audit queries."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

import msgspec

from cdp.errors import InvalidInput, plain_message


def encode_cursor(position: list[Any]) -> str:
    """An opaque cursor for the position after the last item of a page."""
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, size: int) -> list[Any] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        position = None
    if not isinstance(position, list) or len(position) != size:
        raise InvalidInput.field("cursor", "not a cursor of this list")
    return position


def period(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """The `since` and `until` filters, each RFC 3339 text with a zone, or a 400 naming it.

    Taken as text: the framework's conversion read a number as a Unix time, so `until=2026`
    (a year) filtered on 1970-01-01T00:33:46Z and answered an empty page."""
    moments = (_moment("since", since), _moment("until", until))
    if None not in moments and moments[1] < moments[0]:  # type: ignore[operator]
        raise InvalidInput.field("until", "must not be before since")
    return moments


def _moment(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = msgspec.convert(text, datetime)  # strict: RFC 3339 text only
    except msgspec.ValidationError:
        raise InvalidInput.field(name, plain_message("Invalid RFC3339 encoded datetime")) from None
    if value.tzinfo is None:
        raise InvalidInput.field(name, "needs a time zone (e.g. 2026-11-22T10:00:00Z)")
    try:
        value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+10:56 is before year 1 in UTC
        raise InvalidInput.field(name, "out of range") from None
    return value
