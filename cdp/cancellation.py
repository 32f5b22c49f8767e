"""Background loops that log a failure and carry on (`except Exception`) must still stop when
cancelled. A cancellation arrives as CancelledError, which `except Exception` does not catch;
but code unwinding from it may raise another exception in its place (a connection invalidated
mid-statement, a driver's clean-up failing), and a loop that logged that one and went on would
never end: whoever cancelled it (the shutdown of `cdp serve`) waits for ever."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)


def stop_if_cancelled() -> None:
    """Call first in an `except Exception` of a loop that runs until cancelled: if this task
    has been asked to stop, raise CancelledError so that it does."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def run_every(
    interval_s: float, work: Callable[[], Awaitable[object]], *, failed: str
) -> None:
    """`work` now, then every `interval_s` seconds after it ends, until cancelled. A run that
    fails is logged as `failed` with its error type only (a message may hold personal data),
    and the next one tries again."""
    while True:
        try:
            await work()
        except Exception as exc:
            stop_if_cancelled()
            log.error(failed, error=type(exc).__name__)
        await asyncio.sleep(interval_s)
