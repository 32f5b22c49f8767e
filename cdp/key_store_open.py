"""Opening the key store (cdp.key_store) for a database, and refusing one that is not its own.

Beside the database unless CDP_KEY_STORE_URL says where; created at the first start. Every
start checks that the store is the one the database's keys were split with, that it is not
the database itself, not older than the database's erasures, and that it holds the shares of
the newest customers: a wrong store would read as if every customer had been erased, or give
erased customers back. The database remembers the store (`key_store_link`) and the last of its
erasures it has honoured (`reconciled_seq`, consent.dsr.restore).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import structlog
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from cdp.crypto.fields import CryptoError
from cdp.db.engine import DEFAULT_CONNECT_TIMEOUT, Database, xact_lock
from cdp.db.messages import database_message
from cdp.db.tables import key_store_link, profile_keys
from cdp.key_store import (
    SCHEMA_VERSION,
    KeyStore,
    erased_profiles,
    key_shares,
    key_store_meta,
    share_id,
    store_metadata,
)
from cdp.settings import Settings

log = structlog.get_logger(__name__)


class KeyStoreMismatch(CryptoError):
    """The key store configured is not the one this database's data keys were split with."""


class KeyStoreSettingMissing(CryptoError):
    """Production without CDP_KEY_STORE_URL: the default key store lies beside the database."""


def required_key_store_url(settings: Settings) -> str:
    """Where the key store is. In production it must be named: the default lies beside the
    database (the same directory, the same PostgreSQL server), and a backup of the whole
    directory or server then holds both halves of every data key, which no erasure reaches
    (as CDP_MASTER_KEY, which production never invents either)."""
    if settings.is_production and settings.key_store is None:
        raise KeyStoreSettingMissing(
            "CDP_KEY_STORE_URL must be set in production: keep the key store out of the "
            "database's backups, or an erasure does not reach them (docs/design.md, 'Backups and "
            f"the key store'); to keep the store where it is now, {_keep_where_it_is(settings)}"
        )
    return settings.key_store_url


def _keep_where_it_is(settings: Settings) -> str:
    """How to name today's default store, without repeating a password of CDP_DATABASE_URL
    (before the host or in `?password=`): a SQLite file by its URL, a PostgreSQL store as the
    database URL naming the store's database (a masked URL would not work if copied)."""
    store = make_url(settings.key_store_url)
    if store.get_backend_name() == "sqlite":
        return f"set CDP_KEY_STORE_URL={store.set(query={}).render_as_string()}"
    database = make_url(settings.database_url).database
    return (
        f"set CDP_KEY_STORE_URL to CDP_DATABASE_URL with the database name {store.database} "
        f"in place of {database}"
    )


class KeyStoreUnavailable(CryptoError):
    """The key store's database could not be reached at start-up (its message names the
    setting: the main database opened fine)."""


async def _create_postgres_database(url: str) -> None:
    """Create the key store's database on its server, if missing (a CREATEDB role)."""
    parsed = make_url(url)
    admin_url = parsed.set(database="postgres").render_as_string(hide_password=False)
    admin = Database(admin_url, pool_size=1, max_overflow=0)
    try:
        async with admin.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            exists = await conn.exec_driver_sql(
                "SELECT 1 FROM pg_database WHERE datname = $1", (parsed.database,)
            )
            if exists.first() is None:
                name = parsed.database.replace('"', '""')
                try:
                    await conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
                except DBAPIError as exc:  # another process created it first
                    if not _created_meanwhile(exc):
                        raise
    finally:
        await admin.dispose()


def _created_meanwhile(exc: DBAPIError) -> bool:
    """CREATE DATABASE lost a race: 42P04 (it exists), or 23505 on pg_database's name index
    (both created it at once, and the other committed first)."""
    state = getattr(exc.orig, "sqlstate", None) or ""
    return state in ("42P04", "23505") or "already exists" in str(exc)


def _postgres_missing(exc: BaseException) -> bool:
    return "does not exist" in str(exc) and "database" in str(exc)


