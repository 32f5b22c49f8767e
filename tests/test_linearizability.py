"""Linearizability of consent: concurrent histories of grants, withdrawals, opt-outs,
unsubscribes and stop replies, records that link and merge, unmerges, erasures and reads, on
emails and a phone (email and sms), sent by several clients to a
real `cdp serve` (SQLite; PostgreSQL with two and three worker processes), must each be
explained by one order of the operations that respects real time and in which every answer is
the one the sequential model of the rules gives (tests/consent_histories.py, checked by
tests/linearizability.py). DESIGN §1: an opt-out is in force once answered, so no read that
started after its answer shows the address; an erasure once completed is complete.

The suite runs a few derandomized histories per database; CDP_LIN_HISTORIES=N runs N,
CDP_LIN_SEED=k other seeds, CDP_LIN_OPS=N longer histories (N operations per client; 8 by
default), CDP_LIN_LOG=FILE writes every failing history there.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from cdp.db.conflicts import is_transient_conflict
from consent.dsr.erasure import process
from tests.consent_histories import (
    ConsentModel,
    Plan,
    Run,
    State,
    Target,
    _Work,
    erasures_during,
    realtime_violations,
    split,
    summary,
)
from tests.crash import Site, free_port, kill, serving
from tests.linearizability import INF, History, Op, check, partitioned

HISTORIES = int(os.environ.get("CDP_LIN_HISTORIES", "0"))
OPS = int(os.environ.get("CDP_LIN_OPS", "0"))  # operations per client (default: Plan's)
SEED = os.environ.get("CDP_LIN_SEED", "0")
LOG = os.environ.get("CDP_LIN_LOG")


# ---------------------------------------------------------------------------------------------
# the checker, on a register (read, write)
@dataclass(frozen=True)
class Register:
    def init(self) -> int:
        return 0

    def step(self, state: int, op: Op) -> int | None:
        if op.kind == "write":
            return op.args
        return state if op.result == state else None


def _op(kind: str, args, invoke: float, complete: float, result=None) -> Op:  # type: ignore[no-untyped-def]
    return Op(0, kind, "r", args, invoke, complete, result)


def test_overlapping_operations_may_take_effect_in_either_order():
    ops = [
        _op("write", 1, 0, 10),
        _op("write", 2, 1, 11),
        _op("read", None, 2, 3, 2),  # the second write took effect first
        _op("read", None, 4, 5, 1),  # then the first
        _op("read", None, 12, 13, 1),
    ]
    assert check(ops, Register()).ok


def test_a_read_after_a_write_was_answered_that_misses_it_is_found():
    ops = [_op("write", 1, 0, 1), _op("read", None, 2, 3, 0)]
    verdict = check(ops, Register())
    assert not verdict.ok
    assert "read" in verdict.explain()


def test_a_value_read_back_and_forth_between_two_writes_is_found():
    ops = [
        _op("write", 1, 0, 10),
        _op("read", None, 1, 2, 1),
        _op("read", None, 3, 4, 0),  # after 1 was seen: the write cannot be undone
    ]
    assert not check(ops, Register()).ok


def test_a_write_whose_outcome_is_unknown_may_have_taken_effect_or_not():
    lost = _op("write", 5, 0, INF)
    assert check([lost, _op("read", None, 1, 2, 5)], Register()).ok
    assert check([lost, _op("read", None, 1, 2, 0)], Register()).ok
    assert not check([lost, _op("read", None, 1, 2, 7)], Register()).ok


def test_partitions_are_checked_each_on_their_own():
    a = Op(0, "write", "a", 1, 0, 1)
    b = Op(1, "read", "b", None, 2, 3, 1)  # b was never written
    verdicts = dict(partitioned([a, b], Register(), lambda o: [(o.key, o)]))
    assert verdicts["a"].ok and not verdicts["b"].ok


# ---------------------------------------------------------------------------------------------
# the model, on sequences the rules decide
def _run(*steps: tuple) -> tuple[State | None, list]:  # type: ignore[type-arg]
    """Apply (kind, args[, answer]) steps (no answer: unknown); then whether each address
    (emails 0 and 1, the phone 2) is contactable on its channel."""
    m, s = ConsentModel(), ConsentModel().init()
    for kind, args, *answer in steps:
        s = m.step(s, Op(0, kind, 0, args, 0, 1 if answer else INF, *answer))
        assert s is not None, (kind, args, answer)
    w = _Work(s)
    return s, [w.contactable(a) for a in (0, 1, 2)]


def test_the_model_latest_occurred_at_wins_and_a_withdrawal_wins_a_tie():
    assert _run(("grant", (0, 5)), ("withdraw", (0, 3)))[1][0]
    assert not _run(("withdraw", (0, 5)), ("grant", (0, 5)))[1][0]
    assert not _run(("grant", (0, 5)), ("withdraw", (0, 5)))[1][0]


def test_the_model_an_opt_out_holds_until_a_grant_that_occurred_after_it():
    assert not _run(("opt_out", (0, "email", 5)), ("grant", (0, 4)))[1][0]
    assert not _run(("opt_out", (0, "email", 5)), ("grant", (0, 5)))[1][0]
    assert _run(("opt_out", (0, "email", 5)), ("grant", (0, 6)))[1][0]
    assert _run(("opt_out", (2, "sms", 5)), ("grant", (2, 6)))[1][2]
    assert not _run(("grant", (2, 6)), ("stop", (2,)))[1][2]


def test_the_model_an_opt_out_of_every_channel_reaches_addresses_linked_later():
    _, seen = _run(
        ("grant", (0, 1)),
        ("grant", (1, 1)),
        ("grant", (2, 1)),
        ("opt_out", (0, "*", 3)),
        ("record", (0, True, None)),
        ("record", (1, True, None)),  # links address 1 to the customer who opted out
        ("record", (2, True, None)),  # and the phone
    )
    assert seen == [False, False, False]


def test_the_model_an_erasure_is_final():
    _, seen = _run(
        ("grant", (0, 1)), ("erase", (0,)), ("grant", (0, 9)), ("record", (0, False, None))
    )
    assert seen == [False, False, False]


def test_the_model_an_unmerge_gives_addresses_back_as_opted_out_as_they_were():
    merged = (
        ("record", (0, True, ("granted", 1)), ("ok", True, "p1", ())),  # 0 and x
        ("grant", (1, 1), ("ok", "p2")),  # 1, another customer
        ("record", (1, True, None), ("ok", False, "p1", ("p2",))),  # x links them: merged
    )
    _, seen = _run(*merged, ("opt_out", (0, "*", 3), ("ok", "p1")), ("unmerge", ("p2",)))
    assert seen == [False, False, False]  # the opt-out while merged stays on address 1
    state, seen = _run(*merged, ("unmerge", ("p1",), ("ok", "p1", ("p2",))))
    assert seen == [True, True, False]
    w = _Work(state)
    assert w.holder_of(1) != w.holder_of(0) == w.holder_of("x")
    # an open erasure request of the customer: the unmerge waits (409)
    asked = ("erase_request", (0,), ("ok", "r1"))
    assert (
        ConsentModel().step(
            _run(*merged, asked)[0], Op(0, "unmerge", 0, ("p1",), 0, 1, ("ok", "p1", ("p2",)))
        )
        is None
    )
    _, seen = _run(
        *merged, asked, ("unmerge", ("p1",), ("conflict",)), ("erase_done", (0, "r1"), "ok")
    )
    assert seen == [False, False, False]


# ---------------------------------------------------------------------------------------------
# histories against real servers
@contextlib.asynccontextmanager
async def served(site: Site, *args: str) -> AsyncIterator[Target]:
    async with site.opened() as (p, _, keys):
        port = free_port(random.Random(f"lin/{site.backend}/{args}"), 23000, 24000)
        proc = await serving(site, port, *args)
        try:

            async def erase(request_id) -> str:  # type: ignore[no-untyped-def]
                for _ in range(5):  # a lost deadlock: the worker's next pass runs it again
                    try:
                        return await process(p, request_id, "lin-test")
                    except Exception as exc:
                        if not is_transient_conflict(exc):
                            raise
                        target.conflicts.append(request_id)
                return "failed"

            target = Target(f"http://127.0.0.1:{port}", keys, erase)
            yield target
        finally:
            kill(proc)


def verdicts(history: History) -> list[str]:
    """Every way the history breaks the model or the real-time rule (empty: none)."""
    found = realtime_violations(history.ops)
    erasing = erasures_during(history.ops)
    for key, verdict in partitioned(history.ops, ConsentModel(), lambda op: split(op, erasing)):
        if not verdict.ok:
            found.append(f"customer {key}: {verdict.explain()}")
    return found


async def run_histories(target: Target, label: str, count: int, plan: Plan) -> dict:
    done = []
    for n in range(count):
        r = random.Random(f"{SEED}/{label}/{n}")  # fewer customers: more collisions
        shape = replace(plan, groups=r.choice([1, 2, 2, 3]), clients=r.choice([3, 4, 5, 6]))
        if OPS:
            shape = replace(shape, ops_per_client=OPS, batches=max(shape.batches, OPS // 3))
        history = await Run(target, f"{SEED}/{label}/{n}", shape).run()
        done.append(history)
        found = verdicts(history)
        if found and LOG:
            with Path(LOG).open("a") as fh:
                fh.write(f"== {label} history {n}\n" + "\n".join(found) + "\n")
        assert not found, f"{label} history {n}:\n" + "\n".join(found)
    return summary(done)


@pytest.mark.parametrize(
    ("backend", "workers"), [("sqlite", None), ("postgres", "2"), ("postgres", "3")]
)
async def test_concurrent_consent_histories_are_linearizable(backend, workers, sites):
    if workers == "3" and not HISTORIES:
        pytest.skip("three workers: CDP_LIN_HISTORIES=N runs them")
    site = await sites("lin")
    args = ("--workers", workers) if workers else ()
    async with served(site, *args) as target:
        figures = await run_histories(target, f"{backend}{workers or ''}", HISTORIES or 3, Plan())
        figures["erasures that lost a deadlock"] = len(target.conflicts)
    print(f"{backend} {workers or 1} process(es):", figures)
