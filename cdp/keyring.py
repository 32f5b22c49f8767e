"""The runtime key ring: master key, blind-index key, token key and per-profile data keys.

Root secrets (the blind-index root and the system data key) are random, stored in `keyring`
wrapped by the master key, so rotating the master key re-wraps them instead of changing every
blind index (suppressions of never-seen addresses could not be recomputed). The blind-index and
token keys are derived from that root with HKDF and exist only in memory. A master key that
cannot unwrap the root is refused at start-up.

A profile's data key is split (cdp.key_store): `profile_keys` holds one half wrapped by the
master key, the key store the other, so that destroying the share in the key store makes every
copy of the database unreadable for that profile. Keys stored before the key store existed are
whole (`split` false) until `cdp keys split` moves their other half out.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime

import structlog
from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.blind_index import BlindIndexer
from cdp.crypto.fields import CryptoError, FieldCipher, new_data_key
from cdp.crypto.master import MasterKey, WrongMasterKeyError, hkdf
from cdp.db.engine import Database, overwrite_deleted
from cdp.db.partial import is_not
from cdp.db.tables import keyring as keyring_table
from cdp.db.tables import profile_keys
from cdp.errors import DomainError, Gone, InvalidInput
from cdp.ids import utcnow
from cdp.key_store import FIRST_KEY_ID, KeyStore, new_share, share_id, split_key, xor

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
_clock = time.monotonic
# An expired key leaves the cache within CACHE_TTL / 4 of expiring, looked up again or not
# (`_sweep`, on each key remembered and on a timer while any is cached): an erasure made by
# another process (`cdp dsr run`, the supervisor of `cdp serve --workers`, another API
# process) forgets the key there, not here, and an idle process kept an erased customer's
# unwrapped key in memory until 200,000 newer keys pushed it out.
# A cache entry is (expiry, key id, data key), keyed by the profile id as an integer: atoms only,
# which the garbage collector stops tracking, so it never walks the cache. Kept as UUID keys
# and (expiry, FieldCipher) values, a full cache was 600,000 objects that every full collection
# walked: a third of a 1,000,000-profile export's CPU.


def _dek_context(profile_id: uuid.UUID, key_id: int) -> bytes:
    return b"dek|%s|%d" % (str(profile_id).encode(), key_id)


class KeyShareMissing(CryptoError):
    """A live profile's data key has its database half but no share in the key store."""


def mint_data_key(
    master: MasterKey, profile_id: uuid.UUID, key_id: int = FIRST_KEY_ID
) -> tuple[bytes, bytes, bytes]:
    """(data key, its database half wrapped by the master key for this profile and key id,
    its share for the key store)."""
    key = new_data_key()
    half, share = split_key(key)
    return key, master.wrap(half, _dek_context(profile_id, key_id)), share


_pk = profile_keys.c
# built once: building one per call cost more than the driver's whole round trip
_KEY_ROWS = select(_pk.profile_id, _pk.key_id, _pk.wrapped, _pk.split).where(
    _pk.profile_id.in_(bindparam("ids", expanding=True))
)


