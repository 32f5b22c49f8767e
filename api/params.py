"""Query parameters many endpoints share, documented once (the checks live in
`cdp.segments.cursor.check_limit`, each list's cursor decoder and `consent.audit.paging.period`)."""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter

# API.md: "?limit= (default 100, max 1000)"
Limit = Annotated[
    int | None,
    Parameter(
        description="Items per page: 1 to 1000 (100 when not given)",
        schema_extra={"minimum": 1, "maximum": 1000, "default": 100},
    ),
]

# A time filter (`since`, `until`): RFC 3339 text, read by `consent.audit.paging.period`. Not a
# datetime here: the framework's conversion took a number for a Unix time.
Moment = Annotated[
    str | None,
    Parameter(
        description="An RFC 3339 time with its zone (2026-11-22T10:00:00Z)",
        schema_extra={"format": "date-time"},
    ),
]
