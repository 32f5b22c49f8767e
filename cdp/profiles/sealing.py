"""Speculative encryption of a record in an import worker process.

Most imported records create a profile of their own. A worker, which knows nothing of the
database, bets on that: it takes the profile id the main process drew for the record when it
read it (`Prepared.profile_id`), makes a new data key (wrapped by the key-encryption key, as
`Keyring.new_profile_key` does), and encrypts the record's fields and identifier values under
that key, each bound by its associated data to that profile id. The
main process uses these ciphertexts as they are when the record does create a profile of its
own (cdp.profiles.ingest), and drops them otherwise: a record that joins an existing profile,
or shares an identifier with another record of its batch, is encrypted under the surviving
profile's key as always, and the speculative key is never stored.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from cdp.crypto.fields import FieldCipher, nonces
from cdp.crypto.master import MasterKey
from cdp.ids import new_id
from cdp.keyring import FIRST_KEY_ID, mint_data_key
from cdp.profiles.identity import IdentityKey
from cdp.profiles.records import Record

FIELD_PLACES = {
    name: f"profiles.{name}"
    for name in ("first_name", "last_name", "birth_date", "postal_address", "postcode")
}
VALUE_PLACE = "identities.value"


@dataclass(slots=True)
class Sealed:
    """A record encrypted for the new profile it would create."""

    profile_id: uuid.UUID
    key: bytes = field(repr=False)  # the data key: for the main process of this import only
    wrapped: bytes  # the data key's database half wrapped for (profile id, FIRST_KEY_ID)
    share: bytes = field(repr=False)  # its other half, for the key store (cdp.key_store)
    fields: dict[str, bytes]  # profile field -> ciphertext
    values: list[bytes]  # identifier value ciphertexts, in the order of the record's keys
    identity_ids: list[uuid.UUID]  # ids for those identities


def seal(rec: Record, keys: list[IdentityKey], master: MasterKey, pid: uuid.UUID) -> Sealed:
    key, wrapped, share = mint_data_key(master, pid, FIRST_KEY_ID)
    cipher = FieldCipher(key, FIRST_KEY_ID, str(pid))
    fresh = nonces(len(rec.fields) + len(keys))
    fields = {
        name: cipher.encrypt(FIELD_PLACES.get(name) or f"profiles.{name}", value, fresh[i])
        for i, (name, value) in enumerate(rec.fields.items())
    }
    base = len(rec.fields)
    values = [cipher.encrypt(VALUE_PLACE, k.value, fresh[base + i]) for i, k in enumerate(keys)]
    return Sealed(pid, key, wrapped, share, fields, values, [new_id() for _ in keys])
