"""Opaque keyset cursors: the last id of a page, versioned and base64url-encoded."""

from __future__ import annotations

import base64
import binascii
import uuid

from cdp.errors import InvalidInput

_VERSION = b"\x01"


def encode_cursor(last: uuid.UUID | None) -> str | None:
    if last is None:
        return None
    return base64.urlsafe_b64encode(_VERSION + last.bytes).rstrip(b"=").decode()


def decode_cursor(text: str | None) -> uuid.UUID | None:
    if text is None or text == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 17 or raw[:1] != _VERSION:
        raise InvalidInput.field("cursor", "not a cursor this endpoint returned")
    return uuid.UUID(bytes=raw[1:])


def check_limit(limit: int | None, default: int = 100, maximum: int = 1000) -> int:
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise InvalidInput.field("limit", f"must be between 1 and {maximum}")
    return limit
