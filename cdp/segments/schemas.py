"""Request and response bodies of the segment API (msgspec; they document the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from cdp.segments.members import Member

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Purpose = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Channel = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
Rules = Annotated[
    Any,
    msgspec.Meta(
        description='A condition: {"all": [...]}, {"any": [...]}, {"not": {...}} or '
        '{"field", "op", "value"}',
        examples=[{"all": [{"field": "country", "op": "eq", "value": "RU"}]}],
    ),
]


class SegmentIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    purpose: Purpose
    channel: Channel
    rules: Rules


class QueryIn(msgspec.Struct, forbid_unknown_fields=True):
    purpose: Purpose
    channel: Channel
    rules: Rules
    limit: int | None = None
    cursor: Annotated[str, msgspec.Meta(max_length=100)] | None = None


class SegmentOut(msgspec.Struct):
    id: str
    name: str
    purpose: str
    channel: str
    rules: dict[str, Any]
    created_by: str
    created_at: datetime


class SegmentList(msgspec.Struct):
    items: list[SegmentOut]
    next_cursor: str | None


class MembersOut(msgspec.Struct):
    """Contactable customers, one each, ordered by profile id."""

    items: list[Member]
    next_cursor: str | None


class StatsOut(msgspec.Struct):
    """`excluded` counts customers by reason; the reasons sum to matched - contactable."""

    matched: int
    contactable: int
    excluded: dict[str, int]
