"""Linearizability checking for tests: record a concurrent history of operations, each with its
invocation and completion time on one clock, and decide whether some order of them that
respects real time (an operation that completed before another was invoked comes first) is a
run of a sequential model that gives every operation the answer it got.

    history = History()
    async with history.op(client_id, "write", key, value) as op:
        answer = await call(...)
        op.done(result)          # not called (an exception, a lost answer): outcome unknown
    verdict = check(history.ops, model)
    assert verdict.ok, verdict.explain()

The search is the one of Wing & Gong as Lowe improved it and Porcupine runs it (Lowe, "Testing
for linearizability", 2017; github.com/anishathalye/porcupine): depth-first over the
operations that may come next, with the set of operations already placed and the model's
state remembered, so a state reached twice is searched once. `partitioned` checks each key on
its own where the model allows it (P-compositionality: a history is linearizable iff each
key's sub-history is), which keeps the search small.

An operation whose outcome is unknown (no answer: a timeout, a 5xx, a dropped connection) may
have taken effect at any time after its invocation, or never: it is given no completion time
and need not be placed. A read with an unknown outcome tells nothing and is left out.

A model is any object with:
    init() -> state                    (a state must be hashable: it is remembered)
    step(state, op) -> state | None    (None: `op` cannot have had its answer in `state`;
                                        op.result is None where the outcome is unknown)
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

INF = math.inf


@dataclass
class Op:
    """One operation of a history: `kind` and `args` say what was asked, `result` what was
    answered (None: not known), `invoke` and `complete` when (complete INF: not known)."""

    client: int
    kind: str
    key: Hashable
    args: Any
    invoke: float
    complete: float = INF
    result: Any = None
    index: int = -1  # position in the history, for messages

    @property
    def known(self) -> bool:
        return self.complete != INF

    def done(self, result: Any) -> None:
        self.result = result
        self.complete = time.monotonic()

    def __str__(self) -> str:
        span = f"[{self.invoke:.4f}, {'?' if not self.known else f'{self.complete:.4f}'}]"
        got = "?" if not self.known else repr(self.result)
        return f"#{self.index} c{self.client} {self.kind}{self.args!r} -> {got} {span}"


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)

    @contextlib.contextmanager
    def op(self, client: int, kind: str, key: Hashable, args: Any) -> Iterator[Op]:
        """Record an operation invoked now; the body calls `op.done(result)` when answered.
        An exception leaves its outcome unknown (and is raised on)."""
        op = Op(client, kind, key, args, time.monotonic(), index=len(self.ops))
        self.ops.append(op)
        yield op


class Model(Protocol):
    def init(self) -> Hashable: ...

    def step(self, state: Any, op: Op) -> Any | None: ...


@dataclass
class Verdict:
    ok: bool
    ops: list[Op]
    # where the search got furthest: the longest order found, and the operations none of
    # which could come next
    longest: list[Op] = field(default_factory=list)
    stuck: list[Op] = field(default_factory=list)
    states: int = 0  # states searched

    def explain(self) -> str:
        if self.ok:
            return f"linearizable ({len(self.ops)} operations, {self.states} states searched)"
        lines = [f"not linearizable: {len(self.ops)} operations"]
        lines.append("longest order a sequential run allows:")
        lines += [f"  {op}" for op in self.longest]
        lines.append("none of these can come next:")
        lines += [f"  {op}" for op in self.stuck]
        lines.append("the whole history, by invocation:")
        lines += [f"  {op}" for op in sorted(self.ops, key=lambda o: o.invoke)]
        return "\n".join(lines)


def check(ops: Sequence[Op], model: Model, *, budget: int = 2_000_000) -> Verdict:
    """Whether the history `ops` is linearizable with respect to `model`.

    Raises RuntimeError when more than `budget` states were searched without an answer (a
    history too concurrent to decide cheaply: make it smaller)."""
    ops = [o for o in ops if o.known or not o.kind.startswith("read")]
    ops = sorted(ops, key=lambda o: o.invoke)
    n = len(ops)
    must = (1 << n) - 1
    for i, o in enumerate(ops):
        if not o.known:
            must &= ~(1 << i)
    seen: set[tuple[int, Hashable]] = set()
    best: tuple[int, list[int], list[int]] = (-1, [], [])

    def candidates(placed: int) -> list[int]:
        # an operation may come next when no operation still to place completed before it
        # was invoked (and operations of unknown outcome never block another)
        first_done = min((ops[i].complete for i in range(n) if not placed >> i & 1), default=INF)
        return [i for i in range(n) if not placed >> i & 1 and ops[i].invoke < first_done]

    # iterative depth-first search: (placed, state, order, untried candidates)
    init = model.init()
    stack: list[tuple[int, Any, list[int], list[int]]] = [(0, init, [], candidates(0))]
    seen.add((0, init))
    while stack:
        placed, state, order, todo = stack[-1]
        if placed & must == must:
            return Verdict(True, list(ops), [ops[i] for i in order], [], len(seen))
        if not todo:
            stack.pop()
            if len(order) > best[0]:
                best = (len(order), order, candidates(placed))
            continue
        i = todo.pop()
        nxt = model.step(state, ops[i])
        if nxt is None:
            continue
        now = placed | 1 << i
        if (now, nxt) in seen:
            continue
        seen.add((now, nxt))
        if len(seen) > budget:
            raise RuntimeError(f"more than {budget} states searched for {n} operations")
        stack.append((now, nxt, [*order, i], candidates(now)))
    _, order, stuck = best
    return Verdict(False, list(ops), [ops[i] for i in order], [ops[i] for i in stuck], len(seen))


def partitioned(
    ops: Iterable[Op], model: Model, split: Callable[[Op], Iterable[tuple[Hashable, Op]]]
) -> list[tuple[Hashable, Verdict]]:
    """Check each key's sub-history on its own. `split(op)` gives the (key, op) pairs an
    operation contributes: one for an operation of one key, one per key for a read that
    observes several (its observation of that key alone)."""
    parts: dict[Hashable, list[Op]] = {}
    for op in ops:
        for key, part in split(op):
            parts.setdefault(key, []).append(part)
    return [
        (key, check(part, model)) for key, part in sorted(parts.items(), key=lambda kv: str(kv[0]))
    ]
