"""Webhook signatures in the style of the Standard Webhooks specification.

Headers on every request:
    webhook-id:        the event id (the same on every retry and replay: receivers dedupe on it)
    webhook-timestamp: seconds since the Unix epoch, when this attempt was signed
    webhook-signature: "v1," + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))

The secret is shown once as "whsec_" + base64(key); the HMAC key is the decoded bytes. A
receiver recomputes the signature over the exact body bytes it received, compares it in
constant time with each space-separated "v1,..." entry, and rejects timestamps outside a
tolerance (replay protection). `verify` is that check; docs/webhooks.md shows it stand-alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Mapping, Sequence

PREFIX = "whsec_"
TOLERANCE_SECONDS = 300


class SignatureError(Exception):
    """The request was not signed with this secret, was altered, or is too old."""


def new_secret() -> str:
    return PREFIX + base64.b64encode(os.urandom(32)).decode()


def secret_key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(PREFIX), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError("not a webhook secret") from exc


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(
    key: bytes,
    msg_id: str,
    body: bytes,
    timestamp: int | None = None,
    also: Sequence[bytes] = (),
) -> dict[str, str]:
    """`also`: further keys that sign too (a rotated secret during its overlap); their
    signatures follow the first, space-separated."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(sign(k, msg_id, ts, body) for k in (key, *also)),
    }


def verify(
    secret: str,
    request_headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: int = TOLERANCE_SECONDS,
) -> None:
    """Raise SignatureError unless the request carries a valid, fresh signature."""
    h = {k.lower(): v for k, v in request_headers.items()}
    msg_id, ts_text, sigs = (
        h.get("webhook-id"),
        h.get("webhook-timestamp"),
        h.get("webhook-signature"),
    )
    if not msg_id or not ts_text or not sigs:
        raise SignatureError("missing webhook headers")
    try:
        ts = int(ts_text)
    except ValueError as exc:
        raise SignatureError("bad timestamp") from exc
    if abs((time.time() if now is None else now) - ts) > tolerance:
        raise SignatureError("timestamp outside the tolerance")
    expected = sign(secret_key(secret), msg_id, ts, body)
    for candidate in sigs.split():
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return
    raise SignatureError("no matching signature")
