"""Open match suggestions set aside (status "stale") once a profile they name is no longer the
customer that was scored: merged away into another profile, or split by an unmerge (it no
longer holds what the customer merged into it brought, the names and address the pair was
scored on). `cdp match` asks about such a pair again, with a new id and its new score, if it
still matches (cdp.matching.suggestions.store_suggestions); nobody can accept it meanwhile.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import or_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.matching.tables import match_suggestions


async def set_aside(conn: AsyncConnection, profile_id: uuid.UUID, now: datetime) -> None:
    sg = match_suggestions.c
    await conn.execute(
        update(match_suggestions)
        .where(sg.status == "open", or_(sg.profile_a == profile_id, sg.profile_b == profile_id))
        .values(status="stale", decided_at=now)
    )
