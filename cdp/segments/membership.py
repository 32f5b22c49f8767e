"""Which saved segments a customer is a member of now (for access requests).

Uses the same members query as every other path, bounded to the one profile, so the answer
is exactly what a marketing tool reading the segment would get.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.tables import segments
from cdp.errors import InvalidInput
from cdp.platform import Platform
from cdp.segments.members import members_page


async def segments_containing(
    conn: AsyncConnection, p: Platform, profile_id: uuid.UUID
) -> list[dict[str, Any]]:
    from cdp.segments.service import saved_definition

    rows = (
        await conn.execute(
            select(segments).where(segments.c.deleted.is_(False)).order_by(segments.c.created_at)
        )
    ).all()
    before = uuid.UUID(int=profile_id.int - 1) if profile_id.int else None
    found = []
    for row in rows:
        try:
            d = saved_definition(p, row)
        except InvalidInput:
            continue  # no longer fits the policy: it returns nobody
        page = await members_page(conn, p, d, after=before, limit=1)
        if page.items and page.items[0].profile_id == str(profile_id):
            found.append(
                {
                    "id": str(row.id),
                    "name": row.name,
                    "purpose": row.purpose,
                    "channel": row.channel,
                }
            )
    return found
