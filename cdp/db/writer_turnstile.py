"""SQLite: a bulk load lets the writers of other processes go before its next transaction.

SQLite has one write lock per database file, and a writer that finds it taken sleeps and tries
again (busy_timeout): after a few tries, every 100 ms. `cdp import` commits about once a second
and begins its next transaction at once, so a writer of another process (an opt-out answered by
`cdp serve`, `cdp dsr run`) found it taken nearly every time it looked: during an import of
60,000 rows a transaction of nothing waited 650 ms at the median and 7.5 s at worst.

A file beside the database (`<database>-writers`, owner-only) tells them apart, with flock:
every ordinary writer holds a shared lock on it from before its BEGIN until its commit, and a
bulk load, before it begins a transaction, waits until it could take the exclusive lock (no
ordinary writer waiting or writing), for at most YIELD_LIMIT, then begins anyway: a service
that writes without pause slows an import down, never stops it. A bulk transaction that sees
a writer waiting commits after the chunk it is storing (cdp.importer). An ordinary writer then
waits for that chunk and no more. Nothing else changes: SQLite's own lock still
decides who writes, so a process that does not know of the file (an older release, the sqlite3
shell) is only not helped by it. Where the file cannot be made (a read-only directory), the
turnstile does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time

YIELD_LIMIT = 0.5  # seconds a bulk transaction waits for other processes' writers at most
_POLL = 0.002


class WriterTurnstile:
    def __init__(self, database_path: str) -> None:
        self._path = f"{database_path}-writers"
        self._fd: int | None = None
        self._opened = False

    def _file(self) -> int | None:
        if not self._opened:
            self._opened = True
            with contextlib.suppress(OSError):
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd

    async def enter(self) -> None:
        """An ordinary writer is waiting or writing (until `leave`). A bulk load holds the
        exclusive lock only for an instant, so this waits an instant at most."""
        fd = self._file()
        if fd is None:
            return
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                await asyncio.sleep(_POLL)

    def leave(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def writers_waiting(self) -> bool:
        """True while an ordinary writer of another process waits or writes: a bulk load
        commits what it has at once instead of holding them for the rest of its transaction."""
        fd = self._file()
        if fd is None:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False

    async def let_writers_go(self) -> None:
        """Before a bulk transaction: wait until no ordinary writer of another process is
        waiting or writing, for YIELD_LIMIT at most."""
        end = time.monotonic() + YIELD_LIMIT
        while self.writers_waiting() and time.monotonic() < end:  # noqa: ASYNC110 (a lock of another process: no event to wait on)
            await asyncio.sleep(_POLL)

    def close(self) -> None:
        """Close the file (its locks go with it); used again, it is opened again."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._opened = None, False