async def open_key_store(
    main: Database,
    url: str,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    *,
    pool_size: int,
) -> KeyStore:
    """Open the database's key store, creating it on first use, and check that it is the
    one the database's keys were split with (a wrong CDP_KEY_STORE_URL, or a store lost or
    replaced, would read as if every customer had been erased)."""
    async with main.read() as conn:
        linked = (await conn.execute(select(key_store_link.c.store_id))).scalar_one_or_none()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not _sqlite_file_ready(
        Path(parsed.database or ""), create=linked is None
    ):
        raise KeyStoreMismatch(_mismatch(linked, "no key store there (the file does not exist)"))
    # `pool_size` connections kept (Settings.key_store_pool_size), none beyond: an overflow
    # connection is closed when it is given back, and under load the key store opened one
    # for every eighth members page (a PostgreSQL backend, authentication and asyncpg's type
    # introspection each time)
    db = Database(url, pool_size=pool_size, max_overflow=0, connect_timeout=connect_timeout)
    try:
        store_id = await _opened(db, url, create=linked is None)
        if store_id is None:
            raise KeyStoreMismatch(
                _mismatch(linked, "no key store there (the database does not exist)")
            )
        if linked is not None and store_id != linked:
            raise KeyStoreMismatch(
                _mismatch(linked, f"key store {store_id}" if store_id else "an empty key store")
            )
        if linked is None:
            await _link(main, store_id)
        else:
            await _refuse_an_older_store(main, db, store_id)
    except BaseException:
        await db.dispose()
        raise
    return KeyStore(db, store_id)


async def _refuse_an_older_store(main: Database, db: Database, store_id: str) -> None:
    """A key store restored from a copy older than the database has fewer erasures than the
    database has honoured: it holds again the shares of customers erased since (a backup of
    the database taken before their erasure would read them again), lacks those of customers
    created since, and would number its next erasures with numbers the database has passed."""
    async with db.read() as conn:
        last = (await conn.execute(select(func.max(erased_profiles.c.seq)))).scalar_one() or 0
    honoured = await reconciled_seq(main)
    missing = await _newest_keys_without_share(main, db)
    if missing is not None:
        raise KeyStoreMismatch(
            f"the key store {store_id} is older than the database: it holds no share of the "
            f"data key of profile {missing}, one of the newest. It was restored from an older "
            "copy, without the customers created since; put back the key store's latest "
            "state, or point CDP_KEY_STORE_URL at it (docs/design.md, 'Backups and the key store')"
        )
    if last < honoured:
        raise KeyStoreMismatch(
            f"the key store {store_id} is older than the database: its last erasure is number "
            f"{last}, the database has honoured erasures up to number {honoured}. It was "
            "restored from an older copy, which gives back the data keys of customers erased "
            "since; put back the key store's latest state, or point CDP_KEY_STORE_URL at it "
            "(docs/design.md, 'Backups and the key store')"
        )


NEWEST_CHECKED = 100


async def _newest_keys_without_share(main: Database, db: Database) -> uuid.UUID | None:
    """A profile among the newest split data keys whose share the store lacks and that it
    has not tombstoned (read again in the database after the store: an erasure committing
    meanwhile destroys both), or None."""
    pk = profile_keys.c
    async with main.read() as conn:
        newest_keys = (
            await conn.execute(
                select(pk.profile_id, pk.key_id)
                .where(pk.split.is_(True))
                # ids are UUIDv7, in the order profiles were made: the primary key's
                # index read backwards, not a sort of every key by created_at
                .order_by(pk.profile_id.desc())
                .limit(NEWEST_CHECKED)
            )
        ).all()
    if not newest_keys:
        return None
    newest = [pid for pid, _ in newest_keys]
    shares = {share_id(pid, key_id): pid for pid, key_id in newest_keys}
    async with db.read() as conn:
        held = {
            shares[sid]
            for sid in (
                await conn.execute(
                    select(key_shares.c.profile_id).where(key_shares.c.profile_id.in_(shares))
                )
            ).scalars()
        }
        held |= set(  # erased since the database's copy was taken: erased again at start
            (
                await conn.execute(
                    select(erased_profiles.c.profile_id).where(
                        erased_profiles.c.profile_id.in_(newest)
                    )
                )
            ).scalars()
        )
    lacking = [pid for pid in newest if pid not in held]
    if not lacking:
        return None
    async with main.read() as conn:
        still = (
            await conn.execute(
                select(pk.profile_id).where(pk.profile_id.in_(lacking), pk.split.is_(True))
            )
        ).scalars()
        return min(still, default=None)


