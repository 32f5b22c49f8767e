"""Export records: which export of a segment handed out whom, and who has opted out since.

Every export gets an id (UUIDv7) and a row in `segment_exports`: who (key name and role), the
segment, purpose, channel and format, `started_at`, `finished_at` once the last row went out
(NULL when the client went away), and `rows` sent so far. Whom it handed out is written page by
page, each page before its bytes leave, in one short write transaction: one row of
`segment_export_chunks` whose `members` packs every member of the page as 32 bytes (profile
id, then the id of the identity whose address was sent; zeros for push and messenger). One
insert of 64 KB per 2000 members instead of 2000 row inserts with their index entries keeps the
export's throughput, and memory stays one page.

Opted out since: each recorded member is judged again, now, by the contactability rule on the
address they were sent (`audience.handed_out_query`), one chunk per query, so memory stays
constant. A member counts when the rule now excludes them because of a withdrawal, a
suppression (opt-outs suppress) or an erasure. Every member was contactable when handed out,
so whatever excludes them now was recorded after the export started; a customer who had opted
out before was never handed out and is not counted.

Ids only, no personal data: after an erasure the identity row is gone, so the record no longer
leads to an address; the profile id stays, as it does in `profiles` (status "erased"). So
`consent.dsr.erasure` needs no change. Records older than the retention are pruned.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Uuid, column, delete, insert, select, text, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.selectable import FromClause

from cdp.apikeys import Principal
from cdp.db.tables import segment_export_chunks, segment_exports
from cdp.ids import new_id, utcnow
from cdp.platform import Platform
from cdp.segments.audience import Audience, handed_out_query, tune
from cdp.segments.members import Page

OPT_OUT_REASONS = ("withdrawn", "suppressed", "erased")
RECORD = 32  # bytes per member: profile id, identity id
NO_IDENTITY = bytes(16)
RETENTION = timedelta(days=180)
se = segment_exports.c
sc = segment_export_chunks.c


def pack(handed: Iterable[tuple[uuid.UUID, Any]]) -> bytes:
    """32 bytes per member; the identity id as the members query returns it (hex digits on
    SQLite, a UUID on PostgreSQL) or None."""
    out = bytearray()
    for pid, identity_id in handed:
        out += pid.bytes
        if identity_id is None:
            out += NO_IDENTITY
        elif isinstance(identity_id, str):
            out += bytes.fromhex(identity_id)
        else:
            out += identity_id.bytes
    return bytes(out)


# writing -----------------------------------------------------------------------------------
async def begin(
    conn: AsyncConnection,
    who: Principal,
    segment_id: uuid.UUID,
    *,
    purpose: str,
    channel: str,
    fmt: str,
) -> uuid.UUID:
    """Put a new export on record (inside the caller's write transaction); its id."""
    export_id = new_id()
    await conn.execute(
        insert(segment_exports).values(
            id=export_id,
            segment_id=segment_id,
            actor=who.name,
            role=who.role,
            purpose=purpose,
            channel=channel,
            format=fmt,
            started_at=utcnow(),
            finished_at=None,
            rows=0,
        )
    )
    return export_id


@dataclass(slots=True)
class Recorder:
    """Writes each page's members before the page is sent (`export_chunks(record=...)`)."""

    p: Platform
    export_id: uuid.UUID
    sent: int = 0
    _seq: int = field(default=0, repr=False)

    async def page(self, page: Page) -> None:
        n = len(page.handed)
        async with self.p.db.write() as conn:
            await conn.execute(
                insert(segment_export_chunks).values(
                    export_id=self.export_id, seq=self._seq, rows=n, members=pack(page.handed)
                )
            )
            await conn.execute(
                update(segment_exports).where(se.id == self.export_id).values(rows=se.rows + n)
            )
        self._seq += 1
        self.sent += n


async def finish(conn: AsyncConnection, export_id: uuid.UUID) -> None:
    await conn.execute(
        update(segment_exports).where(se.id == export_id).values(finished_at=utcnow())
    )


# reading -----------------------------------------------------------------------------------
async def list_exports(
    conn: AsyncConnection, segment_id: uuid.UUID, *, before: uuid.UUID | None, limit: int
) -> list[Row]:
    """The segment's exports, newest first (ids are time-ordered)."""
    query = select(segment_exports).where(se.segment_id == segment_id)
    if before is not None:
        query = query.where(se.id < before)
    return list((await conn.execute(query.order_by(se.id.desc()).limit(limit))).all())


async def load_export(
    conn: AsyncConnection, segment_id: uuid.UUID, export_id: uuid.UUID
) -> Row | None:
    query = select(segment_exports).where(se.id == export_id, se.segment_id == segment_id)
    return (await conn.execute(query)).first()


async def latest_export(conn: AsyncConnection, segment_id: uuid.UUID) -> Row | None:
    rows = await list_exports(conn, segment_id, before=None, limit=1)
    return rows[0] if rows else None


def handed_table(dialect: str) -> FromClause:
    """One chunk's members as a table (pid, iid), from the parameters of `handed_params`."""
    if dialect == "postgresql":
        sql = text(
            "SELECT h.pid, h.iid FROM unnest(CAST(:pids AS uuid[]), CAST(:iids AS uuid[]))"
            " AS h(pid, iid)"
        )
    else:  # SQLite stores a UUID as its 32 lower-case hex digits
        sql = text(
            "SELECT substr(value, 1, 32) AS pid, substr(value, 33, 32) AS iid"
            " FROM json_each(:records)"
        )
    return sql.columns(column("pid", Uuid), column("iid", Uuid)).subquery("handed")


def handed_params(dialect: str, members: bytes) -> dict[str, Any]:
    """Hex strings, no UUID objects: parsing them is the database's job."""
    hexed, step = members.hex(), 2 * RECORD
    starts = range(0, len(hexed), step)
    if dialect == "postgresql":
        return {
            "pids": [hexed[at : at + 32] for at in starts],
            "iids": [hexed[at + 32 : at + step] for at in starts],
        }
    return {"records": json.dumps([hexed[at : at + step] for at in starts])}


async def opted_out_since(p: Platform, export: Row) -> dict[str, int]:
    """Members of the export now excluded by a withdrawal, suppression or erasure, by reason.
    One chunk (one page of the export) per read transaction."""
    counts = dict.fromkeys(OPT_OUT_REASONS, 0)
    dialect = p.db.engine.dialect.name
    # read as not automated (segments.automated): an automated export handed out no one its
    # jurisdiction forbade, and what is counted here is opting out, not a change of jurisdiction
    audience = Audience(p.policy, export.purpose, export.channel, dialect)
    query = handed_out_query(audience, handed_table(dialect))
    params = audience.params(utcnow())
    seq = -1
    while True:
        async with p.db.read() as conn:
            chunk = (
                await conn.execute(
                    select(sc.seq, sc.members)
                    .where(sc.export_id == export.id, sc.seq > seq)
                    .order_by(sc.seq)
                    .limit(1)
                )
            ).first()
            if chunk is None:
                return counts
            seq = chunk.seq
            await tune(conn)
            rows = await conn.execute(query, handed_params(dialect, chunk.members) | params)
            for reason, n in rows:
                if reason in counts:
                    counts[reason] += n


# retention ---------------------------------------------------------------------------------
async def prune_exports(
    p: Platform, older_than: timedelta = RETENTION, *, now: datetime | None = None, batch: int = 50
) -> int:
    """Delete export records started before `older_than` ago, with their members, a few
    exports per short write transaction. Returns how many exports it deleted."""
    cutoff = (now or utcnow()) - older_than
    deleted = 0
    while True:
        async with p.db.write() as conn:
            ids = [
                i
                for (i,) in await conn.execute(
                    select(se.id).where(se.started_at < cutoff).order_by(se.id).limit(batch)
                )
            ]
            if ids:
                await conn.execute(delete(segment_export_chunks).where(sc.export_id.in_(ids)))
                await conn.execute(delete(segment_exports).where(se.id.in_(ids)))
        deleted += len(ids)
        if len(ids) < batch:
            return deleted
