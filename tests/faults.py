"""Fault injection for tests: make a write fail at its N-th database statement, at its N-th
commit (before or after the database commits), or at the N-th call of a Python function.

    faults = Faults(platform)
    async for n, where in faults.sweep(op):   # op() once per N, until it runs through
        ...                                   # check the invariants after each failure

`Faults.main` counts the main database's statements, `Faults.store` the key store's. A fault
is an `InjectedFault` (a plain Exception, as an unexpected driver error would be); with
`after_commit` the database commits first and the caller still sees the error (a connection
lost before the answer came back).

CDP_FAULTS_EXHAUSTIVE=1 runs every N (and every place of the fault for every form of a
request); otherwise N is sampled (`sample`), CDP_FAULTS_SEED=k choosing other N in between.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event

EXHAUSTIVE = os.environ.get("CDP_FAULTS_EXHAUSTIVE") == "1"
SAMPLE_SPREAD = 1  # N tried between the first and the last
SEED = int(os.environ.get("CDP_FAULTS_SEED", "0"))  # shifts the spread ones


class InjectedFault(Exception):
    """The failure a test injected."""


class InjectedDeadlock(InjectedFault):
    """What PostgreSQL raises in the transaction it aborts to break a deadlock (SQLSTATE
    40P01): cdp.db.conflicts runs such a transaction again."""

    sqlstate = "40P01"


@dataclass
class Counter:
    """Counts events of one kind while armed, and raises at the `target`-th."""

    target: int | None = None
    seen: int = 0
    fired: bool = False
    counting: bool = False
    notes: list[str] = field(default_factory=list)

    def arm(self, target: int | None) -> None:
        self.target, self.seen, self.fired, self.counting = target, 0, False, True
        self.notes = []

    def disarm(self) -> None:
        self.target, self.counting = None, False

    def hit(self, note: str = "") -> bool:
        """Count one event; True when it is the one to fail."""
        if not self.counting:
            return False
        self.seen += 1
        if note:
            self.notes.append(note)
        if self.target is not None and self.seen == self.target and not self.fired:
            self.fired = True
            return True
        return False


class EngineFaults:
    """Statements and commits of one engine."""

    def __init__(self, engine: Any) -> None:
        self.sync = engine.sync_engine
        self.statements = Counter()
        self.commits = Counter()
        self.after_commit = False
        self.fault: type[InjectedFault] = InjectedFault  # what a failing statement raises
        event.listen(self.sync, "before_cursor_execute", self._on_statement)
        dialect = self.sync.dialect
        original = dialect.do_commit

        def do_commit(dbapi_connection: Any) -> None:
            if not self.commits.hit():
                return original(dbapi_connection)
            if self.after_commit:
                original(dbapi_connection)
            raise InjectedFault(f"commit {self.commits.seen}")

        dialect.do_commit = do_commit  # type: ignore[method-assign]

    def _on_statement(self, conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if self.statements.hit(" ".join(statement.split()[:3])):
            raise self.fault(f"statement {self.statements.seen}")

    def close(self) -> None:
        event.remove(self.sync, "before_cursor_execute", self._on_statement)


def sample(total: int) -> list[int]:
    """Which N to try when an operation makes `total` events of the kind injected: the first,
    the last, and SAMPLE_SPREAD between them (shifted by CDP_FAULTS_SEED); all of them with
    CDP_FAULTS_EXHAUSTIVE=1."""
    if EXHAUSTIVE or total <= SAMPLE_SPREAD + 2:
        return list(range(1, total + 1))
    step = (total - 1) / (SAMPLE_SPREAD + 1)
    inside = {2 + (round(step * k) + SEED) % (total - 2) for k in range(1, SAMPLE_SPREAD + 1)}
    return sorted({1, total} | inside)


@contextmanager
def failing_call(owner: Any, name: str, counter: Counter):  # type: ignore[no-untyped-def]
    """Patch `owner.name` (a function or coroutine function) to count its calls on `counter`
    and raise InjectedFault at the armed one."""
    import inspect

    original = getattr(owner, name)
    if inspect.iscoroutinefunction(original):

        async def patched(*args: Any, **kwargs: Any) -> Any:
            if counter.hit(name):
                raise InjectedFault(f"{name} call {counter.seen}")
            return await original(*args, **kwargs)
    else:

        def patched(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            if counter.hit(name):
                raise InjectedFault(f"{name} call {counter.seen}")
            return original(*args, **kwargs)

    setattr(owner, name, patched)
    try:
        yield
    finally:
        setattr(owner, name, original)


class Faults:
    def __init__(self, platform: Any) -> None:
        self.main = EngineFaults(platform.db.engine)
        store = platform.keys.store
        self.store = EngineFaults(store.db.engine) if store is not None else None

    def close(self) -> None:
        self.main.close()
        if self.store is not None:
            self.store.close()


async def sweep(
    counter: Counter,
    op: Callable[[int], Awaitable[Any]],
    check: Callable[[int, Any, bool], Awaitable[None]],
    prepare: Callable[[int], Awaitable[None]] | None = None,
    *,
    optional: bool = False,
) -> list[int]:
    """Run `prepare(n)` (no fault), then `op(n)` with `counter` failing its n-th event, for
    the sampled n, then `check(n, outcome, fired)`: outcome is op's return value, or the
    exception it raised. n = 0 is the dry run that counts the events (nothing fails). Returns
    the n tried. `optional`: the operation may make no event of that kind (a merge does not
    touch the key store)."""
    if prepare is not None:
        await prepare(0)
    counter.arm(None)
    try:
        outcome: Any = await op(0)
    finally:
        counter.disarm()
    total = counter.seen
    await check(0, outcome, False)
    tried = sample(total)
    if not tried and optional:
        return tried
    assert tried, "the operation made no event of the kind injected: nothing was tested"
    if os.environ.get("CDP_FAULTS_VERBOSE") == "1":
        print(f"\n{total} events: {counter.notes}")
    for n in tried:
        if prepare is not None:
            await prepare(n)
        counter.arm(n)
        try:
            outcome = await op(n)
        except Exception as exc:  # the check judges it
            outcome = exc
        finally:
            counter.disarm()
        await check(n, outcome, counter.fired)
    return tried
