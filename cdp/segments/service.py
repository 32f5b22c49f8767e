"""Segment use cases, called by the API: definitions, members, stats, export, ad-hoc query.

Every members page, export and ad-hoc query is written to the access log: who (key name and
role), which segment (or "adhoc" with a digest of the definition, never its values), how many
rows. Pages are read in a read transaction and logged in a short write transaction before they
are returned, so nothing is handed out unlogged.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
from sqlalchemy.engine import Row

from cdp.access_log import log_access
from cdp.apikeys import Principal
from cdp.errors import Conflict, FieldError, InvalidInput, NotFound
from cdp.ids import parse_uuid, utcnow
from cdp.platform import Platform
from cdp.segments import store
from cdp.segments.audience import Audience, stats_query, tune
from cdp.segments.conditions import compile_condition
from cdp.segments.cursor import check_limit, decode_cursor, encode_cursor
from cdp.segments.export import FORMATS, export_chunks
from cdp.segments.members import Definition, Page, members_page
from cdp.segments.rules import parse_rules, to_json
from cdp.segments.schemas import MembersOut, SegmentList, SegmentOut, StatsOut
from consent.rule import REASONS

ADHOC = "adhoc"


def build_definition(
    p: Platform, purpose: str, channel: str, rules: Any, *, name: str | None = None
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
    return Definition(purpose, channel, condition)


def _digest(d: Definition) -> str:
    canonical = msgspec.json.encode([d.purpose, d.channel, to_json(d.condition)], order="sorted")
    return hashlib.sha256(canonical).hexdigest()


def segment_body(row: Row) -> SegmentOut:
    return SegmentOut(
        id=str(row.id),
        name=row.name,
        purpose=row.purpose,
        channel=row.channel,
        rules=row.rules,
        created_by=row.created_by,
        created_at=row.created_at,
    )


def _segment_id(segment_id: str) -> uuid.UUID:
    sid = parse_uuid(segment_id)
    if sid is None:
        raise NotFound("no segment with this id")
    return sid


async def _load(p: Platform, segment_id: str) -> tuple[Row, Definition]:
    sid = _segment_id(segment_id)
    async with p.db.read() as conn:
        row = await store.load_segment(conn, sid)
    if row is None:
        raise NotFound("no segment with this id")
    try:
        return row, build_definition(p, row.purpose, row.channel, row.rules)
    except InvalidInput:
        raise Conflict("the saved segment no longer fits the loaded policy") from None


# definitions -------------------------------------------------------------------------------
async def create_segment(
    p: Platform, who: Principal, *, name: str, purpose: str, channel: str, rules: Any
) -> SegmentOut:
    d = build_definition(p, purpose, channel, rules, name=name)
    async with p.db.write() as conn:
        row = await store.insert_segment(
            conn,
            name=name.strip(),
            purpose=purpose,
            channel=channel,
            rules=to_json(d.condition),
            created_by=who.name,
        )
    return segment_body(row)


async def list_segments(p: Platform, *, limit: int | None, cursor: str | None) -> SegmentList:
    size = check_limit(limit)
    after = decode_cursor(cursor)
    async with p.db.read() as conn:
        rows = await store.list_segments(conn, after=after, limit=size + 1)
    more = len(rows) > size
    rows = rows[:size]
    return SegmentList(
        items=[segment_body(r) for r in rows],
        next_cursor=encode_cursor(rows[-1].id) if more else None,
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
def _page_body(page: Page) -> MembersOut:
    return MembersOut(items=page.items, next_cursor=encode_cursor(page.next_after))


async def _logged_page(
    p: Platform,
    who: Principal,
    d: Definition,
    *,
    action: str,
    object_id: str,
    limit: int | None,
    cursor: str | None,
) -> MembersOut:
    size = check_limit(limit)
    after = decode_cursor(cursor)
    async with p.db.read() as conn:
        page = await members_page(conn, p, d, after=after, limit=size)
    async with p.db.write() as conn:
        await log_access(
            conn,
            who,
            action,
            object_type="segment",
            object_id=object_id,
            rows=len(page.items),
            detail={"purpose": d.purpose, "channel": d.channel, "definition": _digest(d)},
        )
    return _page_body(page)


async def segment_members(
    p: Platform, who: Principal, segment_id: str, *, limit: int | None, cursor: str | None
) -> MembersOut:
    row, d = await _load(p, segment_id)
    return await _logged_page(
        p, who, d, action="segment.members", object_id=str(row.id), limit=limit, cursor=cursor
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
) -> MembersOut:
    d = build_definition(p, purpose, channel, rules)
    return await _logged_page(
        p, who, d, action="segment.query", object_id=ADHOC, limit=limit, cursor=cursor
    )


# stats -------------------------------------------------------------------------------------
async def definition_stats(p: Platform, d: Definition) -> StatsOut:
    async with p.db.read() as conn:
        await tune(conn)
        dialect = conn.dialect.name
        compiled = compile_condition(d.condition, dialect, utcnow())
        query = stats_query(Audience(p.policy, d.purpose, d.channel, dialect), compiled)
        counts = {reason: n for reason, n in await conn.execute(query)}
    contactable = counts.pop(None, 0)
    excluded = dict.fromkeys(REASONS, 0) | counts
    return StatsOut(
        matched=contactable + sum(excluded.values()),
        contactable=contactable,
        excluded=excluded,
    )


async def segment_stats(p: Platform, segment_id: str) -> StatsOut:
    _, d = await _load(p, segment_id)
    return await definition_stats(p, d)


# export ------------------------------------------------------------------------------------
async def open_export(
    p: Platform, who: Principal, segment_id: str, fmt: str
) -> tuple[str, AsyncIterator[bytes]]:
    """Check everything and put the export on record before the response starts (so errors
    are proper problem answers), then hand out the stream."""
    if fmt not in FORMATS:
        raise InvalidInput.field("format", f"must be one of {', '.join(FORMATS)}")
    row, d = await _load(p, segment_id)
    detail = {"purpose": d.purpose, "channel": d.channel, "format": fmt, "definition": _digest(d)}
    await _log_export(p, who, str(row.id), "segment.export_started", 0, detail)
    return FORMATS[fmt], _logged_export(p, who, str(row.id), d, fmt, detail)


async def _logged_export(
    p: Platform, who: Principal, segment_id: str, d: Definition, fmt: str, detail: dict[str, Any]
) -> AsyncIterator[bytes]:
    sent = 0
    complete = False

    def counted(n: int) -> None:
        nonlocal sent
        sent += n

    try:
        async for chunk in export_chunks(p, d, fmt, counted=counted):
            yield chunk
        complete = True
    finally:  # also when the client went away: shielded from the cancellation
        with anyio.CancelScope(shield=True):
            await _log_export(
                p, who, segment_id, "segment.export", sent, detail | {"complete": complete}
            )


async def _log_export(
    p: Platform, who: Principal, segment_id: str, action: str, rows: int, detail: dict[str, Any]
) -> None:
    async with p.db.write() as conn:
        await log_access(
            conn,
            who,
            action,
            object_type="segment",
            object_id=segment_id,
            rows=rows,
            detail=detail,
        )
