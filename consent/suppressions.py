"""The suppression list: addresses that must not be contacted for a purpose, keyed by blind index.

Suppressions outlive profiles and erasure. A suppression stops contact until a grant that
occurred after it; repeating an opt-out keeps the latest time.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache

from sqlalchemy import Insert, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.upsert import dialect_insert
from cdp.ids import utcnow
from consent.outbox.enqueue import event_row, write_rows
from consent.tables import suppressions


@dataclass(frozen=True, slots=True)
class Suppression:
    bidx: bytes
    purpose: str
    channel: str
    reason: str
    source: str
    at: datetime
    profile_id: uuid.UUID | None = None
    address_kind: str | None = None


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
    await suppress_many(
        conn, [Suppression(bidx, purpose, channel, reason, source, at, profile_id, address_kind)]
    )


_s = suppressions.c
# Statements built once: building one per call cost more than the driver's whole round trip.
_SUPPRESSED = select(_s.bidx, _s.purpose, _s.channel, _s.at).where(
    _s.bidx.in_(bindparam("bidxs", expanding=True))
)


@cache  # built once per dialect: SQLAlchemy then reuses its compiled form
def _upsert(dialect: str) -> Insert:
    stmt = dialect_insert(dialect, suppressions)
    return stmt.on_conflict_do_update(
        index_elements=[_s.bidx, _s.purpose, _s.channel],
        set_={
            "at": stmt.excluded.at,
            "reason": stmt.excluded.reason,
            "source": stmt.excluded.source,
        },
        where=_s.at < stmt.excluded.at,
    )


async def suppress_many(
    conn: AsyncConnection, items: list[Suppression], *, outbox: list[dict] | None = None
) -> None:
    """Add or refresh suppressions: a new one is announced to the webhook outbox (in this
    transaction; or onto `outbox`, for the caller to write with its own events); an existing
    one keeps the latest time, reason and source."""
    if not items:
        return
    current = await suppressed_at(conn, sorted({i.bidx for i in items}))
    added: dict[tuple[bytes, str, str], Suppression] = {}  # new rows, announced
    later: dict[tuple[bytes, str, str], Suppression] = {}
    for item in items:
        key = (item.bidx, item.purpose, item.channel)
        if key not in current:
            current[key] = item.at
            added[key] = item
        elif item.at > current[key]:
            current[key] = item.at
            if key in added:
                added[key] = item
            else:
                later[key] = item
    now = utcnow()
    # one statement: a new row is inserted; an existing one (`later`, or a row another process
    # inserted meanwhile) takes this time, reason and source if they are later than its own
    rows = [
        {
            "bidx": i.bidx,
            "purpose": i.purpose,
            "channel": i.channel,
            "reason": i.reason,
            "source": i.source,
            "at": i.at,
            "created_at": now,
        }
        for i in (*added.values(), *later.values())
    ]
    if rows:
        await conn.execute(_upsert(conn.dialect.name), rows)
    announced = [
        event_row(
            "suppression.added",
            occurred_at=i.at,
            profile_id=i.profile_id,
            address_kind=i.address_kind,
            address_bidx=i.bidx,
            purpose=i.purpose,
            channel=i.channel,
            source=i.source,
            recorded_at=now,
        )
        for i in added.values()
    ]
    if outbox is not None:
        outbox.extend(announced)
    elif announced:
        await write_rows(conn, announced)


async def suppressed_at(
    conn: AsyncConnection, bidxs: list[bytes]
) -> dict[tuple[bytes, str, str], datetime]:
    """(bidx, purpose, channel-or-*) -> time, for these addresses."""
    out: dict[tuple[bytes, str, str], datetime] = {}
    for start in range(0, len(bidxs), 500):
        rows = await conn.execute(_SUPPRESSED, {"bidxs": bidxs[start : start + 500]})
        out.update({(b, p, c): at for b, p, c, at in rows})
    return out


def latest_suppression(
    table: dict[tuple[bytes, str, str], datetime], bidx: bytes, purpose: str, channel: str
) -> datetime | None:
    times = [t for key in ((bidx, purpose, channel), (bidx, purpose, "*")) if (t := table.get(key))]
    return max(times) if times else None


def latest_for_profile(
    table: dict[tuple[bytes, str, str], datetime], bidxs: list[bytes], purpose: str, channel: str
) -> datetime | None:
    """For a channel addressed by the profile (push, messenger): the latest suppression of any
    address the customer holds. "Stop all marketing" said from an address, even one we had not
    seen yet, concerns the person who turns out to hold it, so an older grant does not lift it."""
    times = [t for b in bidxs if (t := latest_suppression(table, b, purpose, channel))]
    return max(times) if times else None
