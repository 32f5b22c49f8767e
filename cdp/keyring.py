"""The runtime key ring: master key, blind-index key, token key and per-profile data keys.

Root secrets (the blind-index root and the system data key) are random, stored in `keyring`
wrapped by the master key, so rotating the master key re-wraps them instead of changing every
blind index (suppressions of never-seen addresses could not be recomputed). The blind-index and
token keys are derived from that root with HKDF and exist only in memory. A master key that
cannot unwrap the root is refused at start-up.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable

import structlog
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.blind_index import BlindIndexer
from cdp.crypto.fields import CryptoError, FieldCipher, new_data_key
from cdp.crypto.master import MasterKey, WrongMasterKeyError, hkdf
from cdp.db.engine import Database
from cdp.db.tables import keyring as keyring_table
from cdp.db.tables import profile_keys
from cdp.errors import DomainError, InvalidInput
from cdp.ids import utcnow

log = structlog.get_logger(__name__)

ROOTS = ("index_root", "system_key")


MASTER_KEY_ROTATED = (
    "the master key was rotated: this service's CDP_MASTER_KEY no longer opens the database's "
    "keys; restart the service with the new CDP_MASTER_KEY"
)


class MasterKeyRotated(DomainError):
    """The key ring moved to another master key while this process runs on the old one."""

    status = 503
    title = "Service unavailable"


SYSTEM_OWNER = "system"
_CACHE_SIZE = 200_000
# Unwrapped data keys are cached briefly, to save unwrapping them again. `ciphers` hands out a
# cached key only while the database still holds its row, so an erasure anywhere is honoured at
# once; `cipher_from_row` is given the row by its caller.
CACHE_TTL = 60.0
# A cache entry is (expiry, key id, data key), keyed by the profile id as an integer: atoms only,
# which the garbage collector stops tracking, so it never walks the cache. Kept as UUID keys
# and (expiry, FieldCipher) values, a full cache was 600,000 objects that every full collection
# walked: a third of a 1,000,000-profile export's CPU.


FIRST_KEY_ID = 1  # a profile's first data key; erasure destroys keys, rotation re-wraps them


def _dek_context(profile_id: uuid.UUID, key_id: int) -> bytes:
    return b"dek|%s|%d" % (str(profile_id).encode(), key_id)


def mint_data_key(
    master: MasterKey, profile_id: uuid.UUID, key_id: int = FIRST_KEY_ID
) -> tuple[bytes, bytes]:
    """(data key, the key wrapped by the master key for this profile and key id)."""
    key = new_data_key()
    return key, master.wrap(key, _dek_context(profile_id, key_id))


class Keyring:
    def __init__(self, master: MasterKey, roots: dict[str, bytes]) -> None:
        self.master = master
        index_root = roots["index_root"]
        self.indexer = BlindIndexer(hkdf(index_root, b"cdp/blind-index/v1"))
        self.token_key = hkdf(index_root, b"cdp/tokens/v1")
        self.system = FieldCipher(roots["system_key"], 1, SYSTEM_OWNER)
        self._keys: OrderedDict[int, tuple[float, int, bytes]] = OrderedDict()

    # data keys -------------------------------------------------------------------------
    def new_profile_key(self, profile_id: uuid.UUID) -> tuple[FieldCipher, dict]:
        key_id = FIRST_KEY_ID
        key, wrapped = mint_data_key(self.master, profile_id, key_id)
        cipher = FieldCipher(key, key_id, str(profile_id))
        self._remember(profile_id, key_id, key)
        row = {
            "profile_id": profile_id,
            "key_id": key_id,
            "master_key_id": self.master.key_id,
            "wrapped": wrapped,
            "created_at": utcnow(),
        }
        return cipher, row

    def adopt(self, profile_id: uuid.UUID, key: bytes, key_id: int = FIRST_KEY_ID) -> FieldCipher:
        """The cipher of a data key minted for a new profile by an import worker (the key's
        wrapped form is stored with the profile, as `new_profile_key` does)."""
        cipher = FieldCipher(key, key_id, str(profile_id))
        self._remember(profile_id, key_id, key)
        return cipher

    def worker_kek(self) -> tuple[str, bytes] | None:
        """What an import worker of this deployment needs to mint wrapped data keys
        (MasterKey.export_kek); None where workers must not encrypt."""
        return self.master.export_kek()

    def cipher_from_row(
        self, profile_id: uuid.UUID, key_id: int, wrapped: bytes, *, remember: bool = True
    ) -> FieldCipher:
        """The profile's cipher: from the cache, else unwrapped (and cached, unless the caller
        reads each profile once, as an export does: a scan would only evict the keys others
        use again)."""
        hit = self._cached_key(profile_id)
        if hit is not None and hit[0] == key_id:
            key = hit[1]
        else:
            try:
                key = self.master.unwrap(wrapped, _dek_context(profile_id, key_id))
            except WrongMasterKeyError as exc:  # the master key opened the roots at start-up
                raise CryptoError(
                    f"the data key of profile {profile_id} (key id {key_id}) does not open "
                    "under this master key: altered, copied from another profile, or wrapped "
                    "by another master key"
                ) from exc
            if remember:
                self._remember(profile_id, key_id, key)
        return FieldCipher(key, key_id, str(profile_id))

    async def ciphers(
        self, conn: AsyncConnection, profile_ids: Iterable[uuid.UUID]
    ) -> dict[uuid.UUID, FieldCipher]:
        """Data keys of these profiles as the database holds them now: a profile whose key was
        destroyed is absent, whichever process destroyed it (an erasure by `cdp dsr run` or by
        another API process), and leaves the cache. The cache only saves the unwrapping; it
        never stands in for the key's row, so an erased customer's data is unreadable here from
        the moment the erasure commits."""
        wanted = list(set(profile_ids))
        found: dict[uuid.UUID, FieldCipher] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = await conn.execute(
                select(
                    profile_keys.c.profile_id, profile_keys.c.key_id, profile_keys.c.wrapped
                ).where(profile_keys.c.profile_id.in_(chunk))
            )
            for pid, key_id, wrapped in rows:
                try:
                    found[pid] = self.cipher_from_row(pid, key_id, wrapped)
                except CryptoError:  # rotated under this process (503), else that row (500)
                    await self.check_current(conn, lock=False)
                    raise
        for pid in wanted:
            if pid not in found:
                self.forget(pid)
        return found

    async def check_current(self, conn: AsyncConnection, *, lock: bool = True) -> None:
        """Before this process stores data keys wrapped by its master key: the key ring must
        still be under that key. After `cdp keys rotate-master` a service that kept running on
        the old key would otherwise store keys that the new one cannot unwrap. PostgreSQL: a
        share lock on the key ring's row, so a rotation and this transaction take turns."""
        stmt = select(keyring_table.c.master_key_id).where(keyring_table.c.name == ROOTS[0])
        if lock and conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update(read=True)
        if (await conn.execute(stmt)).scalar_one() != self.master.key_id:
            raise MasterKeyRotated(MASTER_KEY_ROTATED)

    def forget(self, profile_id: uuid.UUID) -> None:
        self._keys.pop(profile_id.int, None)

    def _cached_key(self, profile_id: uuid.UUID) -> tuple[int, bytes] | None:
        """(key id, data key) of the profile while cached."""
        slot = profile_id.int
        hit = self._keys.get(slot)
        if hit is None:
            return None
        expiry, key_id, key = hit
        if expiry < time.monotonic():
            del self._keys[slot]
            return None
        return key_id, key

    def _remember(self, profile_id: uuid.UUID, key_id: int, key: bytes) -> None:
        slot = profile_id.int
        self._keys[slot] = (time.monotonic() + CACHE_TTL, key_id, key)
        self._keys.move_to_end(slot)
        if len(self._keys) > _CACHE_SIZE:
            self._keys.popitem(last=False)


