"""The key store: the half of every customer's data key that is kept outside the database.

Crypto-shredding only reaches the copies of a database (backups, replicas, a dump an operator
made) if the key it destroys was never in them. A profile's data key was wrapped by the master
key and stored in the database: a backup taken before an erasure held it, and restored with the
same master key it gave the customer back. So the data key K of a profile is split in two:

    K = D xor S

D is wrapped by the master key and stored in the database (`profile_keys`, as before); S, the
share, is 32 random bytes kept here, in a database of its own (CDP_KEY_STORE_URL) that the main
database's backups, dumps and replicas do not contain. Either half alone says nothing about K
(a one-time pad), so S needs no wrapping: a copy of the key store alone reads nothing either.
An erasure destroys D in the database, then S here (consent.dsr.erasure): every copy of the
database made before it, which still holds D and the ciphertext, is unreadable from then on.

The same table keeps, under an outbox event's id, the share of the key that seals the address
of an opt-out no customer held (consent.outbox.sealed): destroyed when that address is
forgotten, so that copies of the database taken while it waited are unreadable too.

The key store also keeps a tombstone of every erased profile (its id and time, nothing
personal), numbered in order, written before the database's erasure commits. A database
restored from a backup taken before an erasure still holds that customer's rows: at start-up,
and after each erasure, the platform erases again every profile tombstoned after the last
number the database has honoured, and destroys their shares (consent.dsr.restore). A share
left behind by a process that died between the two commits is destroyed the same way.

The key store must outlive the database's backups without being rolled back with them: keep it
on another disk or server, replicate it, and keep its own backups only as long as an erasure
may take to honour (docs/design.md, "Backups and the key store"). Its three tables are defined
here and created when the store is first opened (cdp.key_store_open, which also refuses a store
that is not the database's), not by Alembic; `key_store_meta` keeps their version.
"""

from __future__ import annotations

import functools
import os
import struct
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import ParamSpec, TypeVar

import structlog
from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Uuid,
    delete,
    insert,
    select,
)

from cdp.db.availability import KeyStoreDown, database_unavailable, write_refused
from cdp.db.bulk import bulk_insert_rows
from cdp.db.engine import Database, overwrite_deleted, xact_lock
from cdp.db.types import UTCDateTime
from cdp.ids import utcnow

log = structlog.get_logger(__name__)

SHARE_BYTES = 32
SCHEMA_VERSION = "1"

store_metadata = MetaData()
_SEQ = BigInteger().with_variant(Integer, "sqlite")  # SQLite numbers INTEGER PRIMARY KEY rows

key_store_meta = Table(
    "key_store_meta",
    store_metadata,
    Column("name", String(32), primary_key=True),
    Column("value", String(64), nullable=False),
)

