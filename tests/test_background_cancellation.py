"""Every background loop of `cdp serve` stops when cancelled, even when the code unwinding from
the cancellation raises another exception in its place (a connection invalidated mid-statement
whose clean-up fails). Such a loop used to log that exception as a failed pass and go on, so the
server's shutdown, which cancels it and waits, never ended (`cdp.cancellation`)."""

from __future__ import annotations

import asyncio
import types
import uuid

import pytest

from api.background import refresh_statistics_periodically
from consent.audit import checkpoints
from consent.dsr import retention, worker


class CleanUpFails:
    """An awaitable step that blocks until cancelled, then fails while unwinding."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.calls = 0

    async def __call__(self, *args: object, **kwargs: object) -> None:
        self.calls += 1
        self.entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("connection invalidated while unwinding") from None


def _loops(step: CleanUpFails, monkeypatch: pytest.MonkeyPatch):
    p = types.SimpleNamespace(db=types.SimpleNamespace(refresh_statistics=step))
    monkeypatch.setattr(worker, "process", step)
    monkeypatch.setattr(checkpoints, "create_checkpoint", step)
    monkeypatch.setattr(retention, "run_retention", step)
    monkeypatch.setattr(worker, "destroy_erased_shares", step)

    async def pending(_p: object, _after: object = None) -> list[uuid.UUID]:
        return []

    monkeypatch.setattr(worker, "pending", pending)
    return {
        "erasure of one request": lambda: worker.run_one(p, uuid.uuid4()),
        "erasure worker's key-share pass": lambda: worker.run_forever(p, interval=0.001),
        "ledger checkpoints": lambda: checkpoints.checkpoint_periodically(p, 0.001),
        "planner statistics": lambda: refresh_statistics_periodically(p, 0.001),
        "retention": lambda: retention.retention_periodically(p, 0.001),
    }


@pytest.mark.parametrize(
    "loop",
    [
        "erasure of one request",
        "erasure worker's key-share pass",
        "ledger checkpoints",
        "planner statistics",
        "retention",
    ],
)
async def test_a_loop_stops_when_its_cancellation_is_replaced_by_another_error(
    loop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = CleanUpFails()
    task = asyncio.create_task(_loops(step, monkeypatch)[loop]())
    await step.entered.wait()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=30)  # a hang guard, not a measure
    if not done:
        task.cancel()
        pytest.fail(f"{loop}: still running after cancel(), {step.calls} passes")
    assert task.cancelled()
    assert step.calls == 1


async def test_a_failed_pass_that_was_not_cancelled_is_logged_and_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The guard touches cancellation only: an ordinary failure still leaves the loop running."""
    calls = 0
    again = asyncio.Event()

    async def fails(*args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            again.set()
        raise RuntimeError("database briefly unreachable")

    monkeypatch.setattr(checkpoints, "create_checkpoint", fails)
    task = asyncio.create_task(checkpoints.checkpoint_periodically(object(), 0.001))
    await asyncio.wait_for(again.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
