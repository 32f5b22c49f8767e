"""The master key: loading, its public key id, and the key-encryption key derived from it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cdp.crypto.fields import CryptoError

log = structlog.get_logger(__name__)


class WrongMasterKeyError(CryptoError):
    """The master key cannot unwrap the keys this database was initialised with."""


class MasterKeyMissingError(CryptoError):
    pass


def hkdf(secret: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


class MasterKey:
    """Wraps and unwraps data keys. Holds the secret only in memory."""

    __slots__ = ("_kek", "_kek_secret", "key_id")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise CryptoError("the master key must be 32 bytes (base64 of 32 random bytes)")
        self.key_id = hmac.new(secret, b"cdp/master-key-id/v1", hashlib.sha256).hexdigest()[:16]
        self._kek_secret = hkdf(secret, b"cdp/kek/v1")
        self._kek = AESGCM(self._kek_secret)

    def export_kek(self) -> tuple[str, bytes]:
        """(key id, key-encryption key): for handing to worker processes of this same
        deployment only (they wrap new data keys). The master secret itself never leaves."""
        return self.key_id, self._kek_secret

    @classmethod
    def from_kek(cls, key_id: str, kek: bytes) -> MasterKey:
        """A master key that can wrap and unwrap data keys, made from `export_kek`."""
        if len(kek) != 32:
            raise CryptoError("a key-encryption key must be 32 bytes")
        master = cls.__new__(cls)
        master.key_id = key_id
        master._kek_secret = kek
        master._kek = AESGCM(kek)
        return master

    @classmethod
    def from_base64(cls, text: str) -> MasterKey:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CryptoError("CDP_MASTER_KEY is not valid base64") from exc
        return cls(raw)

    @staticmethod
    def generate_base64() -> str:
        return base64.b64encode(os.urandom(32)).decode()

    def wrap(self, key: bytes, context: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._kek.encrypt(nonce, key, b"cdp/wrap|" + context)

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        try:
            return self._kek.decrypt(wrapped[:12], wrapped[12:], b"cdp/wrap|" + context)
        except InvalidTag as exc:
            raise WrongMasterKeyError("a wrapped key does not open under this master key") from exc


def load_master_key(configured: str | None, *, production: bool, dev_dir: Path) -> MasterKey:
    """The configured key, or outside production a development key kept in `dev_dir`."""
    if configured:
        return MasterKey.from_base64(configured)
    if production:
        raise MasterKeyMissingError("CDP_MASTER_KEY must be set in production")
    path = dev_dir / "master.key"
    if not path.exists():
        dev_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(MasterKey.generate_base64() + "\n")
        log.warning(
            "dev_master_key_created",
            path=str(path),
            hint="set CDP_MASTER_KEY to a key kept in a secrets manager",
        )
    else:
        log.warning("dev_master_key_in_use", path=str(path))
    return MasterKey.from_base64(path.read_text())