key_shares = Table(
    "key_shares",
    store_metadata,
    Column("profile_id", Uuid, primary_key=True),
    Column("share", LargeBinary(SHARE_BYTES), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

SHARE_COLUMNS = ("profile_id", "share", "created_at")
# PostgreSQL: the shares of an array of profile ids as ONE bytea of (position in the array,
# share) pairs, with a join on the array rather than "= ANY($1)" (the generic plan of a
# prepared statement may scan the table for an array parameter). A row per share cost a segment
# export about 2 µs of Python per member; (id, share) pairs about 1.2, looking each id up by
# its bytes; (position, share) pairs, read with struct, 0.6.
_SHARES_OF_ARRAY = (
    "SELECT string_agg(int4send(wanted.n::int4) || k.share, ''::bytea) "
    "FROM unnest($1::uuid[]) WITH ORDINALITY AS wanted(id, n) "
    "JOIN key_shares AS k ON k.profile_id = wanted.id"
)
_POSITION_AND_SHARE = struct.Struct(f">I{SHARE_BYTES}s")

erased_profiles = Table(
    "erased_profiles",
    store_metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("profile_id", Uuid, nullable=False, unique=True),
    Column("erased_at", UTCDateTime, nullable=False),
)


FIRST_KEY_ID = 1  # a profile's first data key; an unmerge gives its holder the next
_LATER_SHARES = uuid.UUID("6b1f3a52-2f7e-4c1b-9a57-0c4d1e8f2a10")


def share_id(profile_id: uuid.UUID, key_id: int) -> uuid.UUID:
    """Where the store keeps the share of a profile's data key: its first key's under the
    profile's own id; a later key's under an id derived from (profile id, key id), so that the
    share of the key an unmerge replaces is still there until the database commits the new one
    (cdp.profiles.rekey). A share not under its profile's id is destroyed by way of
    `key_share_owners` (consent.dsr.shares)."""
    if key_id == FIRST_KEY_ID:
        return profile_id
    return uuid.uuid5(_LATER_SHARES, f"{profile_id}/{key_id}")


def new_share() -> bytes:
    return os.urandom(SHARE_BYTES)


def split_key(key: bytes) -> tuple[bytes, bytes]:
    """(the half stored in the database, the share kept in the key store) of a data key."""
    share = new_share()
    return xor(key, share), share


def xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


P = ParamSpec("P")
T = TypeVar("T")
KEY_STORE_DOWN = "the key store is not reachable (CDP_KEY_STORE_URL)"


def _naming_the_store(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """The key store's outage raised as KeyStoreDown: a request it fails is answered 503
    naming CDP_KEY_STORE_URL (api.errors). It said "the database is not reachable" while the
    database was fine and only the key store was away."""

    @functools.wraps(method)
    async def naming(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except KeyStoreDown:  # from a method this one calls: already said
            raise
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            why = write_refused(exc)
            down = f"the key store cannot store changes now ({why}; CDP_KEY_STORE_URL)"
            raise KeyStoreDown(down if why else KEY_STORE_DOWN) from exc

    return naming


class KeyStore:
    """Shares and tombstones, in their own database."""

    def __init__(self, db: Database, store_id: str) -> None:
        self.db = db
        self.store_id = store_id

    @_naming_the_store
    async def ping(self) -> None:
        """Raises unless the key store's database answers and can store a share (/health, GET
        /metrics): a key store whose disk is full or that is read-only refuses every new
        customer (Database.check_writable)."""
        async with self.db.read() as conn:
            await conn.exec_driver_sql("SELECT 1")
            await self.db.check_writable(conn)

    @_naming_the_store
    async def put(self, shares: Iterable[tuple[uuid.UUID, bytes]]) -> None:
        """Keep the shares of new data keys; committed before the database stores the keys'
        other halves, so a key is never stored without its share."""
        now = utcnow()
        rows = [(pid, share, now) for pid, share in shares]
        if not rows:
            return
        async with self.db.write() as conn:  # at driver speed: an import stores thousands
            await bulk_insert_rows(conn, key_shares, SHARE_COLUMNS, rows)

    @_naming_the_store
    async def keep_first(self, shares: Iterable[tuple[uuid.UUID, bytes]]) -> dict[uuid.UUID, bytes]:
        """Keep these shares for the profiles that have none yet, and return the share each
        profile has in the store afterwards (`cdp keys split`): a share once kept is never
        replaced, so that two runs at once, or a run resumed after one that was interrupted,
        derive the database's half from the same share."""
        offered = dict(shares)
        if not offered:
            return {}
        now = utcnow()
        rows = [(pid, share, now) for pid, share in offered.items()]
        async with self.db.write() as conn:
            await bulk_insert_rows(conn, key_shares, SHARE_COLUMNS, rows, ignore_conflicts=True)
        return await self.get(offered)

    @_naming_the_store
    async def get(self, profile_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, bytes]:
        """The shares of these profiles that the store holds. At driver level, in one
        statement without a transaction: a segment export asks for every page's members, and
        through SQLAlchemy's IN (4.5 µs of CPU a profile) it halved the export's speed."""
        wanted = list(profile_ids)
        found: dict[uuid.UUID, bytes] = {}
        if not wanted:
            return found
        async with self.db.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            if conn.dialect.name == "postgresql":
                raw = (await conn.get_raw_connection()).driver_connection
                blob = await raw.fetchval(_SHARES_OF_ARRAY, wanted)
                if blob:  # (position in `wanted` from 1, share) after one another
                    found.update(
                        (wanted[n - 1], share) for n, share in _POSITION_AND_SHARE.iter_unpack(blob)
                    )
                return found
            for start in range(0, len(wanted), 500):
                by_hex = {pid.hex: pid for pid in wanted[start : start + 500]}
                marks = ", ".join("?" * len(by_hex))
                result = await conn.exec_driver_sql(
                    f"SELECT profile_id, share FROM key_shares WHERE profile_id IN ({marks})",
                    tuple(by_hex),
                )
                found.update((by_hex[h], share) for h, share in result)
        return found

    @_naming_the_store
    async def tombstone(self, profile_ids: Iterable[uuid.UUID], at: datetime) -> None:
        """Record that these profiles are being erased, before the database's erasure commits:
        from here on a database that still holds them (the erasure rolled back, or the
        database was restored from a backup) erases them again (consent.dsr.restore)."""
        pids = sorted(set(profile_ids))
        if not pids:
            return
        async with self.db.write() as conn:
            # numbers commit in their order: a process reconciling meanwhile never passes a
            # number that commits after it
            await xact_lock(conn, 7306147270213303)
            known = set(
                (
                    await conn.execute(
                        select(erased_profiles.c.profile_id).where(
                            erased_profiles.c.profile_id.in_(pids)
                        )
                    )
                ).scalars()
            )
            fresh = [{"profile_id": pid, "erased_at": at} for pid in pids if pid not in known]
            if fresh:
                await conn.execute(insert(erased_profiles), fresh)

    @_naming_the_store
    async def destroy(self, profile_ids: Iterable[uuid.UUID]) -> None:
        """Destroy the shares of these profiles, once the database's erasure has committed:
        from here on no copy of the database can read them, whoever holds the master key."""
        pids = sorted(set(profile_ids))
        if not pids:
            return
        async with self.db.write() as conn:
            await overwrite_deleted(conn)
            for start in range(0, len(pids), 1000):
                chunk = pids[start : start + 1000]
                await conn.execute(delete(key_shares).where(key_shares.c.profile_id.in_(chunk)))
        # and no older version of their pages left in SQLite's -wal (tried again next time)
        await self.db.purge_wal(after="key_store_shares_destroyed")

    @_naming_the_store
    async def tombstones_after(self, seq: int, limit: int = 1000) -> list[tuple[int, uuid.UUID]]:
        """(number, profile id) of erasures after `seq`, in order."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(erased_profiles.c.seq, erased_profiles.c.profile_id)
                .where(erased_profiles.c.seq > seq)
                .order_by(erased_profiles.c.seq)
                .limit(limit)
            )
            return [(int(n), pid) for n, pid in rows]

    async def close(self) -> None:
        await self.db.dispose()
