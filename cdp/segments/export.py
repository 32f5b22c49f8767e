"""The whole segment as NDJSON or CSV, streamed page by page.

Each chunk is the members of one range of profile ids (`pages`; each in its own short read
transaction), so memory stays constant however large the segment, and the content equals the
concatenation of the members pages a client would walk with the cursor. `record(page)` (the
export record, see `exports`) is awaited before the page's bytes are handed out, so nothing
leaves unrecorded.
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime

import msgspec

from cdp.platform import Platform
from cdp.segments.members import MEMBER_FIELDS, Definition, Member, Page
from cdp.segments.pages import member_pages
from cdp.spreadsheet import spreadsheet_safe, spreadsheet_safe_address

EXPORT_PAGE = 2000  # rows per page: large enough to amortise a query, small in memory
# media types; the framework adds "; charset=utf-8" to a text/ type itself
FORMATS = {"ndjson": "application/x-ndjson", "csv": "text/csv"}

_json = msgspec.json.Encoder()


def ndjson_chunk(items: list[Member]) -> bytes:
    return _json.encode_lines(items)


def csv_header() -> bytes:
    return (",".join(MEMBER_FIELDS) + "\r\n").encode()


def csv_chunk(items: list[Member]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerows(
        (
            m.profile_id,
            spreadsheet_safe_address(m.address),
            m.unsubscribe_token,
            spreadsheet_safe(m.first_name),
        )
        for m in items
    )
    return out.getvalue().encode()


async def export_chunks(
    p: Platform,
    d: Definition,
    fmt: str,
    *,
    counted: Callable[[int], None] = lambda n: None,
    record: Callable[[Page], Awaitable[None]] | None = None,
    page_size: int = EXPORT_PAGE,
    now: datetime | None = None,
) -> AsyncIterator[bytes]:
    """Bytes of the export; `counted(n)` is told each page's row count as it is sent."""
    encode = ndjson_chunk if fmt == "ndjson" else csv_chunk
    if fmt == "csv":
        yield csv_header()
    # closed with this generator, not left to the garbage collector: a client that goes away
    # leaves no range selected ahead running, holding a connection
    async with contextlib.aclosing(member_pages(p, d, page_size=page_size, now=now)) as pages:
        async for page in pages:
            if page.items:
                if record is not None:
                    await record(page)
                counted(len(page.items))
                yield encode(page.items)
