"""Segment use cases, called by the API: definitions, members, stats, export, ad-hoc query.

Every members page, export and ad-hoc query is written to the access log: who (key name and
role), which segment (or "adhoc" with a digest of the definition, never its values), how many
rows. Pages are read in a read transaction and logged in a short write transaction before they
are returned, so nothing is handed out unlogged. An export is also put on record (`exports`):
its id, and whom each page handed out, written before the page is sent.

Export records and their "opted out since" counts expose counts only, no member data, so reading
them is not access-logged (as segment stats are not).
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.access_log import log_access, record_access
from cdp.apikeys import Principal
from cdp.errors import Conflict, FieldError, InvalidInput, NotFound
from cdp.ids import parse_uuid, utcnow
from cdp.platform import Platform
from cdp.segments import exports, store
from cdp.segments.audience import Audience, stats_query, tune
from cdp.segments.conditions import compile_condition
from cdp.segments.cursor import check_limit, decode_cursor, encode_cursor
from cdp.segments.export import FORMATS, export_chunks
from cdp.segments.members import Definition, Page, compile_options, members_page
from cdp.segments.rules import parse_rules, to_json
from cdp.segments.schemas import (
    ExportList,
    ExportOut,
    ExportStatsOut,
    MembersOut,
    SegmentList,
    SegmentOut,
    StatsOut,
)
from consent.rule import REASONS

ADHOC = "adhoc"


def build_definition(
    p: Platform,
    purpose: str,
    channel: str,
    rules: Any,
    *,
    name: str | None = None,
    automated: bool = False,
) -> Definition:
    """Validate a definition against the policy; 400 naming every bad field and rule part."""
    errors: list[FieldError] = []
    if name is not None and not name.strip():
        errors.append(FieldError("name", "required"))
    if purpose not in p.policy.purposes:
        errors.append(FieldError("purpose", "unknown purpose"))
    if channel not in p.policy.channels:
        errors.append(FieldError("channel", "unknown channel"))
    try:
        condition = parse_rules(rules, jurisdictions=p.policy.jurisdictions)
    except InvalidInput as exc:
        errors.extend(exc.errors)
    if errors:
        raise InvalidInput("the segment definition is not valid", errors)
    return Definition(purpose, channel, condition, automated)


def saved_definition(p: Platform, row: Row) -> Definition:
    """A saved segment's definition (a 400 where it no longer fits the loaded policy)."""
    return build_definition(p, row.purpose, row.channel, row.rules, automated=row.automated)


def _digest(d: Definition) -> str:
    return hashlib.sha256(d.canonical()).hexdigest()


def _decided(p: Platform, d: Definition) -> dict[str, Any]:
    """What decided who was handed out, for the access log: the definition and the policy
    version in force (POLICIES.md: we record which policy version decided what)."""
    decided: dict[str, Any] = {
        "purpose": d.purpose,
        "channel": d.channel,
        "definition": _digest(d),
        "policy_version": p.policy.version,
    }
    if d.automated:
        decided["automated"] = True
    return decided


def segment_body(row: Row) -> SegmentOut:
    return SegmentOut(
        id=str(row.id),
        name=row.name,
        purpose=row.purpose,
        channel=row.channel,
        rules=row.rules,
        created_by=row.created_by,
        created_at=row.created_at,
        automated=row.automated,
    )


def _segment_id(segment_id: str) -> uuid.UUID:
    sid = parse_uuid(segment_id)
    if sid is None:
        raise NotFound("no segment with this id")
    return sid


async def _load(p: Platform, segment_id: str) -> tuple[Row, Definition]:
    sid = _segment_id(segment_id)
    async with p.db.read() as conn:
        return await _load_in(conn, p, sid)


async def _load_in(conn: AsyncConnection, p: Platform, sid: uuid.UUID) -> tuple[Row, Definition]:
    row = await store.load_segment(conn, sid)
    if row is None:
        raise NotFound("no segment with this id")
    try:
        return row, saved_definition(p, row)
    except InvalidInput:
        raise Conflict("the saved segment no longer fits the loaded policy") from None


# definitions -------------------------------------------------------------------------------
async def create_segment(
    p: Platform,
    who: Principal,
    *,
    name: str,
    purpose: str,
    channel: str,
    rules: Any,
    automated: bool = False,
) -> SegmentOut:
    d = build_definition(p, purpose, channel, rules, name=name, automated=automated)
    async with p.db.write() as conn:
        row = await store.insert_segment(
            conn,
            name=name.strip(),
            purpose=purpose,
            channel=channel,
            rules=to_json(d.condition),
            created_by=who.name,
            automated=automated,
        )
    return segment_body(row)


