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
    """Raised for any failure to encrypt or decrypt. Never carries plaintext: its message names
    places and ids only, so the log of a failed read may repeat it (`api.errors`)."""


class FieldCipher:
    """Encrypts the fields of one owner (a profile, or the system) under one data key.

    The AES context is made on first use: an import adopts many ciphers made in a worker
    process (cdp.keyring.Keyring.adopt) and most of them never encrypt in this process."""

    __slots__ = ("_aad_tail", "_aead", "_header", "_key", "_owner", "key_id")

    def __init__(self, key: bytes, key_id: int, owner: str) -> None:
        if len(key) not in (16, 24, 32):
            raise CryptoError("a data key must be 128, 192 or 256 bits")
        self._key = key
        self._aead: AESGCM | None = None
        self.key_id = key_id
        self._owner = owner.encode()
        self._header = _HEADER.pack(VERSION, key_id)
        self._aad_tail = b"|%s|%d" % (self._owner, key_id)

    @property
    def owner(self) -> str:
        return self._owner.decode()

    def _context(self) -> AESGCM:
        if self._aead is None:
            self._aead = AESGCM(self._key)
        return self._aead

    def _aad(self, place: str, key_id: int) -> bytes:
        """place | owner | key id."""
        if key_id == self.key_id:
            return _place_bytes(place) + self._aad_tail
        return b"%s|%s|%d" % (place.encode(), self._owner, key_id)

    def encrypt(self, place: str, plaintext: str | bytes, nonce: bytes | None = None) -> bytes:
        """`place` names table and column, e.g. "profiles.first_name". `nonce`: 12 fresh random
        bytes the caller drew (a batch may draw many at once, see `nonces`); never reused."""
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        if nonce is None:
            nonce = os.urandom(12)
        aad = _place_bytes(place) + self._aad_tail
        return self._header + nonce + (self._aead or self._context()).encrypt(nonce, data, aad)

    def decrypt_bytes(self, place: str, blob: bytes) -> bytes:
        if len(blob) < _HEADER.size + 12 + 16:
            raise CryptoError(f"ciphertext in {place} of {self.owner} is truncated")
        version, key_id = _HEADER.unpack_from(blob)
        if version != VERSION:
            raise CryptoError(
                f"ciphertext in {place} of {self.owner} has unknown version {version}"
            )
        if key_id != self.key_id:
            raise CryptoError(
                f"ciphertext in {place} of {self.owner} was made under key id {key_id}"
            )
        nonce = blob[_HEADER.size : _HEADER.size + 12]
        try:
            return self._context().decrypt(
                nonce, blob[_HEADER.size + 12 :], self._aad(place, key_id)
            )
        except InvalidTag as exc:
            raise CryptoError(
                f"ciphertext in {place} of {self.owner} failed authentication"
            ) from exc

    def decrypt(self, place: str, blob: bytes | None) -> str | None:
        if blob is None:
            return None
        return self.decrypt_bytes(place, blob).decode()


_places: dict[str, bytes] = {}


def _place_bytes(place: str) -> bytes:
    encoded = _places.get(place)
    if encoded is None:
        encoded = place.encode()
        if len(_places) < 256:  # a handful of table.column names
            _places[place] = encoded
    return encoded


def nonces(n: int) -> list[bytes]:
    """n fresh 12-byte nonces from one read of the OS random source."""
    pool = os.urandom(12 * n)
    return [pool[i : i + 12] for i in range(0, 12 * n, 12)]


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)
