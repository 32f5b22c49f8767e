"""Cursor pagination and the common filters of the audit queries."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from cdp.errors import InvalidInput


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


def check_period(since: datetime | None, until: datetime | None) -> None:
    for name, value in (("since", since), ("until", until)):
        if value is None:
            continue
        if value.tzinfo is None:
            raise InvalidInput.field(name, "needs a time zone (e.g. 2026-11-22T10:00:00Z)")
        try:
            value.astimezone(UTC)
        except OverflowError:  # 0001-01-01T00:00+10:56 is before year 1 in UTC
            raise InvalidInput.field(name, "out of range") from None
    if since is not None and until is not None and until < since:
        raise InvalidInput.field("until", "must not be before since")
