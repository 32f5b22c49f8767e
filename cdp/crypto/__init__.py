"""Field-level encryption and blind indexes, written on `cryptography`.

No SQLAlchemy add-on offers safe *searchable* encryption (deterministic lookups without
deterministic ciphertext), so this small typed layer does it: AES-256-GCM per field under a
per-profile data key, and HMAC-SHA256 blind indexes under a key that never reaches the database.
"""

from cdp.crypto.blind_index import BlindIndexer
from cdp.crypto.fields import CryptoError, FieldCipher
from cdp.crypto.master import MasterKey, WrongMasterKeyError

__all__ = ["BlindIndexer", "CryptoError", "FieldCipher", "MasterKey", "WrongMasterKeyError"]
