"""Segments: definitions, contactable members, stats, streamed export, ad-hoc query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeVar

from litestar import Controller, delete, get, post
from litestar.datastructures import ResponseHeader
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Schema
from litestar.params import FromPath, FromQuery, JSONBody, Parameter
from litestar.response import Stream

from api.auth import roles
from api.deps import PlatformDep, PrincipalDep
from api.params import Limit
from cdp.errors import InvalidInput
from cdp.ids import parse_uuid
from cdp.segments import service
from cdp.segments.export import FORMATS
from cdp.segments.schemas import (
    ExportList,
    ExportStatsOut,
    MembersOut,
    QueryIn,
    SegmentIn,
    SegmentList,
    SegmentOut,
    StatsOut,
)

T = TypeVar("T")
MARKETING = roles("admin", "marketing")
EXPORT_ID = ResponseHeader(
    name="X-Export-Id",
    description="The id of this export's record: GET /v1/segments/{id}/exports/{export_id}",
    documentation_only=True,
)


@dataclass
class ExportOperation(Operation):
    """An export streams NDJSON or CSV, which the OpenAPI document must say (the framework
    documents a stream as JSON)."""

    def __post_init__(self) -> None:
        ok = self.responses["200"] if self.responses else None
        if isinstance(ok, OpenAPIResponse):
            rows = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
            ok.description = (
                "The members, streamed: one JSON object per line (NDJSON), or a CSV with a header "
                "row; fields profile_id, address, unsubscribe_token, first_name"
            )
            ok.content = {media: rows for media in FORMATS.values()}


def given_once(name: str, in_body: T | None, in_query: T | None) -> T | None:
    """A paging parameter of the ad-hoc query, given in the body or the query string (API.md:
    "?limit= and ?cursor="; the query string used to be ignored, and a client following
    `next_cursor` there got the first page forever). Both, differing: a 400 naming it."""
    if in_body is not None and in_query is not None and in_body != in_query:
        raise InvalidInput.field(name, "given in the query string and in the body, differently")
    return in_query if in_body is None else in_body


class SegmentController(Controller):
    path = "/v1/segments"
    tags = ("segments",)

    @post(
        "/",
        opt=MARKETING,
        status_code=201,
        summary="Save a segment definition",
        response_description="The saved segment with its `id`",
    )
    async def create(
        self, data: JSONBody[SegmentIn], platform: PlatformDep, principal: PrincipalDep
    ) -> SegmentOut:
        return await service.create_segment(
            platform,
            principal,
            name=data.name,
            purpose=data.purpose,
            channel=data.channel,
            rules=data.rules,
            automated=data.automated,
        )

    @get(
        "/",
        opt=MARKETING,
        summary="Saved segments, oldest first (cursor-paginated)",
        response_description="A page of saved segments",
    )
    async def list_all(
        self,
        platform: PlatformDep,
        limit: Limit = None,
        cursor: FromQuery[str | None] = None,
    ) -> SegmentList:
        return await service.list_segments(platform, limit=limit, cursor=cursor)

    @post(
        "/query",
        opt=MARKETING,
        status_code=200,
        summary="Contactable members of an unsaved definition (access-logged)",
        description="`limit` and `cursor` are taken from the query string, as on every list, "
        "or from the body; given in both, they must agree (else a 400 naming the field).",
        response_description="A page of contactable members of the definition, one address each",
    )
    async def query(
        self,
        data: JSONBody[QueryIn],
        platform: PlatformDep,
        principal: PrincipalDep,
        limit: Limit = None,
        cursor: FromQuery[str | None] = None,
    ) -> MembersOut:
        return await service.query_members(
            platform,
            principal,
            purpose=data.purpose,
            channel=data.channel,
            rules=data.rules,
            automated=data.automated,
            limit=given_once("limit", data.limit, limit),
            cursor=given_once("cursor", data.cursor, cursor),
        )

    @get(
        "/{segment_id:str}",
        opt=MARKETING,
        summary="One saved segment",
        response_description="The saved segment",
    )
    async def read(self, segment_id: FromPath[str], platform: PlatformDep) -> SegmentOut:
        return await service.get_segment(platform, segment_id)

    @delete(
        "/{segment_id:str}",
        opt=MARKETING,
        summary="Delete a segment (404 afterwards)",
        response_description="The segment was deleted",
    )
    async def remove(self, segment_id: FromPath[str], platform: PlatformDep) -> None:
        await service.delete_segment(platform, segment_id)

    @get(
        "/{segment_id:str}/members",
        opt=MARKETING,
        summary="Customers who may be contacted now, one address each (access-logged)",
        response_description=(
            "A page of contactable members, one address each, with an unsubscribe token"
        ),
    )
    async def members(
        self,
        segment_id: FromPath[str],
        platform: PlatformDep,
        principal: PrincipalDep,
        limit: Limit = None,
        cursor: FromQuery[str | None] = None,
    ) -> MembersOut:
        return await service.segment_members(
            platform, principal, segment_id, limit=limit, cursor=cursor
        )

    @get(
        "/{segment_id:str}/stats",
        opt=MARKETING,
        summary="Matched, contactable, and why not; the latest export's opted-out count",
        response_description=(
            "`matched`, `contactable`, and the excluded by reason (summing to matched - "
            "contactable)"
        ),
    )
    async def stats(self, segment_id: FromPath[str], platform: PlatformDep) -> StatsOut:
        return await service.segment_stats(platform, segment_id)

    @get(
        "/{segment_id:str}/export",
        opt=MARKETING,
        summary="All members, streamed as NDJSON or CSV (access-logged, recorded as an export)",
        response_headers=[EXPORT_ID],
        operation_class=ExportOperation,
    )
    async def export(
        self,
        segment_id: FromPath[str],
        platform: PlatformDep,
        principal: PrincipalDep,
        format: Annotated[str, Parameter(schema_extra={"enum": list(FORMATS)})] = "ndjson",
    ) -> Stream:
        started = await service.start_export(platform, principal, segment_id, format)
        name = f"segment-{parse_uuid(segment_id)}.{format}"
        return Stream(
            started.chunks,
            media_type=started.media_type,
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "X-Export-Id": str(started.export_id),
            },
        )

    @get(
        "/{segment_id:str}/exports",
        opt=MARKETING,
        summary="The segment's exports, newest first: who, when, how many rows",
        response_description="A page of the segment's exports, newest first",
    )
    async def exports(
        self,
        segment_id: FromPath[str],
        platform: PlatformDep,
        limit: Limit = None,
        cursor: FromQuery[str | None] = None,
    ) -> ExportList:
        return await service.list_exports(platform, segment_id, limit=limit, cursor=cursor)

    @get(
        "/{segment_id:str}/exports/{export_id:str}",
        opt=MARKETING,
        summary="One export, with how many of its members have opted out since",
        response_description="The export and how many of its members have opted out since",
    )
    async def export_record(
        self, segment_id: FromPath[str], export_id: FromPath[str], platform: PlatformDep
    ) -> ExportStatsOut:
        return await service.export_stats(platform, segment_id, export_id)
