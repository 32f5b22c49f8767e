"""The suppression list: addresses that must not be contacted for a purpose, keyed by blind index.

Suppressions outlive profiles and erasure. A suppression stops contact until a grant that
occurred after it; repeating an opt-out keeps the latest time.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.upsert import insert_ignore
from cdp.ids import utcnow
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
) -> None:
    s = suppressions.c
    await conn.execute(
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
