"""The audit signing key: Ed25519, separate from the master key.

`CDP_AUDIT_SIGNING_KEY` holds base64 of a 32-byte Ed25519 private seed. Where it is unset
outside production, a development key is created in the dev key directory with a warning (as
for the master key). Only the public key is ever stored in the database.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cdp.crypto.fields import CryptoError
from cdp.settings import Settings

log = structlog.get_logger(__name__)
DEV_FILE = "audit_signing.key"


class SigningKeyError(CryptoError):
    """The audit signing key is missing or malformed."""


def key_id_of(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:16]


class AuditSigner:
    """Signs checkpoint statements. Holds the private key only in memory."""

    __slots__ = ("_private", "key_id", "public_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise SigningKeyError("the audit signing key must be 32 bytes (base64 of a seed)")
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id_of(self.public_key)

    @classmethod
    def from_base64(cls, text: str) -> AuditSigner:
        try:
            seed = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise SigningKeyError("CDP_AUDIT_SIGNING_KEY is not valid base64") from exc
        return cls(seed)

    @staticmethod
    def generate_base64() -> str:
        return base64.b64encode(os.urandom(32)).decode()

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_key).decode()

    def sign(self, message: bytes) -> bytes:
        return self._private.sign(message)


def signature_valid(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def load_signer(configured: str | None, *, production: bool, dev_dir: Path) -> AuditSigner:
    """The configured key, or outside production a development key kept in `dev_dir`."""
    if configured:
        return AuditSigner.from_base64(configured)
    if production:
        raise SigningKeyError("CDP_AUDIT_SIGNING_KEY must be set in production")
    path = dev_dir / DEV_FILE
    if not path.exists():
        dev_dir.mkdir(parents=True, exist_ok=True)
        tmp = dev_dir / f".{DEV_FILE}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(AuditSigner.generate_base64() + "\n")
        try:
            os.link(tmp, path)  # complete file or nothing; never replaces an existing key
            created = True
        except FileExistsError:  # another process created it first
            created = False
        finally:
            tmp.unlink()
        if created:
            log.warning(
                "dev_audit_signing_key_created",
                path=str(path),
                hint="set CDP_AUDIT_SIGNING_KEY to a key kept apart from CDP_MASTER_KEY",
            )
    return AuditSigner.from_base64(path.read_text())


_signers: dict[tuple[str | None, bool, str], AuditSigner] = {}


def signer_for(settings: Settings) -> AuditSigner:
    """The signer of these settings (loaded once per process)."""
    cache_key = (settings.signing_key, settings.is_production, str(settings.dev_key_dir.resolve()))
    signer = _signers.get(cache_key)
    if signer is None:
        signer = load_signer(
            settings.signing_key,
            production=settings.is_production,
            dev_dir=settings.dev_key_dir,
        )
        _signers[cache_key] = signer
    return signer
