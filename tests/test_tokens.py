"""Unsubscribe tokens keep their format: tokens already sent out still verify, and a segment
export's per-export signer issues exactly the bytes `issue` always did."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import uuid

import msgspec
import pytest

from consent.tokens import TokenClaims, TokenError, TokenSigner, issue, verify
from tests.helpers import padding_twin

KEY = bytes(range(32))
PID = uuid.UUID("01890a5d-ac96-774b-bcce-b302099a8057")
# made by the implementation before the signer existed
SENT = [
    (
        TokenClaims(PID, "email", bytes(range(100, 132)), "marketing", "email"),
        "lgHEEAGJCl2slndLvM6zAgmagFelZW1haWzEIGRlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn-AgYKDqW1hcmtl"
        "dGluZ6VlbWFpbA.wcEMWFsjt62wzHSI0stGsQ",
    ),
    (
        TokenClaims(PID, "profile", b"p:" + PID.bytes, "service", "push"),
        "lgHEEAGJCl2slndLvM6zAgmagFencHJvZmlsZcQScDoBiQpdrJZ3S7zOswIJmoBXp3NlcnZpY2WkcHVzaA"
        ".T2OUJUoSC7spYUswx8SUug",
    ),
]


def _reference(key: bytes, c: TokenClaims) -> str:
    """The token format spelled out: msgpack payload, HMAC-SHA256 truncated to 128 bits."""
    payload = msgspec.msgpack.encode(
        [1, c.profile_id.bytes, c.subject_kind, c.subject, c.purpose, c.channel]
    )
    tag = hmac.digest(key, payload, hashlib.sha256)[:16]
    return ".".join(base64.urlsafe_b64encode(b).rstrip(b"=").decode() for b in (payload, tag))


@pytest.mark.parametrize(("claims", "token"), SENT)
def test_tokens_already_sent_verify_and_are_issued_byte_for_byte(claims, token):
    assert verify(KEY, token) == claims
    assert issue(KEY, claims) == token
    signer = TokenSigner(KEY, claims.subject_kind, claims.purpose, claims.channel)
    assert signer.issue(claims.profile_id, claims.subject) == token


def test_the_signer_issues_the_reference_format_for_any_sizes():
    rng = random.Random(4)
    for _ in range(300):
        key = rng.randbytes(rng.choice([16, 32, 64, 65, 100]))  # HMAC pads or hashes the key
        claims = TokenClaims(
            uuid.UUID(bytes=rng.randbytes(16)),
            rng.choice(["email", "phone", "profile"]),
            rng.randbytes(rng.choice([0, 18, 32, 255, 256, 70_000])),
            "p" * rng.randrange(0, 300),  # past msgpack's fixstr and str8 limits
            "c" * rng.randrange(0, 40),
        )
        signer = TokenSigner(key, claims.subject_kind, claims.purpose, claims.channel)
        token = signer.issue(claims.profile_id, claims.subject)
        assert token == _reference(key, claims)
        assert verify(key, token) == claims
        with pytest.raises(TokenError):
            verify(bytes(len(key)), token)


@pytest.mark.parametrize(("claims", "token"), SENT)
def test_a_token_altered_only_in_unused_bits_or_spelling_is_refused(claims, token):
    body, tag = token.split(".")
    altered = [
        f"{body}.{padding_twin(tag)}",  # e.g. ...sQ -> ...sR: the same signature bytes
        f"{padding_twin(body)}.{tag}",
        f"{body}.{tag}==",  # padding the issuer never writes
        f"{body}.{tag[:5]}\n{tag[5:]}",  # a character the decoder would skip
        token.replace("-", "+").replace("_", "/"),  # standard base64's alphabet
    ]
    for text in {t for t in altered if t != token}:
        with pytest.raises(TokenError):
            verify(KEY, text)
    assert verify(KEY, token) == claims