def _sqlite_file_ready(path: Path, *, create: bool) -> bool:
    """Whether the key store's file may be opened: it exists, or it is to be created (in a
    directory made for it). Opening a missing file would create an empty store."""
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        return True
    return path.exists()


def _mismatch(linked: str | None, found: str) -> str:
    return (
        f"CDP_KEY_STORE_URL does not lead to this database's key store (id {linked}): found "
        f"{found}. Without its key store no customer's data can be read; point "
        "CDP_KEY_STORE_URL at it (docs/design.md, 'Backups and the key store')"
    )


IN_THE_DATABASE = (
    "CDP_KEY_STORE_URL leads to a database of the platform's own (CDP_DATABASE_URL's, or "
    "another platform database): the key store must be a database apart, or a backup of the "
    "database holds both halves of every data key and an erasure reaches none of them "
    "(docs/design.md, 'Backups and the key store')"
)


async def _opened(db: Database, url: str, *, create: bool) -> str | None:
    """`_open`, tried again a few times on SQLite: processes that make a new key store file at
    the same moment (a fresh deployment's service and worker) can find it locked for a moment
    (seen once, four at once in one full test run on a busy machine; not reproduced alone)."""
    for attempt in range(5):
        try:
            return await _open(db, url, create=create)
        except KeyStoreUnavailable:
            if not db.is_sqlite or attempt == 4:
                raise
            await db.dispose()
            await asyncio.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


async def _open(db: Database, url: str, *, create: bool) -> str | None:
    """The store's id ('' if it holds no key store and `create` is false; None if its
    PostgreSQL database does not exist)."""
    try:
        if create:  # one process at a time (several may start at once)
            async with db.read() as conn:
                if await conn.run_sync(lambda c: c.dialect.has_table(c, key_store_link.name)):
                    raise KeyStoreMismatch(IN_THE_DATABASE)
            async with db.engine.connect() as conn:
                conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
                async with conn.begin():
                    await xact_lock(conn, 7306147270213302)
                    await conn.run_sync(store_metadata.create_all)
        async with db.read() as conn:
            found = await conn.run_sync(lambda c: c.dialect.has_table(c, "key_store_meta"))
            if not found:
                return ""
            store_id = (
                await conn.execute(
                    select(key_store_meta.c.value).where(key_store_meta.c.name == "store_id")
                )
            ).scalar_one_or_none()
    except KeyStoreMismatch:
        raise
    except Exception as exc:
        if not create and _postgres_missing(exc):
            return None  # no key store there: the caller names the setting
        if not _postgres_missing(exc):
            if isinstance(exc, (DBAPIError, ConnectionError, TimeoutError, socket.gaierror)):
                raise KeyStoreUnavailable(
                    f"cannot open the key store (CDP_KEY_STORE_URL): {database_message(exc)}"
                ) from None
            raise
        await db.dispose()
        await _create_postgres_database(url)
        return await _open(db, url, create=create)
    if store_id is None:
        if not create:
            return ""
        store_id = uuid.uuid4().hex
        try:
            async with db.write() as conn:
                await conn.execute(
                    insert(key_store_meta),
                    [
                        {"name": "store_id", "value": store_id},
                        {"name": "schema_version", "value": SCHEMA_VERSION},
                    ],
                )
            log.info("key_store_created", store_id=store_id)
        except IntegrityError:  # another process created it first
            return await _open(db, url, create=False)
    return store_id


async def _link(main: Database, store_id: str) -> None:
    try:
        async with main.write() as conn:
            linked = (await conn.execute(select(key_store_link.c.store_id))).scalar_one_or_none()
            if linked is None:
                row = {"store_id": store_id, "reconciled_seq": 0}
                await conn.execute(insert(key_store_link).values(row))
    except IntegrityError:  # another process starting at the same time linked first
        async with main.read() as conn:
            linked = (await conn.execute(select(key_store_link.c.store_id))).scalar_one()
    if linked is not None and linked != store_id:
        raise KeyStoreMismatch(_mismatch(linked, f"key store {store_id}"))


async def reconciled_seq(main: Database) -> int:
    async with main.read() as conn:
        return int((await conn.execute(select(key_store_link.c.reconciled_seq))).scalar_one())


async def mark_reconciled(main: Database, seq: int) -> None:
    async with main.write() as conn:
        await conn.execute(
            update(key_store_link)
            .where(key_store_link.c.reconciled_seq < seq)
            .values(reconciled_seq=seq)
        )
