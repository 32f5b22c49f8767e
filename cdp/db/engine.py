"""Engine, transactions and locks for SQLite and PostgreSQL.

Write transactions go through `Database.write()`. On SQLite they are serialised by an in-process
lock and start with BEGIN IMMEDIATE (no lock upgrade deadlocks; other processes wait on
busy_timeout). On PostgreSQL they run at READ COMMITTED, and code that must serialise work on an
identifier takes transaction-scoped advisory locks with `lock_keys`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import structlog
from sqlalchemy import event, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from cdp.db.availability import DISK_FULL, READ_ONLY, WriteRefused, write_refused
from cdp.db.group_commit import Apply, GroupCommit
from cdp.db.pg_connection import bounded_close_class
from cdp.db.sqlite_driver import one_hop_dbapi
from cdp.db.write_lock import WriteLock
from cdp.db.writer_turnstile import WriterTurnstile

log = structlog.get_logger(__name__)

# synchronous=FULL: a commit is on disk before it returns, so an opt-out answered 200 (DESIGN
# §1.2), or an erasure's destroyed key share, survives a power loss or an OS crash as well as a
# killed process. NORMAL (until 2026-12-07) lost the last commits of the WAL in a power loss:
# the opt-out undone after its answer, the key store's share back while the database said the
# customer was erased. It costs an fsync per write transaction (~0.25 ms here): group commit
# shares it among the requests of one, and an import commits about once a second.
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA busy_timeout=30000",
    "PRAGMA foreign_keys=ON",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-65536",
    # once a checkpoint has copied everything back, the next write truncates a WAL file that a
    # bulk load grew to 128 MiB down to this size
    "PRAGMA journal_size_limit=16777216",
)
# A bulk load (`Database.bulk_load`) on SQLite: most of a large import's time went to SQLite
# itself, and the largest share of that to checkpoints (each copies the WAL into the database
# and waits for fdatasync) every 1000 pages, then to B-tree pages read back in from a 64 MiB
# cache. Checkpointing every 32768 pages (128 MiB of WAL) writes a page that many commits
# changed once instead of once per checkpoint, and a 256 MiB cache keeps the indexes' upper
# levels in memory. Both are bounded, whatever the size of the file imported. Durability is
# unchanged: every commit is synced (synchronous=FULL), whatever the checkpoint interval.
_DEFAULT_WRITE_PRAGMAS = ("PRAGMA wal_autocheckpoint=1000", "PRAGMA cache_size=-65536")
_BULK_WRITE_PRAGMAS = ("PRAGMA wal_autocheckpoint=32768", "PRAGMA cache_size=-262144")


DEFAULT_CONNECT_TIMEOUT = 10.0
# After SQLite refused a write for want of disk, /health fails until a write commits or its
# filesystem has this much free again (Database.check_writable).
ROOM_AFTER_FULL = 16 * 1024 * 1024
# Set in a connection's `info` by a reader that leaves it holding much memory (the driver's
# cache of prepared statements, cdp.segments.members.compile_options): `read` closes it
# instead of putting it back in the pool.
DISCARD = "discard"


def make_engine(
    url: str,
    *,
    pool_size: int = 20,
    max_overflow: int = 20,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> AsyncEngine:
    """The engine; on PostgreSQL with a pool of `pool_size` connections kept open and up to
    `max_overflow` more under load (CDP_DATABASE_POOL_SIZE, CDP_DATABASE_MAX_OVERFLOW), each
    given up after `connect_timeout` seconds (CDP_DATABASE_CONNECT_TIMEOUT): a server that
    drops packets held every request, `/health` and `cdp` command for asyncpg's 60 s."""
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url, module=one_hop_dbapi(), connect_args={"timeout": 30}, hide_parameters=True
        )
        _configure_sqlite(engine)
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        hide_parameters=True,
        connect_args={"timeout": connect_timeout, "connection_class": bounded_close_class()},
    )