class Keyring:
    def __init__(
        self, master: MasterKey, roots: dict[str, bytes], store: KeyStore | None = None
    ) -> None:
        self.master = master
        self.store = store
        index_root = roots["index_root"]
        self.indexer = BlindIndexer(hkdf(index_root, b"cdp/blind-index/v1"))
        self.token_key = hkdf(index_root, b"cdp/tokens/v1")
        self.system = FieldCipher(roots["system_key"], 1, SYSTEM_OWNER)
        self._system_key = roots["system_key"]
        # in order of expiry (each entry is moved to the end as it is remembered)
        self._keys: OrderedDict[int, tuple[float, int, bytes]] = OrderedDict()
        self._sweeper: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None

    # data keys -------------------------------------------------------------------------
    def new_profile_key(self, profile_id: uuid.UUID) -> tuple[FieldCipher, dict]:
        """A new data key: its cipher, and its `profile_keys` row plus its "share", which
        `store_shares` keeps in the key store before the row is inserted."""
        key_id = FIRST_KEY_ID
        key, wrapped, share = mint_data_key(self.master, profile_id, key_id)
        cipher = FieldCipher(key, key_id, str(profile_id))
        self._remember(profile_id, key_id, key)
        row = {
            "profile_id": profile_id,
            "key_id": key_id,
            "master_key_id": self.master.key_id,
            "wrapped": wrapped,
            "created_at": utcnow(),
            "split": True,
            "share": share,
        }
        return cipher, row

    async def store_shares(self, shares: list[tuple[uuid.UUID, bytes]]) -> dict[uuid.UUID, bytes]:
        """Keep new keys' shares in the key store; before their rows are inserted (the key
        store commits first, so no stored key lacks its share). A share the store holds
        already under an id is kept, never replaced: one left by a run of the same write that
        rolled back (a transaction run again keeps the ids it drew, cdp.db.group_commit), or
        the share of a key that did commit. Returns those, by id, where they differ from the
        share offered: the caller pairs its key with the kept share (`paired_half`)."""
        shares = [(pid, share) for pid, share in shares if share is not None]
        if not shares:
            return {}
        try:
            await self._key_store().put(shares)
            return {}
        except IntegrityError:
            kept = await self._key_store().keep_first(shares)
        return {pid: kept[pid] for pid, share in shares if kept.get(pid, share) != share}

    def paired_half(
        self, profile_id: uuid.UUID, key_id: int, wrapped: bytes, offered: bytes, kept: bytes
    ) -> bytes:
        """The wrapped database half of a data key drawn with share `offered` (`wrapped`),
        made to pair with share `kept` instead: the same key, split the other way."""
        ctx = _dek_context(profile_id, key_id)
        half = self.master.unwrap(wrapped, ctx)
        return self.master.wrap(xor(half, xor(offered, kept)), ctx)

    async def next_key(
        self, conn: AsyncConnection, profile_id: uuid.UUID, old: FieldCipher
    ) -> tuple[FieldCipher, bool]:
        """A new data key for a profile (key id one up), in the caller's write transaction,
        which holds the profile's lock: (its cipher, whether the old key was split). Its share
        is kept in the key store first, under an id of its own (`share_id`), and commits at
        once: the old key's share is still there should this transaction roll back, and a
        share left by an attempt that rolled back is used again. Its row replaces the old
        key's; the caller re-encrypts what was under `old` (cdp.profiles.rekey)."""
        await self.check_current(conn)
        pk = profile_keys.c
        old_split = (
            await conn.execute(
                select(pk.split).where(pk.profile_id == profile_id, pk.key_id == old.key_id)
            )
        ).scalar_one()
        key_id = old.key_id + 1
        sid = share_id(profile_id, key_id)
        share = (await self._key_store().keep_first([(sid, new_share())])).get(sid)
        if share is None:  # only an erasure destroys a share, and it waits for our lock
            raise CryptoError(f"the key store lost the new share of profile {profile_id}")
        key = new_data_key()
        wrapped = self.master.wrap(xor(key, share), _dek_context(profile_id, key_id))
        await conn.execute(delete(profile_keys).where(pk.profile_id == profile_id))
        await conn.execute(
            insert(profile_keys).values(
                profile_id=profile_id,
                key_id=key_id,
                master_key_id=self.master.key_id,
                wrapped=wrapped,
                created_at=utcnow(),
                split=True,
            )
        )
        self.forget(profile_id)
        return FieldCipher(key, key_id, str(profile_id)), old_split

    async def tombstone(self, profile_ids: Iterable[uuid.UUID], at: datetime) -> None:
        """Record in the key store that these profiles are being erased (cdp.key_store)."""
        await self._key_store().tombstone(profile_ids, at)

    async def destroy_shares(self, profile_ids: Iterable[uuid.UUID]) -> None:
        """Destroy these shares in the key store: profiles', after their erasure committed;
        sealed values' (`sealing_cipher`), as their values are nulled or deleted."""
        pids = list(profile_ids)
        if not pids:
            return
        await self._key_store().destroy(pids)
        for pid in pids:
            self.forget(pid)

    # keys of one sealed value each (consent.outbox.sealed) ------------------------------
    def sealing_cipher(self, sealed_id: uuid.UUID, share: bytes) -> FieldCipher:
        """The cipher of one value sealed under a key of its own: derived from the system key
        and a share kept in the key store under `sealed_id`. Destroying the share (with
        `destroy_shares`) makes every copy of the sealed value unreadable, which the system
        key alone, never destroyed, could not."""
        key = hkdf(self._system_key + share, b"cdp/sealed/v1|" + sealed_id.bytes)
        return FieldCipher(key, 1, f"sealed:{sealed_id}")

    async def shares_of(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, bytes]:
        """The shares the key store holds under these ids."""
        return await self._key_store().get(ids)

    def _key_store(self) -> KeyStore:
        if self.store is None:
            raise CryptoError("no key store is open: data keys cannot be stored or destroyed")
        return self.store

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
        self,
        profile_id: uuid.UUID,
        key_id: int,
        wrapped: bytes,
        share: bytes | None = None,
        *,
        remember: bool = True,
    ) -> FieldCipher:
        """The profile's cipher: from the cache, else unwrapped (and cached, unless the caller
        reads each profile once, as an export does: a scan would only evict the keys others
        use again). `share`: the key store's half of a split key (None: a key stored whole).
        The caller has checked that a split key's share exists: where it does not, the
        profile was erased and its data reads as nothing."""
        hit = self._cached_key(profile_id)
        if hit is not None and hit[0] == key_id:
            key = hit[1]
        else:
            try:
                key = self.master.unwrap(wrapped, _dek_context(profile_id, key_id))
                if share is not None:
                    key = xor(key, share)
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
        self,
        conn: AsyncConnection,
        profile_ids: Iterable[uuid.UUID],
        *,
        strict: bool = False,
        fresh: bool = False,
    ) -> dict[uuid.UUID, FieldCipher]:
        """Data keys of these profiles as the database holds them now: a profile whose key was
        destroyed is absent, whichever process destroyed it (an erasure by `cdp dsr run` or by
        another API process), and leaves the cache. The cache only saves the unwrapping; it
        never stands in for the key's row, so an erased customer's data is unreadable here from
        the moment the erasure commits.

        `strict`: for writers, which hold the profiles' locks (no erasure can be under way):
        a profile whose key row is there but whose share the key store lacks (a key store
        put back from an older copy) raises instead of reading as erased, so that nothing
        of it is stored under another key (the system key's ciphertext outlives erasure).

        `fresh`: the key store is asked for the share of every split key, cached or not (a
        cached key then only saves the unwrapping)."""
        wanted = list(set(profile_ids))
        found: dict[uuid.UUID, FieldCipher] = {}
        for start in range(0, len(wanted), 500):
            rows = (await conn.execute(_KEY_ROWS, {"ids": wanted[start : start + 500]})).all()
            # the key store's halves of the keys not cached; a share destroyed by an erasure
            # that has not committed in the database yet reads as erased
            unknown = {
                share_id(pid, key_id): pid
                for pid, key_id, _, split in rows
                if split and (fresh or not self._has(pid, key_id))
            }
            shares = await self._key_store().get(unknown) if unknown else {}
            for pid, key_id, wrapped, split in rows:
                sid = share_id(pid, key_id) if split else None
                share = shares.get(sid) if split else None
                if split and share is None and sid in unknown:
                    if strict:
                        raise KeyShareMissing(
                            f"the key store holds no share of the data key of profile {pid}, "
                            "whose key the database still holds: was the key store put back "
                            "from an older copy? (docs/design.md, 'Backups and the key store')"
                        )
                    continue  # shredded
                try:
                    found[pid] = self.cipher_from_row(pid, key_id, wrapped, share)
                except CryptoError:  # rotated under this process (503), else that row (500)
                    await self.check_current(conn, lock=False)
                    raise
        for pid in wanted:
            if pid not in found:
                self.forget(pid)
        return found

    async def reader_cipher(self, conn: AsyncConnection, profile_id: uuid.UUID) -> FieldCipher:
        """The data key of one profile a reader has found standing. Its transaction may have
        begun before an erasure committed and destroyed the key since: Gone, as for a profile
        found erased. The key store is asked for the key's share even when this process
        caches the key (`fresh`): on SQLite the reader's snapshot still holds the key's row,
        and the cache (filled before the erasure, or by a process that did not erase) would
        hand the key out for up to a minute."""
        cipher = (await self.ciphers(conn, [profile_id], fresh=True)).get(profile_id)
        if cipher is None:
            raise Gone("this profile was erased")
        return cipher

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

    def _has(self, profile_id: uuid.UUID, key_id: int) -> bool:
        hit = self._cached_key(profile_id)
        return hit is not None and hit[0] == key_id

    def forget(self, profile_id: uuid.UUID) -> None:
        self._keys.pop(profile_id.int, None)

    def _cached_key(self, profile_id: uuid.UUID) -> tuple[int, bytes] | None:
        """(key id, data key) of the profile while cached."""
        slot = profile_id.int
        hit = self._keys.get(slot)
        if hit is None:
            return None
        expiry, key_id, key = hit
        if expiry < _clock():
            del self._keys[slot]
            return None
        return key_id, key

    def _remember(self, profile_id: uuid.UUID, key_id: int, key: bytes) -> None:
        slot = profile_id.int
        now = _clock()
        self._keys[slot] = (now + CACHE_TTL, key_id, key)
        self._keys.move_to_end(slot)
        if len(self._keys) > _CACHE_SIZE:
            self._keys.popitem(last=False)
        self._sweep(now)
        self._schedule_sweep(now)

    def _sweep(self, now: float) -> None:
        """Drop the expired keys: those at the front, the cache being in order of expiry."""
        keys = self._keys
        while keys:
            slot, (expiry, _, _) = next(iter(keys.items()))
            if expiry >= now:
                return
            del keys[slot]

    def _schedule_sweep(self, now: float) -> None:
        """While keys are cached, a timer on the running event loop (if any: an import worker
        has none, and sweeps as it remembers) sweeps when the oldest expires, at most every
        CACHE_TTL / 4."""
        if not self._keys:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._sweeper is not None:
            if self._sweeper[0] is loop and not self._sweeper[1].cancelled():
                return
            self._sweeper[1].cancel()  # scheduled on a loop that is gone
        oldest = next(iter(self._keys.values()))[0]
        delay = max(oldest - now, CACHE_TTL / 4)
        self._sweeper = (loop, loop.call_later(delay, self._on_sweep_timer))

    def _on_sweep_timer(self) -> None:
        self._sweeper = None
        now = _clock()
        self._sweep(now)
        self._schedule_sweep(now)

    def close(self) -> None:
        """Forget every cached key and stop the sweep timer."""
        self._keys.clear()
        if self._sweeper is not None:
            self._sweeper[1].cancel()
            self._sweeper = None


