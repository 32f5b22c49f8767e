"""Signed unsubscribe / preference tokens.

A token names (profile, address blind index, purpose, channel) and carries an HMAC-SHA256 tag
(truncated to 128 bits) under a key derived from the key ring's root. It holds no plaintext
personal data. Any altered byte fails verification.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid
from dataclasses import dataclass

import msgspec

VERSION = 1


class TokenError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class TokenClaims:
    profile_id: uuid.UUID
    subject_kind: str  # email | phone | profile
    subject: bytes
    purpose: str
    channel: str


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> str:
    # binascii directly: base64.urlsafe_b64encode costs ~3 us more per token (segment exports)
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue(key: bytes, claims: TokenClaims) -> str:
    payload = msgspec.msgpack.encode(
        [
            VERSION,
            claims.profile_id.bytes,
            claims.subject_kind,
            claims.subject,
            claims.purpose,
            claims.channel,
        ]
    )
    tag = hmac.digest(key, payload, hashlib.sha256)[:16]
    return _b64(payload) + "." + _b64(tag)


def verify(key: bytes, token: str) -> TokenClaims:
    try:
        body, tag = token.split(".", 1)
        payload, given = _unb64(body), _unb64(tag)
    except (ValueError, TypeError) as exc:
        raise TokenError("malformed token") from exc
    expected = hmac.digest(key, payload, hashlib.sha256)[:16]
    if not hmac.compare_digest(expected, given):
        raise TokenError("invalid token")
    try:
        version, pid, kind, subject, purpose, channel = msgspec.msgpack.decode(payload)
        if version != VERSION:
            raise TokenError("unsupported token version")
        return TokenClaims(uuid.UUID(bytes=pid), kind, subject, purpose, channel)
    except (ValueError, TypeError, msgspec.DecodeError) as exc:
        raise TokenError("malformed token") from exc
