"""The SQLite write lock of one process, with a queue for urgent writes ahead of the others.

SQLite takes one writer at a time, and `Database.write` queues this process's writers on one
lock. With a plain FIFO lock an opt-out waited behind every batch of records queued before it
(each write transaction a few hundred milliseconds): an opt-out is honoured at once, so its
answer should wait for the transaction in progress and no other. `urgent()` waiters are let in
before every ordinary waiter, in their own order of arrival. Urgent writes cannot starve the
others: they are group commits (cdp.db.group_commit), which have one transaction waiting at a
time, whatever the number of callers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType


class WriteLock:
    def __init__(self) -> None:
        self._held = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._ordinary: deque[asyncio.Future[None]] = deque()

    def waiting(self, *, urgent: bool = False) -> int:
        """Waiters in the urgent or the ordinary queue (metrics, tests)."""
        return sum(not w.done() for w in (self._urgent if urgent else self._ordinary))

    async def acquire(self, *, urgent: bool = False) -> None:
        if not self._held and not self._urgent and not self._ordinary:
            self._held = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._ordinary).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed over, then cancelled: pass on
                self.release()
            raise

    def release(self) -> None:
        """Hand the lock to the next urgent waiter, else the next ordinary one (a waiter that
        was cancelled is skipped), else free it."""
        for queue in (self._urgent, self._ordinary):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)  # still held: now by the waiter
                    return
        self._held = False

    @asynccontextmanager
    async def urgent(self) -> AsyncIterator[None]:
        await self.acquire(urgent=True)
        try:
            yield
        finally:
            self.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
