"""Opaque keyset cursors: the last id of a page and the listing it belongs to, versioned and
base64url-encoded.

A cursor names its listing (`scope`: "segments", "segment:<id>", "adhoc:<definition digest>",
...) by the first 8 bytes of its SHA-256, so a cursor taken where it was not handed out (the
members of another segment, an ad-hoc query of other rules, another list) is a 400 naming
`cursor`. Before, it was read as a bare keyset position there and silently skipped every item
before it. The tag is not a secret: a cursor only ever says where a walk goes on.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid

from cdp.errors import InvalidInput

_VERSION = b"\x02"
_TAG = 8


def _tag(scope: str) -> bytes:
    return hashlib.sha256(scope.encode()).digest()[:_TAG]


def encode_cursor(last: uuid.UUID | None, *, scope: str) -> str | None:
    if last is None:
        return None
    raw = _VERSION + last.bytes + _tag(scope)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(text: str | None, *, scope: str) -> uuid.UUID | None:
    if text is None or text == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 17 + _TAG or raw[:1] != _VERSION or raw[17:] != _tag(scope):
        raise InvalidInput.field("cursor", "not a cursor this endpoint returned")
    return uuid.UUID(bytes=raw[1:17])


def check_limit(limit: int | None, default: int = 100, maximum: int = 1000) -> int:
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise InvalidInput.field("limit", f"must be between 1 and {maximum}")
    return limit
