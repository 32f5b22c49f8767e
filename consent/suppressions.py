"""The suppression list: addresses that must not be contacted for a purpose, keyed by blind index.

Suppressions outlive profiles and erasure. A suppression stops contact until a grant that
occurred after it; repeating an opt-out keeps the latest time.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.upsert import insert_ignore
from cdp.ids import utcnow
from consent.outbox.enqueue import enqueue
from consent.tables import suppressions


async def suppress(
    conn: AsyncConnection,
    bidx: bytes,
    purpose: str,
    channel: str,
    *,
    reason: str,
    source: str,
    at: datetime,
    profile_id: uuid.UUID | None = None,
    address_kind: str | None = None,
) -> None:
    s = suppressions.c
    added = await conn.execute(
        insert_ignore(conn, suppressions).values(
            bidx=bidx,
            purpose=purpose,
            channel=channel,
            reason=reason,
            source=source,
            at=at,
            created_at=utcnow(),
        )
    )
    if added.rowcount == 1:  # a new suppression: tell the webhook outbox, in this transaction
        await enqueue(
            conn,
            "suppression.added",
            occurred_at=at,
            profile_id=profile_id,
            address_kind=address_kind,
            address_bidx=bidx,
            purpose=purpose,
            channel=channel,
            source=source,
        )
    await conn.execute(
        update(suppressions)
        .where(s.bidx == bidx, s.purpose == purpose, s.channel == channel, s.at < at)
        .values(at=at, reason=reason, source=source)
    )


async def suppressed_at(
    conn: AsyncConnection, bidxs: list[bytes]
) -> dict[tuple[bytes, str, str], datetime]:
    """(bidx, purpose, channel-or-*) -> time, for these addresses."""
    if not bidxs:
        return {}
    s = suppressions.c
    rows = await conn.execute(select(s.bidx, s.purpose, s.channel, s.at).where(s.bidx.in_(bidxs)))
    return {(b, p, c): at for b, p, c, at in rows}


def latest_suppression(
    table: dict[tuple[bytes, str, str], datetime], bidx: bytes, purpose: str, channel: str
) -> datetime | None:
    times = [t for key in ((bidx, purpose, channel), (bidx, purpose, "*")) if (t := table.get(key))]
    return max(times) if times else None
