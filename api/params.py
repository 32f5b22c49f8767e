"""Query parameters many endpoints share, documented once (the checks live in
`cdp.segments.cursor.check_limit` and each list's cursor decoder)."""

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