def create_owner_only(url: str) -> None:
    """A SQLite database file that does not exist yet is created empty (a valid database)
    readable and writable by its owner only (0600), whatever the umask, before SQLite opens
    it: SQLite would create it 0644, and gives the -wal and -shm files the database's mode.
    The database and the key store each hold half of every data key, and the database the
    plaintext city and traits, so no other local account may read them. A file that exists
    is left as its owner set it; an in-memory or read-only (`mode=ro`) URL, or a directory
    that cannot be written, is left to SQLite."""
    path = _writable_file(url)
    if path is None:
        return
    with contextlib.suppress(OSError):  # there already, or SQLite's to report
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _writable_file(url: str) -> str | None:
    """The file a SQLite URL opens for writing; None in memory, for a `file:` URI or one
    opened read-only (`mode=ro`)."""
    parsed = make_url(url)
    path = parsed.database or ""
    if not path or path == ":memory:" or path.startswith("file:") or "mode" in parsed.query:
        return None
    return path


def _turnstile(url: str) -> WriterTurnstile | None:
    """The writers' turnstile beside a SQLite database file; none in memory or read-only."""
    path = _writable_file(url)
    return None if path is None else WriterTurnstile(os.path.abspath(path))


def _free_bytes(url: str) -> int:
    """Bytes free to an unprivileged writer where the SQLite database at `url` lies."""
    path = os.path.dirname(os.path.abspath(make_url(url).database or "."))
    try:
        stats = os.statvfs(path)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself, below
        cursor = dbapi_connection.cursor()
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 20,
        max_overflow: int = 20,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        self.url = url
        if url.startswith("sqlite"):
            create_owner_only(url)
        self.engine = make_engine(
            url, pool_size=pool_size, max_overflow=max_overflow, connect_timeout=connect_timeout
        )
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self.is_postgres = self.engine.dialect.name == "postgresql"
        self._write_lock = WriteLock() if self.is_sqlite else None
        self._turnstile = _turnstile(url) if self.is_sqlite else None
        self._groups: dict[str, GroupCommit] = {}
        self._write_pragmas = _DEFAULT_WRITE_PRAGMAS
        self.write_refused: str | None = None  # why the last write was refused, if it was

    def group_commit(
        self, name: str, apply: Apply, *, max_batch: int = 256, urgent: bool = False
    ) -> GroupCommit:
        """The shared group-commit queue for writes of one kind (see cdp.db.group_commit);
        `urgent`: its transactions go ahead of other writers (`write`)."""
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = GroupCommit(
                self, apply, name=name, max_batch=max_batch, urgent=urgent
            )
        return group

    @asynccontextmanager
    async def read(self, *, snapshot: bool = False) -> AsyncIterator[AsyncConnection]:
        """A read transaction. `snapshot`: every statement sees the database as of the first
        (PostgreSQL's REPEATABLE READ; a SQLite read transaction always does): for a reader
        that decrypts rows with a data key read in another statement, which an unmerge may
        replace, and the rows with it, between the two (cdp.profiles.rekey)."""
        async with self.engine.connect() as conn:
            if snapshot and conn.dialect.name == "postgresql":
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                yield conn
            # closed, not put back in the pool; only after a read that ended: a cancelled one's
            # connection may be gone, and asking it for `info` then tried to reconnect without
            # a greenlet, raising MissingGreenlet over the CancelledError (the flag stays in
            # the connection's `info`: the next read on it closes it)
            if conn.info.pop(DISCARD, False):
                await conn.invalidate()

    @asynccontextmanager
    async def write(
        self, *, urgent: bool = False, bulk: bool = False
    ) -> AsyncIterator[AsyncConnection]:
        """A write transaction. One that the database refuses for want of disk or for being
        read-only is remembered (`write_refused`) until one commits: `/health` then fails
        (`check_writable`). `urgent` (opt-outs): on SQLite, it waits for the write in progress
        and is next, ahead of this process's other writers (cdp.db.write_lock). `bulk` (an
        import's transactions): on SQLite, it lets the other processes' writers go first
        (cdp.db.writer_turnstile)."""
        try:
            async with self._write_transaction(urgent, bulk) as conn:
                yield conn
        except Exception as exc:
            if (why := write_refused(exc)) is not None:
                self.write_refused = why
            raise
        self.write_refused = None

    async def check_writable(self, conn: AsyncConnection) -> None:
        """Raises WriteRefused where the database cannot store a change now (`/health`; `conn`
        is the caller's read transaction). PostgreSQL says whether it is read-only (a standby,
        `default_transaction_read_only`). SQLite learns that its disk is full or its file
        read-only only by writing, so after a write it refused: while the refusal was for
        want of disk and its filesystem has less than ROOM_AFTER_FULL free, it still is (a
        small write may yet fit where the refused one had begun to write, so writing one
        proves nothing); then a write that changes nothing (the header's user_version set to
        itself) is tried. Any write that commits clears it."""
        if self.is_postgres:
            state = await conn.scalar(text("SELECT current_setting('transaction_read_only')"))
            if state == "on":
                raise WriteRefused(READ_ONLY)
            return
        why = self.write_refused
        if why is None:
            return
        if why == DISK_FULL and _free_bytes(self.url) < ROOM_AFTER_FULL:
            raise WriteRefused(DISK_FULL)
        async with self.write() as probe:
            version = int(await probe.scalar(text("PRAGMA user_version")) or 0)
            await probe.exec_driver_sql(f"PRAGMA user_version = {version}")

    @asynccontextmanager
    async def _write_transaction(self, urgent: bool, bulk: bool) -> AsyncIterator[AsyncConnection]:
        if self._write_lock is None:
            async with self.engine.connect() as conn, conn.begin():
                yield conn
            return
        turn = self._write_lock.urgent() if urgent else self._write_lock
        async with turn, self._other_processes(bulk), self.engine.connect() as conn:
            conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with conn.begin():
                await self._tune_for_writes(conn)
                yield conn

    def writers_waiting(self) -> bool:
        """SQLite: a writer of another process waits for this one's bulk transaction."""
        return self._turnstile is not None and self._turnstile.writers_waiting()

    @asynccontextmanager
    async def _other_processes(self, bulk: bool) -> AsyncIterator[None]:
        """SQLite: a bulk transaction begins once the other processes' writers have gone (for
        a moment at most); any other is known to them as waiting or writing until it ends."""
        turnstile = self._turnstile
        if turnstile is None:
            yield
        elif bulk:
            await turnstile.let_writers_go()
            yield
        else:
            await turnstile.enter()
            try:
                yield
            finally:
                turnstile.leave()

    async def _tune_for_writes(self, conn: AsyncConnection) -> None:
        """Bring the SQLite connection's write settings to the current mode (bulk or not)."""
        if conn.info.get("write_pragmas") == self._write_pragmas:  # per DBAPI connection
            return
        for pragma in self._write_pragmas:
            await conn.exec_driver_sql(pragma)
        conn.info["write_pragmas"] = self._write_pragmas

    @asynccontextmanager
    async def bulk_load(self) -> AsyncIterator[None]:
        """A large import: on SQLite, checkpoint the WAL less often and cache more of the
        database while it runs (see _BULK_WRITE_PRAGMAS); afterwards checkpoint what the WAL
        holds. The checkpoint is PASSIVE: a FULL or TRUNCATE one would hold off every writer of
        a running `cdp serve` (opt-outs among them) while it waits for readers. Nothing changes
        on PostgreSQL."""
        if not self.is_sqlite:
            yield
            return
        self._write_pragmas = _BULK_WRITE_PRAGMAS
        try:
            yield
        finally:
            self._write_pragmas = _DEFAULT_WRITE_PRAGMAS
            await self._checkpoint_after_bulk_load()

    async def _checkpoint_after_bulk_load(self) -> None:
        """What the WAL holds is committed already: a checkpoint that fails (the disk full, the
        file read-only) loses nothing and is made by a later one. Its error must not stand in
        for the import's own: `cdp import` on a full disk ended in sqlite3's traceback instead
        of its one line saying which rows were stored."""
        try:
            async with self._write_lock, self.engine.connect() as conn:
                raw = await conn.get_raw_connection()  # outside a transaction, as it must be
                await raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except (sqlite3.Error, DBAPIError, OSError) as exc:
            log.warning("checkpoint_failed", error=type(exc).__name__)

    async def purge_wal(self, after: str = "", **ids: str) -> bool:
        """SQLite: copy the WAL into the database and truncate it to nothing, so that no older
        version of a page (an erased customer's row before `secure_delete` overwrote it) stays
        in the -wal file. A TRUNCATE checkpoint waits for readers and holds off writers while it
        runs, so it is kept for erasures and key changes, which are rare. False, with a warning
        naming `after` (what deleted the rows) and `ids`, if readers kept it from finishing: the
        next erasure tries again. Nothing to do on PostgreSQL."""
        if not self.is_sqlite:
            return True
        async with self._write_lock, self.engine.connect() as conn:
            raw = await conn.get_raw_connection()  # outside a transaction, as it must be
            cursor = await raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            busy, _, _ = await cursor.fetchone()
        if busy:
            log.warning("wal_not_truncated", after=after, **ids)
        return busy == 0

    async def refresh_statistics(self) -> None:
        """Refresh the query planner's table statistics.

        SQLite keeps none until ANALYZE runs, and without them it may pick the status index for
        a members page and sort the whole table instead of walking profiles in id order (260 ms
        instead of 5 ms for a page at 20,000 profiles). `analysis_limit` samples each index, so
        this stays well under a second at millions of rows. PostgreSQL's autovacuum keeps its
        own statistics; an explicit ANALYZE after a bulk import saves waiting for it."""
        if self.is_sqlite:
            async with self.write() as conn:
                await conn.exec_driver_sql("PRAGMA analysis_limit=1000")
                await conn.exec_driver_sql("ANALYZE")
        else:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await conn.exec_driver_sql("ANALYZE")

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._turnstile is not None:
            self._turnstile.close()