async def list_segments(p: Platform, *, limit: int | None, cursor: str | None) -> SegmentList:
    size = check_limit(limit)
    after = decode_cursor(cursor, scope="segments")
    async with p.db.read() as conn:
        rows = await store.list_segments(conn, after=after, limit=size + 1)
    more = len(rows) > size
    rows = rows[:size]
    return SegmentList(
        items=[segment_body(r) for r in rows],
        next_cursor=encode_cursor(rows[-1].id, scope="segments") if more else None,
    )


async def get_segment(p: Platform, segment_id: str) -> SegmentOut:
    sid = _segment_id(segment_id)
    async with p.db.read() as conn:
        row = await store.load_segment(conn, sid)
    if row is None:
        raise NotFound("no segment with this id")
    return segment_body(row)


async def delete_segment(p: Platform, segment_id: str) -> None:
    sid = _segment_id(segment_id)
    async with p.db.write() as conn:
        if not await store.mark_deleted(conn, sid):
            raise NotFound("no segment with this id")


# members -----------------------------------------------------------------------------------
def _page_body(page: Page, scope: str) -> MembersOut:
    return MembersOut(items=page.items, next_cursor=encode_cursor(page.next_after, scope=scope))


async def _logged_page(
    p: Platform,
    who: Principal,
    d: Definition | uuid.UUID,
    *,
    action: str,
    object_id: str,
    limit: int | None,
    cursor: str | None,
) -> MembersOut:
    """A members page of a definition, or of the saved segment with this id (loaded in the
    page's own read transaction: one transaction a page)."""
    size = check_limit(limit)
    # a members cursor goes on in the walk that handed it out: this segment, or these rules
    scope = f"{action}:{_digest(d) if isinstance(d, Definition) else object_id}"
    after = decode_cursor(cursor, scope=scope)
    async with p.db.read() as conn:
        if not isinstance(d, Definition):
            _, d = await _load_in(conn, p, d)
        page = await members_page(conn, p, d, after=after, limit=size)
    await record_access(
        p.db,
        who,
        action,
        object_type="segment",
        object_id=object_id,
        rows=len(page.items),
        detail=_decided(p, d),
    )
    return _page_body(page, scope)


async def segment_members(
    p: Platform, who: Principal, segment_id: str, *, limit: int | None, cursor: str | None
) -> MembersOut:
    sid = _segment_id(segment_id)
    return await _logged_page(
        p, who, sid, action="segment.members", object_id=str(sid), limit=limit, cursor=cursor
    )


async def query_members(
    p: Platform,
    who: Principal,
    *,
    purpose: str,
    channel: str,
    rules: Any,
    limit: int | None,
    cursor: str | None,
    automated: bool = False,
) -> MembersOut:
    d = build_definition(p, purpose, channel, rules, automated=automated)
    return await _logged_page(
        p, who, d, action="segment.query", object_id=ADHOC, limit=limit, cursor=cursor
    )


# stats -------------------------------------------------------------------------------------
async def definition_stats(p: Platform, d: Definition, *, now: datetime | None = None) -> StatsOut:
    """Matched, contactable and excluded by reason at `now` (the current time unless given)."""
    now = now or utcnow()
    async with p.db.read() as conn:
        await tune(conn)
        dialect = conn.dialect.name
        audience = Audience(p.policy, d.purpose, d.channel, dialect, d.automated)
        compiled = compile_condition(d.condition, dialect, now, audience.scope)
        query = stats_query(audience, compiled)
        options = compile_options(conn, d.canonical())
        rows = await conn.execute(query, audience.params(now), execution_options=options)
        counts = {reason: n for reason, n in rows}
    contactable = counts.pop(None, 0)
    excluded = dict.fromkeys(REASONS, 0) | counts
    return StatsOut(
        matched=contactable + sum(excluded.values()),
        contactable=contactable,
        excluded=excluded,
    )


async def segment_stats(p: Platform, segment_id: str) -> StatsOut:
    row, d = await _load(p, segment_id)
    stats = await definition_stats(p, d)
    async with p.db.read() as conn:
        latest = await exports.latest_export(conn, row.id)
    if latest is not None:
        stats.last_export = await _export_stats(p, latest)
    return stats


