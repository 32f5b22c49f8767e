"""AES-256-GCM field encryption bound to (table, column, row owner, key id).

Ciphertext layout: version byte | key id (4 bytes, big endian) | nonce (12) | ciphertext+tag.
The associated data binds a ciphertext to its place, so it cannot be copied to another row or
column and still decrypt.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
_HEADER = struct.Struct(">BI")


class CryptoError(Exception):
    """Raised for any failure to encrypt or decrypt. Never carries plaintext."""


class FieldCipher:
    """Encrypts the fields of one owner (a profile, or the system) under one data key."""

    __slots__ = ("_aead", "_owner", "key_id")

    def __init__(self, key: bytes, key_id: int, owner: str) -> None:
        self._aead = AESGCM(key)
        self.key_id = key_id
        self._owner = owner.encode()

    @property
    def owner(self) -> str:
        return self._owner.decode()

    def _aad(self, place: str, key_id: int) -> bytes:
        return b"%s|%s|%d" % (place.encode(), self._owner, key_id)

    def encrypt(self, place: str, plaintext: str | bytes) -> bytes:
        """`place` names table and column, e.g. "profiles.first_name"."""
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        nonce = os.urandom(12)
        header = _HEADER.pack(VERSION, self.key_id)
        return header + nonce + self._aead.encrypt(nonce, data, self._aad(place, self.key_id))

    def decrypt_bytes(self, place: str, blob: bytes) -> bytes:
        if len(blob) < _HEADER.size + 12 + 16:
            raise CryptoError(f"ciphertext in {place} is truncated")
        version, key_id = _HEADER.unpack_from(blob)
        if version != VERSION:
            raise CryptoError(f"ciphertext in {place} has unknown version {version}")
        if key_id != self.key_id:
            raise CryptoError(f"ciphertext in {place} was made under key id {key_id}")
        nonce = blob[_HEADER.size : _HEADER.size + 12]
        try:
            return self._aead.decrypt(nonce, blob[_HEADER.size + 12 :], self._aad(place, key_id))
        except InvalidTag as exc:
            raise CryptoError(f"ciphertext in {place} failed authentication") from exc

    def decrypt(self, place: str, blob: bytes | None) -> str | None:
        if blob is None:
            return None
        return self.decrypt_bytes(place, blob).decode()


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)
