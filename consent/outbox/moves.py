"""Noting a customer whose grants may lapse under other rules now (consent.outbox.lapses).

Called in the transaction that makes the change, where it is made: a record changing a
profile's jurisdiction (cdp.profiles.ingest), a merge (the survivor gains the absorbed
profile's addresses and push consent, and may take its jurisdiction), an unmerge (both halves).
One small row each; the next lapse pass looks at the customer and deletes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.ids import utcnow
from consent.outbox.tables import lapse_moves
from consent.policy import Policy


async def note_moves(
    conn: AsyncConnection, policy: Policy, profile_ids: Iterable[uuid.UUID]
) -> None:
    """Nothing where no jurisdiction has a validity period: then no grant lapses, and a period
    set later starts its watermark before every grant, which announces those lapsed by then
    whoever holds them."""
    if not policy.has_validity_periods():
        return
    now = utcnow()
    rows = [{"profile_id": pid, "recorded_at": now} for pid in sorted(set(profile_ids))]
    if rows:
        await conn.execute(insert(lapse_moves), rows)
