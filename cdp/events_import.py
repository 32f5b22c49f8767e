"""`cdp events import`: a shop's order history (or any behavioural events) from a CSV or NDJSON
file, so that order stats and the segments built on them (`last_order_days`, `total_spent`,
VIP, sleeping...) hold from the first day instead of filling up as new events arrive.

Each row is a `POST /v1/events` body without `source` (the command's `--source`, which is
also what a repeated event is recognised by): `event_id`, `type`, `occurred_at`, one
identifier (`email`, `phone`, `external_id` or `profile_id`), `amount`, `currency`,
`category`, `country`; `properties.<name>` columns (or an NDJSON row's `properties` object)
become the event's properties. Rows are checked as the API checks a body (`cdp.events`), then
stored in chunks of 500, each in one transaction by the function that stores the API's
events (`cdp.events.store_events`, in a few statements per chunk): an event already
recorded is counted as repeated and changes nothing, so running the same file again is safe;
an unknown customer is created. Every rejected row goes to the rejects file with its line and
reason (never a value). The file is read as `cdp import` reads one (`cdp.import_file`:
encodings, delimiters, strict CSV, a header naming an unknown column refused before anything
is stored).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog

from cdp.db.conflicts import write_retried
from cdp.errors import DomainError, FieldError, InvalidInput
from cdp.events import CheckedEvent, checked, store_events
from cdp.import_file import (
    REJECTS_HEADER,
    Columns,
    check_file,
    open_rejects,
    read_chunks,
    rejects_file,
    rows_at_most,
)
from cdp.importer import STATISTICS_AFTER
from cdp.nul_text import refuse_nul
from cdp.platform import Platform
from cdp.profiles.schemas import EventIn
from cdp.spreadsheet import spreadsheet_safe
from cdp.validation import invalid
from consent.schemas import AwareDatetime

log = structlog.get_logger(__name__)

CHUNK = 500


class _Time(msgspec.Struct):
    occurred_at: AwareDatetime


_PLAIN = frozenset(EventIn.__struct_fields__) - {"source", "properties"}
PROPERTIES = "properties."
HELP = (
    "Columns are the POST /v1/events fields but source (event_id, type, occurred_at, email, "
    "phone, external_id or profile_id, amount, currency, category, country) and "
    "properties.<name>"
)


def column_key(name: str) -> str | None:
    """The event key a CSV column stands for (case and surrounding spaces aside; a property
    keeps its name as written), or None."""
    name = name.strip()
    low = name.lower()
    if low in _PLAIN:
        return low
    if low.startswith(PROPERTIES) and name[len(PROPERTIES) :]:
        return PROPERTIES + name[len(PROPERTIES) :]
    return None


COLUMNS = Columns(column_key, "cdp events import", HELP)


class EventImportStopped(DomainError):
    """The database refused a chunk midway: what is stored, and that running it again is
    safe (events already recorded are recognised by their source and event id)."""

    title = "Import stopped"

    @classmethod
    def after(
        cls, exc: Exception, summary: EventImportSummary, stored_through: int
    ) -> EventImportStopped:
        log.error("events_import_stopped", error=type(exc).__name__, rows=summary.rows)
        cause = exc.detail if isinstance(exc, DomainError) else type(exc).__name__
        stored = (
            f"the rows up to line {stored_through} are stored, none after it"
            if stored_through
            else "no row of it is stored"
        )
        return cls(
            f"the import stopped ({cause}): {stored}. Running the same import again is safe: "
            "the events already recorded are recognised and change nothing."
        )


@dataclass(slots=True)
class EventImportSummary:
    rows: int = 0
    recorded: int = 0
    repeated: int = 0  # already recorded (the same source and event id): nothing changed
    rejected_rows: int = 0
    rejects_path: Path | None = None
    reasons: dict[str, int] = field(default_factory=dict)


def row_body(header: list[str] | None, row: Any, source: str) -> dict[str, Any]:
    """The API body a row stands for: a CSV row's non-empty values under their columns'
    keys, properties gathered; an NDJSON row as it is. Raises InvalidInput naming the field."""
    if header is None:
        if "source" in row:
            raise InvalidInput.field("source", "comes from --source, not from the file")
        return {**row, "source": source}
    if len(row) > len(header):
        raise InvalidInput.field("row", f"{len(row)} values for {len(header)} columns")
    body: dict[str, Any] = {"source": source}
    props: dict[str, Any] = {}
    for key, value in zip(header, row, strict=False):
        if not value.strip():
            continue
        if not key:
            raise InvalidInput.field("row", "a value under a column without a name")
        if key.startswith(PROPERTIES):
            props[key[len(PROPERTIES) :]] = value
        else:
            body[key] = value.strip()
    if props:
        body["properties"] = props
    return body


def prepared(p: Platform, header: list[str] | None, row: Any, source: str) -> CheckedEvent:
    """The row checked as `POST /v1/events` checks a body. Raises InvalidInput."""
    if isinstance(row, str):  # a line that is not a row: the reason
        raise InvalidInput.field("row", row)
    body = row_body(header, row, source)
    refuse_nul(body)
    if header is not None and isinstance(when := body.get("occurred_at"), str):
        # RFC 3339 only: the lax conversion below (a CSV's text into numbers) read a number as
        # a Unix time, so a compact date, 20261105, was a purchase on 1970-08-23
        try:
            body["occurred_at"] = msgspec.convert(when, AwareDatetime)
        except msgspec.ValidationError:
            raise invalid({"occurred_at": when}, _Time, whole="row") from None
    try:
        event = msgspec.convert(body, EventIn, strict=header is None)
    except msgspec.ValidationError:
        raise invalid(body, EventIn, strict=header is None, whole="row") from None
    return checked(p, event)


async def run_event_import(
    p: Platform,
    path: Path,
    source: str,
    *,
    actor: str = "cli-events-import",
    rejects_path: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    encoding: str = "utf-8",
    delimiter: str | None = None,
) -> EventImportSummary:
    """Import a file of events (see the module). Raises ImportFileError, before anything is
    stored, for a file that cannot be read as given."""
    lines = check_file(path, encoding, delimiter, COLUMNS)
    if on_total:
        on_total(rows_at_most(path, lines))
    summary = EventImportSummary()
    summary.rejects_path = rejects_path = rejects_file(path, rejects_path)
    with open_rejects(rejects_path) as out:
        writer = csv.writer(out)
        writer.writerow(REJECTS_HEADER)

        def reject(n: int, errors: list[FieldError]) -> None:
            summary.rejected_rows += 1
            for e in errors or [FieldError("row", "rejected")]:
                writer.writerow((n, spreadsheet_safe(e.field), e.message))
                summary.reasons[e.message] = summary.reasons.get(e.message, 0) + 1

        stored_through = 0
        refresh_at = STATISTICS_AFTER
        chunks = read_chunks(path, CHUNK, encoding=encoding, delimiter=delimiter, columns=COLUMNS)
        for header, rows in chunks:
            good: list[tuple[int, CheckedEvent]] = []
            for n, row in rows:
                summary.rows += 1
                try:
                    good.append((n, prepared(p, header, row, source)))
                except DomainError as exc:
                    reject(n, exc.errors or [FieldError("row", exc.detail)])
            try:  # a chunk that lost a deadlock to a writer of the same customers: run again
                stored = await write_retried(
                    p.db,
                    lambda conn, batch=[e for _, e in good]: store_events(conn, p, batch, actor),
                    name="events-import",
                )
            except Exception as exc:
                raise EventImportStopped.after(exc, summary, stored_through) from exc
            for (n, _), result in zip(good, stored, strict=True):
                if isinstance(result, DomainError):  # e.g. an erased profile's id
                    reject(n, result.errors or [FieldError("row", result.detail)])
                else:
                    summary.recorded += result.created
                    summary.repeated += not result.created
            stored_through = rows[-1][0]
            if summary.rows >= refresh_at:
                # as `cdp import` does: plans made on the sizes at the start (an empty events
                # table) look a batch's events up by source alone, slower with every chunk
                await p.db.refresh_statistics()
                refresh_at *= 2
            if on_progress:
                on_progress(summary.rows)
    if summary.rows >= STATISTICS_AFTER:
        await p.db.refresh_statistics()  # later queries planned on the final sizes
    log.info(
        "events_imported",
        rows=summary.rows,
        recorded=summary.recorded,
        repeated=summary.repeated,
        rejected=summary.rejected_rows,
    )
    return summary
