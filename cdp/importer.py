"""Bulk import of CSV (header row) or NDJSON, streaming in chunks with constant memory.

Columns are the POST /v1/profiles fields; `traits.<name>` columns become traits; consent columns
are `consent.<purpose>.<channel>` (granted / withdrawn / empty) with optional `.wording_id`,
`.method` and `.occurred_at`. A row that cannot be imported is written to the rejects file with
its row number, field and reason (never its values: the file holds no personal data). A row
whose consent claim is bad (e.g. a marketing grant without wording) is imported as a profile and
the claim alone is rejected and reported.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from cdp.errors import DomainError, FieldError
from cdp.platform import Platform
from cdp.profiles.service import Prepared, prepare, store_prepared

CHUNK = 1000
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


@dataclass(slots=True)
class ImportSummary:
    rows: int = 0
    created: int = 0
    joined: int = 0
    merged: int = 0
    rejected_rows: int = 0
    consents_recorded: int = 0
    consents_rejected: int = 0
    rejects_path: Path | None = None
    reasons: dict[str, int] = field(default_factory=dict)


def _trait_value(text: str) -> Any:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def row_to_record(row: dict[str, Any], source: str, *, from_csv: bool) -> dict[str, Any]:
    """A flat CSV/NDJSON row as a POST /v1/profiles body."""
    record: dict[str, Any] = {"source": source}
    traits: dict[str, Any] = dict(row.get("traits") or {}) if not from_csv else {}
    consents: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in row.items():
        if key is None or value is None or (isinstance(value, str) and not value.strip()):
            continue
        if key.startswith("traits."):
            traits[key[7:]] = _trait_value(value) if from_csv else value
        elif key.startswith("consent."):
            parts = key.split(".")
            if len(parts) < 3:
                continue
            purpose, channel = parts[1], parts[2]
            item = consents.setdefault((purpose, channel), {})
            if len(parts) == 3:
                item["status"] = value.strip() if isinstance(value, str) else value
            elif parts[3] in ("wording_id", "method"):
                item.setdefault("evidence", {})[parts[3]] = value
            elif parts[3] == "occurred_at":
                item["occurred_at"] = value
            else:
                item[f"unknown.{parts[3]}"] = value
        elif key == "source":
            continue  # the import's --source names the system
        elif key in ("traits", "consents") and not from_csv:
            if key == "consents":
                record["consents"] = value
        else:
            record[key] = value
    if traits:
        record["traits"] = traits
    claims = [
        {"purpose": p, "channel": c, "source": source, **item}
        for (p, c), item in consents.items()
        if "status" in item
    ]
    if claims:
        record["consents"] = record.get("consents", []) + claims
    return record


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, bool]]:
    """(row number, row or None when unreadable, from_csv). Row numbers count data rows."""
    is_json = path.suffix.lower() in (".ndjson", ".jsonl", ".json")
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        if is_json:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = msgspec.json.decode(line)
                except msgspec.DecodeError:
                    yield n, None, False
                    continue
                yield n, obj if isinstance(obj, dict) else None, False
        else:
            for n, row in enumerate(csv.DictReader(fh), start=1):
                yield n, row, True


async def run_import(
    p: Platform,
    path: Path,
    source: str,
    *,
    actor: str = "cli-import",
    rejects_path: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    summary = ImportSummary()
    rejects_path = rejects_path or path.with_name(path.name + ".rejects.csv")
    summary.rejects_path = rejects_path
    # The rejects file is written as rows are read (constant memory); a CLI may block on it.
    out = open(rejects_path, "w", encoding="utf-8", newline="")  # noqa: ASYNC230, SIM115
    writer = csv.writer(out)
    writer.writerow(["row", "field", "reason"])

    def reject(n: int, errors: list[FieldError], *, row_rejected: bool) -> None:
        for e in errors or [FieldError("row", "rejected")]:
            writer.writerow([n, e.field, e.message])
            summary.reasons[e.message] = summary.reasons.get(e.message, 0) + 1
        if row_rejected:
            summary.rejected_rows += 1

    chunk: list[Prepared] = []

    async def flush() -> None:
        if not chunk:
            return
        outcomes = await store_prepared(p, chunk, actor)
        for prep, o in zip(chunk, outcomes, strict=True):
            summary.consents_recorded += len(prep.claims)
            if o.created:
                summary.created += 1
            else:
                summary.joined += 1
            summary.merged += len(o.merged_profile_ids)
        chunk.clear()

    try:
        for n, row, from_csv in read_rows(path):
            summary.rows += 1
            if row is None:
                reject(n, [FieldError("row", "not a JSON object")], row_rejected=True)
                continue
            try:
                prep = prepare(
                    row_to_record(row, source, from_csv=from_csv), p, strict_consents=False
                )
            except DomainError as exc:
                reject(n, exc.errors, row_rejected=True)
                continue
            if prep.rejected_consents:
                summary.consents_rejected += len(prep.rejected_consents)
                reject(n, prep.rejected_consents, row_rejected=False)
            chunk.append(prep)
            if len(chunk) >= CHUNK:
                await flush()
                if on_progress:
                    on_progress(summary.rows)
        await flush()
    finally:
        out.close()
    if on_progress:
        on_progress(summary.rows)
    return summary