def lock_key(value: bytes | str) -> int:
    raw = value.encode() if isinstance(value, str) else value
    import hashlib

    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big", signed=True)


async def xact_lock(conn: AsyncConnection, key: int) -> None:
    """A PostgreSQL advisory lock on `key` until the transaction ends: transactions taking it
    run one after the other. On SQLite the write transaction already excludes every other
    writer, so this does nothing."""
    if conn.dialect.name == "postgresql":
        await conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({int(key)})")


_LOCK_KEYS = text("SELECT pg_advisory_xact_lock(k) FROM unnest(CAST(:keys AS bigint[])) AS k")


async def overwrite_deleted(conn: AsyncConnection) -> None:
    """From here on (the caller's write transaction, and later ones of the same pooled
    connection), SQLite overwrites on disk the bytes of the rows deleted or rewritten
    (`secure_delete`), not only frees them: for what no copy may keep (an erased customer, a
    key wrapped under a master key being retired). The -wal keeps the pages as they were until
    `Database.purge_wal`. Nothing on PostgreSQL."""
    if conn.dialect.name == "sqlite":
        await conn.exec_driver_sql("PRAGMA secure_delete=ON")


async def lock_keys(conn: AsyncConnection, values: Iterable[bytes | str]) -> None:
    """Serialise transactions that touch the same identifiers (PostgreSQL advisory locks).

    Keys are taken in sorted order so two transactions never wait on each other in a cycle.
    On SQLite the write transaction already holds the database lock, so this does nothing.
    """
    if conn.dialect.name != "postgresql":
        return
    keys = sorted({lock_key(v) for v in values})
    if not keys:
        return
    await conn.execute(_LOCK_KEYS, {"keys": keys})
