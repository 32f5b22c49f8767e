"""Blind indexes: HMAC-SHA256 of a normalised value under a key never stored in the database.

What a blind index reveals: equality. Two rows with the same normalised email have the same
index, so someone holding the database learns which rows share an address, not the address.
Full 32-byte output is kept because identities must be unique on it.
"""

from __future__ import annotations

import hashlib
import hmac


class BlindIndexer:
    __slots__ = ("_key", "_keyed")

    def __init__(self, key: bytes) -> None:
        self._key = key
        # the HMAC keyed once; each index continues a copy (half the cost of hmac.digest)
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)

    @property
    def key(self) -> bytes:
        """For handing to worker processes of this same deployment only."""
        return self._key

    def index(self, kind: str, normalised: str) -> bytes:
        h = self._keyed.copy()
        h.update(f"{kind}\x1f{normalised}".encode())
        return h.digest()

    def email(self, normalised: str) -> bytes:
        return self.index("email", normalised)

    def phone(self, e164: str) -> bytes:
        return self.index("phone", e164)

    def external_id(self, source: str, external_id: str) -> bytes:
        return self.index("external_id", f"{source}\x1f{external_id}")
