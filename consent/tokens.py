"""Signed unsubscribe / preference tokens.

A token names (profile, address blind index, purpose, channel) and carries an HMAC-SHA256 tag
(truncated to 128 bits) under a key derived from the key ring's root. It holds no plaintext
personal data. Any altered character fails verification: each part must be canonical
base64url (no padding, no stray characters, unused trailing bits zero), so exactly one text
stands for a given token.

Two scopes. An `unsubscribe` token (version 1) is in every segment member and export, so the
sending tools hold it as well as the customer: it can only stop messages (one-click
unsubscribe, withdrawals in the preference centre) and show the masked preferences. A `manage`
token (version 2) is issued through the API (`POST /v1/preference-links`) to a customer the
operator has signed in, and expires: it can also record grants, download the customer's data
and request erasure. A link that anyone holding a newsletter or an export can use must not be
able to forge a consent, read a profile or destroy one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass

import msgspec

VERSION = 1  # an unsubscribe token
MANAGE_VERSION = 2  # a manage token: the scope and an expiry follow the channel
UNSUBSCRIBE = "unsubscribe"
MANAGE = "manage"


class TokenError(Exception):
    pass


class ExpiredToken(TokenError):
    """A genuine manage token past its expiry: the customer is told to sign in again. Its
    claims as an unsubscribe link's (`stops_only`): an expired manage link can still stop
    messages, as the unsubscribe link in every message can, but nothing more."""

    def __init__(self, message: str, stops_only: TokenClaims | None = None) -> None:
        super().__init__(message)
        self.stops_only = stops_only


@dataclass(frozen=True, slots=True)
class TokenClaims:
    profile_id: uuid.UUID
    subject_kind: str  # email | phone | profile
    subject: bytes
    purpose: str
    channel: str
    scope: str = UNSUBSCRIBE
    expires_at: int | None = None  # unix seconds; manage tokens only

    @property
    def can_manage(self) -> bool:
        return self.scope == MANAGE


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(data: bytes) -> bytes:
    # binascii directly: base64.urlsafe_b64encode costs ~3 us more per token (segment exports)
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=")


def _unb64(text: str) -> bytes:
    """The bytes of a canonical base64url text: one `_b64` gives back exactly (raises
    ValueError otherwise). The decoder alone is lenient: it skips characters outside the
    alphabet, takes '+' and '/' too, and ignores the unused bits of the last character, so
    several texts would decode to the same bytes."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text.encode():
        raise ValueError("not canonical base64url")
    return data


_msgpack = msgspec.msgpack.encode
# the payload is the msgpack array [VERSION, profile id, kind, subject, purpose, channel]: an
# array's encoding is its header followed by its items' encodings, so the constant items are
# encoded once per signer (a segment export signs one token per member)
_HEAD = b"\x96" + _msgpack(VERSION)  # fixarray of 6 items, then the version


class TokenSigner:
    """Issues tokens of one subject kind, purpose and channel under one key: the constant
    parts of the payload are encoded once, and the HMAC's inner and outer hashes start from
    states keyed once (RFC 2104; hmac.HMAC.copy costs twice as much per token). The same
    bytes as `issue`."""

    __slots__ = ("_inner", "_kind", "_outer", "_tail")

    def __init__(self, key: bytes, subject_kind: str, purpose: str, channel: str) -> None:
        block = hashlib.sha256().block_size
        padded = (hashlib.sha256(key).digest() if len(key) > block else key).ljust(block, b"\0")
        self._inner = hashlib.sha256(padded.translate(hmac.trans_36))
        self._outer = hashlib.sha256(padded.translate(hmac.trans_5C))
        self._kind = _msgpack(subject_kind)
        self._tail = _msgpack(purpose) + _msgpack(channel)

    def issue(self, profile_id: uuid.UUID, subject: bytes) -> str:
        payload = b"".join(
            (_HEAD, _msgpack(profile_id.bytes), self._kind, _msgpack(subject), self._tail)
        )
        inner = self._inner.copy()
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return b".".join((_b64(payload), _b64(outer.digest()[:16]))).decode()


def issue(key: bytes, claims: TokenClaims) -> str:
    if claims.scope == UNSUBSCRIBE:
        signer = TokenSigner(key, claims.subject_kind, claims.purpose, claims.channel)
        return signer.issue(claims.profile_id, claims.subject)
    if claims.scope != MANAGE or claims.expires_at is None:
        raise ValueError("a manage token needs an expiry")
    payload = _msgpack(
        [
            MANAGE_VERSION,
            claims.profile_id.bytes,
            claims.subject_kind,
            claims.subject,
            claims.purpose,
            claims.channel,
            claims.expires_at,
        ]
    )
    tag = hmac.digest(key, payload, hashlib.sha256)[:16]
    return b".".join((_b64(payload), _b64(tag))).decode()


def verify(key: bytes, token: str, *, now: float | None = None) -> TokenClaims:
    try:
        body, tag = token.split(".", 1)
        payload, given = _unb64(body), _unb64(tag)
    except (ValueError, TypeError) as exc:
        raise TokenError("malformed token") from exc
    expected = hmac.digest(key, payload, hashlib.sha256)[:16]
    if not hmac.compare_digest(expected, given):
        raise TokenError("invalid token")
    try:
        version, pid, kind, subject, purpose, channel, *rest = msgspec.msgpack.decode(payload)
        if version == VERSION and not rest:
            return TokenClaims(uuid.UUID(bytes=pid), kind, subject, purpose, channel)
        if version == MANAGE_VERSION and len(rest) == 1 and type(rest[0]) is int:
            if (time.time() if now is None else now) >= rest[0]:
                stops_only = TokenClaims(uuid.UUID(bytes=pid), kind, subject, purpose, channel)
                raise ExpiredToken("expired token", stops_only)
            return TokenClaims(
                uuid.UUID(bytes=pid), kind, subject, purpose, channel, MANAGE, rest[0]
            )
        raise TokenError("unsupported token version")
    except (ValueError, TypeError, msgspec.DecodeError) as exc:
        raise TokenError("malformed token") from exc