async def open_keyring(db: Database, master: MasterKey) -> Keyring:
    """Load (or on first use create) the root secrets; refuse a master key that does not fit."""
    async with db.read() as conn:
        rows = (await conn.execute(select(keyring_table))).mappings().all()
    if not rows:
        try:
            async with db.write() as conn:
                await conn.execute(
                    insert(keyring_table),
                    [
                        {
                            "name": name,
                            "master_key_id": master.key_id,
                            "wrapped": master.wrap(os.urandom(32), name.encode()),
                            "created_at": utcnow(),
                        }
                        for name in ROOTS
                    ],
                )
            log.info("keyring_created", master_key_id=master.key_id)
        except IntegrityError:
            pass  # another process created it first
        async with db.read() as conn:
            rows = (await conn.execute(select(keyring_table))).mappings().all()
    by_name = {r["name"]: r for r in rows}
    roots: dict[str, bytes] = {}
    for name in ROOTS:
        row = by_name.get(name)
        if row is None:
            raise WrongMasterKeyError(f"keyring entry {name!r} is missing from the database")
        if row["master_key_id"] != master.key_id:
            raise WrongMasterKeyError(
                "CDP_MASTER_KEY does not match this database: it was initialised with master "
                f"key id {row['master_key_id']}, the configured key has id {master.key_id}"
            )
        roots[name] = master.unwrap(row["wrapped"], name.encode())
    return Keyring(master, roots)


