"""Request and response bodies of the segment API (msgspec; they document the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from cdp.segments.members import Member

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Purpose = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Channel = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
# as every list's `?limit=` (api.params.Limit; cdp.segments.cursor.check_limit)
PageLimit = Annotated[
    int, msgspec.Meta(ge=1, le=1000, description="Items per page: 1 to 1000 (100 when not given)")
]
Rules = Annotated[
    Any,
    msgspec.Meta(
        description='A condition: {"all": [...]}, {"any": [...]}, {"not": {...}} or '
        '{"field", "op", "value"}. Every condition is true or false: a customer without the '
        "value does not satisfy eq, in, gt... and does satisfy ne and not. Country, "
        "jurisdiction, city and categories compare in any case (city and categories also "
        'in any spacing); trait comparisons are typed (5 is not "5"; gt... only numbers; '
        "contains only strings, case-sensitive). At most 500 parts, 16 levels deep, 1000 "
        "values per 'in' and 20,000 in all. See docs/segments.md.",
        examples=[{"all": [{"field": "country", "op": "eq", "value": "RU"}]}],
    ),
]


# Declared by the sending tool: its messages are sent by automatic dialling or mailing, without a
# person choosing each number. Where a jurisdiction forbids advertising sent so on the channel
# (38-FZ art. 18(2): phone and SMS in Russia), the segment holds none of its customers.
Automated = Annotated[
    bool,
    msgspec.Meta(
        description=(
            "true when the messages are sent by automatic dialling or mailing (robocalls, "
            "automated texts): advertising sent so is excluded where the customer's "
            "jurisdiction forbids it on the channel (38-FZ art. 18(2): phone and sms in "
            "Russia), as not_allowed"
        )
    ),
]


class SegmentIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    purpose: Purpose
    channel: Channel
    rules: Rules
    automated: Automated = False


class QueryIn(msgspec.Struct, forbid_unknown_fields=True):
    """`limit` and `cursor` may come here or, as on every list, in the query string."""

    purpose: Purpose
    channel: Channel
    rules: Rules
    automated: Automated = False
    limit: PageLimit | None = None
    cursor: Annotated[str, msgspec.Meta(max_length=100)] | None = None


class SegmentOut(msgspec.Struct):
    id: str
    name: str
    purpose: str
    channel: str
    rules: dict[str, Any]
    created_by: str
    created_at: datetime
    automated: bool = False


class SegmentList(msgspec.Struct):
    items: list[SegmentOut]
    next_cursor: str | None


class MembersOut(msgspec.Struct):
    """Contactable customers, one each, ordered by profile id."""

    items: list[Member]
    next_cursor: str | None


class ExportOut(msgspec.Struct):
    """One export of a segment: `finished_at` is null while it streams or when the client went
    away before the end; `rows` counts the members sent."""

    export_id: str
    segment_id: str
    purpose: str
    channel: str
    format: str
    exported_by: str
    started_at: datetime
    finished_at: datetime | None
    rows: int


class ExportList(msgspec.Struct):
    """Exports of a segment, newest first."""

    items: list[ExportOut]
    next_cursor: str | None


class ExportStatsOut(ExportOut):
    """`opted_out_since`: members of this export who may no longer be contacted for its purpose
    and channel because of a withdrawal, an opt-out (suppression) or an erasure recorded after
    they were handed out; by reason in `opted_out_since_by_reason` (the rule's first reason)."""

    opted_out_since: int
    opted_out_since_by_reason: dict[str, int]


class StatsOut(msgspec.Struct):
    """`excluded` counts customers by reason; the reasons sum to matched - contactable.
    `last_export` is the segment's latest export with its opted-out counts (null if none)."""

    matched: int
    contactable: int
    excluded: dict[str, int]
    last_export: ExportStatsOut | None = None