async def open_keyring(
    db: Database,
    master: MasterKey,
    store: KeyStore | None = None,
    *,
    master_name: str = "CDP_MASTER_KEY",
    advice: str = "",
) -> Keyring:
    """Load (or on first use create) the root secrets; refuse a master key that does not fit,
    naming it `master_name` (and saying `advice`)."""
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
                f"{master_name} does not match this database: it was initialised with master "
                f"key id {row['master_key_id']}, this key has id {master.key_id}"
                + (f"; {advice}" if advice else "")
            )
        roots[name] = master.unwrap(row["wrapped"], name.encode())
    return Keyring(master, roots, store)


def unrotatable(profile_id: uuid.UUID, key_id: int) -> str:
    """Why a rotation stopped at one data key that the current master key, which opened the
    key ring, does not open (its row altered, or copied from another profile)."""
    return (
        f"the data key of profile {profile_id} (key id {key_id}) does not open under the "
        "current master key, though the key ring does: that row of profile_keys was altered or "
        "copied from another profile. Nothing was rotated; put the row back as it was (from a "
        "backup) and run the command again"
    )


async def rotate_master_key(db: Database, old: MasterKey, new: MasterKey) -> int:
    """Re-wrap every root and data key under `new`. Field ciphertext is not touched.

    Resumable: run again with the same two keys after the key ring has moved to `new`, it
    re-wraps whatever data keys are still under `old` (a service that kept running on the old
    key may have stored some before it noticed: `Keyring.check_current`). On PostgreSQL the key
    ring's rows are updated first, so a service's check waits for the rotation to commit.

    A rotation is for a master key that may have leaked, so no copy of a key wrapped under the
    old one may stay on disk: on SQLite the old rows are overwritten (`secure_delete`) and the
    WAL, which held every page as it was before (each data key's database half and the roots,
    wrapped under the old key, for as long as any process kept the database open), is
    checkpointed and truncated afterwards (`Database.purge_wal`), as after an erasure."""
    if new.key_id == old.key_id:  # it would re-wrap the same keys again, without end
        raise InvalidInput.field("new master key", "is the master key in use: nothing to rotate")
    rewrapped = 0
    async with db.write() as conn:
        await overwrite_deleted(conn)
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
                try:
                    key = old.unwrap(wrapped, ctx)
                except WrongMasterKeyError as exc:  # the key ring opened: this row is at fault
                    raise CryptoError(unrotatable(pid, key_id)) from exc
                batch.append({"pid": pid, "kid": key_id, "w": new.wrap(key, ctx)})
            await conn.execute(stmt, batch)
            rewrapped += len(batch)
    log.info("master_key_rotated", old_key_id=old.key_id, new_key_id=new.key_id, keys=rewrapped)
    await db.purge_wal(after="master_key_rotation")
    return rewrapped