# export records ----------------------------------------------------------------------------
def _export_fields(r: Row) -> dict[str, Any]:
    return {
        "export_id": str(r.id),
        "segment_id": str(r.segment_id),
        "purpose": r.purpose,
        "channel": r.channel,
        "format": r.format,
        "exported_by": r.actor,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "rows": r.rows,
    }


async def _export_stats(p: Platform, r: Row) -> ExportStatsOut:
    by_reason = await exports.opted_out_since(p, r)
    return ExportStatsOut(
        **_export_fields(r),
        opted_out_since=sum(by_reason.values()),
        opted_out_since_by_reason=by_reason,
    )


async def list_exports(
    p: Platform, segment_id: str, *, limit: int | None, cursor: str | None
) -> ExportList:
    size = check_limit(limit)
    sid = _segment_id(segment_id)
    scope = f"exports:{sid}"
    before = decode_cursor(cursor, scope=scope)
    async with p.db.read() as conn:
        if await store.load_segment(conn, sid) is None:
            raise NotFound("no segment with this id")
        rows = await exports.list_exports(conn, sid, before=before, limit=size + 1)
    more = len(rows) > size
    rows = rows[:size]
    return ExportList(
        items=[ExportOut(**_export_fields(r)) for r in rows],
        next_cursor=encode_cursor(rows[-1].id, scope=scope) if more else None,
    )


async def export_stats(p: Platform, segment_id: str, export_id: str) -> ExportStatsOut:
    sid = _segment_id(segment_id)
    eid = parse_uuid(export_id)
    async with p.db.read() as conn:
        if await store.load_segment(conn, sid) is None:
            raise NotFound("no segment with this id")
        row = await exports.load_export(conn, sid, eid) if eid is not None else None
    if row is None:
        raise NotFound("no export of this segment with this id")
    return await _export_stats(p, row)


# export ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StartedExport:
    export_id: uuid.UUID
    media_type: str
    chunks: AsyncIterator[bytes]


async def start_export(p: Platform, who: Principal, segment_id: str, fmt: str) -> StartedExport:
    """Check everything, put the export on record and log its start before the response starts
    (so errors are proper problem answers and the id can go out in a header), then hand out
    the stream."""
    if fmt not in FORMATS:
        raise InvalidInput.field("format", f"must be one of {', '.join(FORMATS)}")
    row, d = await _load(p, segment_id)
    async with p.db.write() as conn:
        export_id = await exports.begin(
            conn, who, row.id, purpose=d.purpose, channel=d.channel, fmt=fmt
        )
        detail = {"export_id": str(export_id), "format": fmt} | _decided(p, d)
        await _log_export(conn, who, str(row.id), "segment.export_started", 0, detail)
    recorder = exports.Recorder(p, export_id)
    chunks = _logged_export(p, who, str(row.id), d, fmt, detail, recorder)
    return StartedExport(export_id, FORMATS[fmt], chunks)


async def open_export(
    p: Platform, who: Principal, segment_id: str, fmt: str
) -> tuple[str, AsyncIterator[bytes]]:
    """`start_export` for callers that need no export id: (media type, stream)."""
    started = await start_export(p, who, segment_id, fmt)
    return started.media_type, started.chunks


async def _logged_export(
    p: Platform,
    who: Principal,
    segment_id: str,
    d: Definition,
    fmt: str,
    detail: dict[str, Any],
    recorder: exports.Recorder,
) -> AsyncIterator[bytes]:
    complete = False
    try:
        # closed before the record is written, not left to the garbage collector (the ranges
        # it selects ahead hold connections)
        async with contextlib.aclosing(export_chunks(p, d, fmt, record=recorder.page)) as chunks:
            async for chunk in chunks:
                yield chunk
        complete = True
    finally:  # also when the client went away: shielded from the cancellation
        with anyio.CancelScope(shield=True):
            async with p.db.write() as conn:
                if complete:
                    await exports.finish(conn, recorder.export_id)
                await _log_export(
                    conn,
                    who,
                    segment_id,
                    "segment.export",
                    recorder.sent,
                    detail | {"complete": complete},
                )


async def _log_export(
    conn: AsyncConnection,
    who: Principal,
    segment_id: str,
    action: str,
    rows: int,
    detail: dict[str, Any],
) -> None:
    await log_access(
        conn,
        who,
        action,
        object_type="segment",
        object_id=segment_id,
        rows=rows,
        detail=detail,
    )