async def rotate_master_key(db: Database, old: MasterKey, new: MasterKey) -> int:
    """Re-wrap every root and data key under `new`. Field ciphertext is not touched.

    Resumable: run again with the same two keys after the key ring has moved to `new`, it
    re-wraps whatever data keys are still under `old` (a service that kept running on the old
    key may have stored some before it noticed: `Keyring.check_current`). On PostgreSQL the key
    ring's rows are updated first, so a service's check waits for the rotation to commit."""
    if new.key_id == old.key_id:  # it would re-wrap the same keys again, without end
        raise InvalidInput.field("new master key", "is the master key in use: nothing to rotate")
    rewrapped = 0
    async with db.write() as conn:
        for row in (await conn.execute(select(keyring_table))).mappings().all():
            if row["master_key_id"] == new.key_id:
                continue  # rotated already: this run finishes the data keys
            if row["master_key_id"] != old.key_id:
                raise WrongMasterKeyError("the old master key does not match this database")
            secret = old.unwrap(row["wrapped"], row["name"].encode())
            await conn.execute(
                update(keyring_table)
                .where(keyring_table.c.name == row["name"])
                .values(master_key_id=new.key_id, wrapped=new.wrap(secret, row["name"].encode()))
            )
        stmt = (
            update(profile_keys)
            .where(profile_keys.c.profile_id == bindparam("pid"))
            .where(profile_keys.c.key_id == bindparam("kid"))
            .values(wrapped=bindparam("w"), master_key_id=new.key_id)
        )
        while True:  # in batches: constant memory however many customers
            rows = (
                await conn.execute(
                    select(profile_keys.c.profile_id, profile_keys.c.key_id, profile_keys.c.wrapped)
                    .where(profile_keys.c.master_key_id == old.key_id)
                    .limit(5000)
                )
            ).all()
            if not rows:
                break
            batch = []
            for pid, key_id, wrapped in rows:
                ctx = _dek_context(pid, key_id)
                batch.append(
                    {"pid": pid, "kid": key_id, "w": new.wrap(old.unwrap(wrapped, ctx), ctx)}
                )
            await conn.execute(stmt, batch)
            rewrapped += len(batch)
    log.info("master_key_rotated", old_key_id=old.key_id, new_key_id=new.key_id, keys=rewrapped)
    return rewrapped
