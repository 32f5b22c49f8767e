"""Group commit: concurrent writes of one kind share a write transaction.

Under load, most of a small write's cost is the transaction around it: BEGIN, a dozen round trips
through the driver, COMMIT. A `GroupCommit` queues the items submitted while a transaction is in
flight and applies them all in the next one, so the cost is paid once per batch instead of once
per item. Nothing waits for a timer: an item submitted to an idle queue is applied at once (a
batch of one), and each caller gets its answer only after the transaction holding its item has
committed. Batches form only when callers arrive faster than transactions finish.

`apply(conn, items)` runs inside the transaction and returns one result per item, in order; a
result that is an exception is raised to that item's caller alone (e.g. one opt-out names an
erased profile). A transaction PostgreSQL aborts to break a deadlock is run again, up to
RETRIES times, after a short random pause (cdp.db.conflicts.write_retried): its callers get
their answers, not a 500. If the transaction fails otherwise, every item of the batch is retried
in its own transaction, so one bad item never fails the others. A caller that goes away
(cancelled request) does not withdraw its item: a write that was asked for is made.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.conflicts import write_retried

if TYPE_CHECKING:
    from cdp.db.engine import Database

T = TypeVar("T")
R = TypeVar("R")

log = structlog.get_logger(__name__)

Apply = Callable[[AsyncConnection, list[T]], Awaitable[Sequence["R | Exception"]]]


class GroupCommit(Generic[T, R]):
    def __init__(
        self, db: Database, apply: Apply, *, name: str, max_batch: int = 256, urgent: bool = False
    ) -> None:
        self._db = db
        self._urgent = urgent
        self._apply = apply
        self._name = name
        self._max_batch = max_batch
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None
        self.batches = 0  # transactions made (for tests and metrics)

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._drain(), name=f"group-commit:{self._name}")
        return await future

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await self._commit(batch, isolate=len(batch) > 1)
            except BaseException as exc:  # cancelled (shutdown): no caller is left hanging
                for _, future in [*batch, *self._pending]:
                    if not future.done():
                        future.set_exception(
                            exc if isinstance(exc, Exception) else RuntimeError("shutting down")
                        )
                self._pending.clear()
                raise

    async def _commit(self, batch: list[tuple[T, asyncio.Future[R]]], *, isolate: bool) -> None:
        try:
            results = await self._run([item for item, _ in batch])
        except Exception as exc:
            if not isolate:
                _settle(batch[0][1], exc)
                return
            log.warning("group_commit_batch_failed", name=self._name, size=len(batch))
            for one in batch:  # each in its own transaction: only the bad one fails
                await self._commit([one], isolate=False)
            return
        self.batches += 1
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result)

    async def _run(self, items: list[T]) -> Sequence[R | Exception]:
        """`apply` in a write transaction, run again when it lost a deadlock."""
        return await write_retried(
            self._db,
            lambda conn: self._apply(conn, items),
            name=f"group-commit:{self._name}",
            urgent=self._urgent,
        )


def _settle(future: asyncio.Future, result: object) -> None:
    if future.done():  # the caller went away; the write stands
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
