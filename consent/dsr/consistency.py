"""Erasure requests checked against their hash-chained transitions (consent/dsr/chain.py).

Officers read a request's row (status, due date, extensions: what `overdue` is computed from),
not its transitions, so a verification of the chain alone passed a database in which a request
had been marked completed, or given a later due date, by editing the row. Each request must hold
what its last transition says (status and due date) and as many extensions as it recorded, must
have transitions, and a completed one must have left its customer's profile erased. Run it in
the verification's snapshot. Mismatches are named by request id, never by customer data.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.tables import profiles
from consent.dsr.chain import verify_transitions
from consent.dsr_tables import dsr_requests, dsr_transitions

EXAMPLES = 20


@dataclass(slots=True)
class RequestCheck:
    checked: int = 0
    mismatched: int = 0
    examples: list[uuid.UUID] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatched == 0

    def add(self, request_id: uuid.UUID) -> None:
        self.mismatched += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(request_id)


@dataclass(slots=True)
class _Recorded:
    status: str
    due_at: datetime
    extensions: int = 0


async def check_requests(conn: AsyncConnection) -> RequestCheck:
    t = dsr_transitions.c
    recorded: dict[uuid.UUID, _Recorded] = {}
    rows = await conn.execute(select(t.request_id, t.event, t.to_status, t.due_at).order_by(t.seq))
    for request_id, event, to_status, due_at in rows:
        last = recorded.get(request_id)
        extensions = last.extensions if last else 0
        recorded[request_id] = _Recorded(to_status, due_at, extensions + (event == "extension"))
    r, pr = dsr_requests.c, profiles.c
    requests = await conn.execute(
        select(r.id, r.status, r.due_at, r.extensions, pr.status)
        .select_from(dsr_requests.outerjoin(profiles, pr.id == r.profile_id))
        .order_by(r.id)
    )
    out = RequestCheck()
    for request_id, status, due_at, extensions, profile_status in requests:
        out.checked += 1
        last = recorded.pop(request_id, None)
        if (
            last is None
            or (status, due_at, extensions) != (last.status, last.due_at, last.extensions)
            or (status == "completed" and profile_status != "erased")
        ):
            out.add(request_id)
    for request_id in sorted(recorded):  # transitions of a request whose row is gone
        out.add(request_id)
    return out


async def requests_report(conn: AsyncConnection) -> dict[str, Any]:
    """The erasure requests' part of a verification, as `GET /v1/audit/verify` answers it under
    `dsr_transitions` (also the CLI's and the console's): their chain of transitions, and the
    requests checked against it."""
    transitions = await verify_transitions(conn)
    requests = await check_requests(conn)
    return {
        "ok": transitions.ok and requests.ok,
        "entries": transitions.entries,
        "head_hash": transitions.head_hash,
        "first_invalid_seq": transitions.first_invalid_seq,
        "reason": transitions.reason,
        "requests_checked": requests.checked,
        "requests_mismatched": requests.mismatched,
        "mismatched_request_ids": [str(x) for x in requests.examples],
    }
