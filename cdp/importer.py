"""Bulk import of CSV (header row) or NDJSON, streaming in chunks with constant memory.

Columns are the POST /v1/profiles fields; `traits.<name>` columns become traits; consent columns
are `consent.<purpose>.<channel>` (granted / withdrawn / empty) with optional `.wording_id`,
`.method` and `.occurred_at`. A row that cannot be imported is written to the rejects file with
its row number, field and reason (never its values: the file holds no personal data). A row
whose consent claim is bad (e.g. a marketing grant without wording) is imported as a profile and
the claim alone is rejected and reported.
"""

from __future__ import annotations

import asyncio
import csv
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from cdp.crypto.blind_index import BlindIndexer
from cdp.errors import DomainError, FieldError
from cdp.platform import Platform
from cdp.profiles.service import Prepared, prepare_with, store_prepared
from consent.policy import Policy

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


# Worker processes validate and normalise rows (CPU-bound: email and phone parsing, blind
# indexes) while the main process resolves and writes the previous chunk.
_worker: dict[str, Any] = {}


def _init_worker(policy: Policy, index_key: bytes, source: str) -> None:
    _worker.update(policy=policy, indexer=BlindIndexer(index_key), source=source)


def _prepare_chunk(rows: list[tuple[int, dict[str, Any] | None, bool]]) -> list[tuple]:
    return prepare_rows(rows, _worker["policy"], _worker["indexer"], _worker["source"])


def prepare_rows(
    rows: list[tuple[int, dict[str, Any] | None, bool]],
    policy: Policy,
    indexer: BlindIndexer,
    source: str,
) -> list[tuple]:
    """(row number, Prepared | None, errors) for each row."""
    out: list[tuple] = []
    for n, row, from_csv in rows:
        if row is None:
            out.append((n, None, [FieldError("row", "not a JSON object")]))
            continue
        try:
            record = row_to_record(row, source, from_csv=from_csv)
            out.append((n, prepare_with(record, policy, indexer, strict_consents=False), []))
        except DomainError as exc:
            out.append((n, None, exc.errors))
    return out


def _chunks(path: Path, size: int) -> Iterator[list[tuple[int, dict[str, Any] | None, bool]]]:
    chunk: list[tuple[int, dict[str, Any] | None, bool]] = []
    for item in read_rows(path):
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def run_import(
    p: Platform,
    path: Path,
    source: str,
    *,
    actor: str = "cli-import",
    rejects_path: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> ImportSummary:
    """Import a file. `workers`: validation processes (None: one per spare core for large
    files, 0: validate in this process)."""
    summary = ImportSummary()
    rejects_path = rejects_path or path.with_name(path.name + ".rejects.csv")
    summary.rejects_path = rejects_path
    if workers is None:
        big = path.stat().st_size > 2_000_000  # noqa: ASYNC240
        workers = max(1, (os.cpu_count() or 2) - 1) if big else 0

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

    async def store(results: list[tuple]) -> None:
        good: list[Prepared] = []
        for n, prep, errors in results:
            summary.rows += 1
            if prep is None:
                reject(n, errors, row_rejected=True)
                continue
            if prep.rejected_consents:
                summary.consents_rejected += len(prep.rejected_consents)
                reject(n, prep.rejected_consents, row_rejected=False)
            good.append(prep)
        outcomes = await store_prepared(p, good, actor)
        for prep, o in zip(good, outcomes, strict=True):
            summary.consents_recorded += len(prep.claims)
            summary.created += o.created
            summary.joined += not o.created
            summary.merged += len(o.merged_profile_ids)
        if on_progress:
            on_progress(summary.rows)

    try:
        if workers == 0:
            for rows in _chunks(path, CHUNK):
                await store(prepare_rows(rows, p.policy, p.keys.indexer, source))
        else:
            loop = asyncio.get_running_loop()
            ctx = multiprocessing.get_context("forkserver")
            with ProcessPoolExecutor(
                max_workers=workers,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(p.policy, p.keys.indexer.key, source),
            ) as pool:
                pending: deque[asyncio.Future] = deque()
                for rows in _chunks(path, CHUNK):
                    pending.append(loop.run_in_executor(pool, _prepare_chunk, rows))
                    if len(pending) > workers + 1:
                        await store(await pending.popleft())
                while pending:
                    await store(await pending.popleft())
    finally:
        out.close()
    return summary
