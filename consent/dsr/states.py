"""The request state machine, in plain Python.

received -> in_progress -> completed
received -> rejected
in_progress -> rejected   (the customer cannot be found any more)

Besides status changes, a request records events that keep its status: an extension (moves
due_at), a duplicate request that joined it, and a worker resuming an interrupted run.
"""

from __future__ import annotations

from datetime import datetime

from cdp.errors import Conflict

STATUSES = ("received", "in_progress", "completed", "rejected")
OPEN = ("received", "in_progress")
ALLOWED: dict[str, frozenset[str]] = {
    "received": frozenset({"in_progress", "rejected"}),
    "in_progress": frozenset({"completed", "rejected"}),
    "completed": frozenset(),
    "rejected": frozenset(),
}


def check_transition(current: str, target: str) -> None:
    if target not in ALLOWED.get(current, frozenset()):
        raise Conflict(f"a request that is {current} cannot become {target}")


def check_extension(status: str, extensions: int, due_at: datetime, now: datetime) -> None:
    """One extension of an open request, taken within its period: the customer must be told
    of it before the deadline (GDPR art. 12(3), 152-FZ art. 20), so a request already overdue
    stays overdue rather than being moved to look on time."""
    if status not in OPEN:
        raise Conflict(f"a request that is {status} cannot be extended")
    if extensions > 0:
        raise Conflict("the policy allows one extension and it was already taken")
    if due_at < now:
        raise Conflict("the request is past its due date: an extension must be taken before it")


def is_overdue(status: str, due_at: datetime, now: datetime) -> bool:
    return status in OPEN and due_at < now