async def split_whole_keys(db: Database, master: MasterKey, store: KeyStore) -> int:
    """Move the other half of every data key stored whole (before the key store existed) into
    the key store: `cdp keys split`. Field ciphertext is not touched: the key stays the same,
    only where its halves are kept changes. In batches; resumable, as each batch's shares
    commit in the key store before the database's rows say the keys are split (a share
    written for a row left whole is used by the next run), and safe to run twice at once: a
    share once kept is never replaced. Returns the keys split.

    On SQLite the whole keys are overwritten (`secure_delete`) and the WAL, which held them as
    they were (for as long as any process kept the database open), is checkpointed and
    truncated afterwards (`Database.purge_wal`): a copy of the database taken then could
    otherwise read, with the master key alone, a customer erased since."""
    pk = profile_keys.c
    done = 0
    while True:
        async with db.read() as conn:
            rows = (
                await conn.execute(
                    select(pk.profile_id, pk.key_id, pk.wrapped)
                    .where(is_not(pk.split), pk.master_key_id == master.key_id)
                    .limit(1000)
                )
            ).all()
        if not rows:
            break
        offered, halves = [], {}
        for pid, key_id, wrapped in rows:
            ctx = _dek_context(pid, key_id)
            key = master.unwrap(wrapped, ctx)
            offered.append((share_id(pid, key_id), new_share()))
            halves[pid] = (key_id, key)
        # the share already kept for a profile, if any (another run, or an interrupted one,
        # kept it), else the one offered: the database's half must pair with the stored one
        kept = await store.keep_first(offered)
        updates = []
        for pid, (key_id, key) in halves.items():
            share = kept.get(share_id(pid, key_id))
            if share is None:  # destroyed meanwhile: the profile is being erased
                continue
            ctx = _dek_context(pid, key_id)
            updates.append({"pid": pid, "kid": key_id, "w": master.wrap(xor(key, share), ctx)})
        if not updates:
            break
        async with db.write() as conn:
            await overwrite_deleted(conn)
            await conn.execute(
                update(profile_keys)
                .where(  # as read: not if a master-key rotation re-wrapped it meanwhile
                    pk.profile_id == bindparam("pid"),
                    pk.key_id == bindparam("kid"),
                    pk.split.is_(False),
                    pk.master_key_id == master.key_id,
                )
                .values(wrapped=bindparam("w"), split=True),
                updates,
            )
        done += len(updates)
    log.info("data_keys_split", keys=done)
    if done:
        await db.purge_wal(after="key_split")
    return done


async def whole_keys_left(db: Database) -> bool:
    """Whether any data key is still stored whole (`cdp keys split` has not run since the
    upgrade): such a customer stays readable in backups after an erasure."""
    async with db.read() as conn:
        found = await conn.execute(
            select(profile_keys.c.profile_id).where(is_not(profile_keys.c.split)).limit(1)
        )
        return found.first() is not None
