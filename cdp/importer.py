"""Bulk import of CSV (header row) or NDJSON, streaming in chunks with constant memory.

Columns are the POST /v1/profiles fields; `traits.<name>` columns become traits; consent columns
are `consent.<purpose>.<channel>` (granted / withdrawn / empty) with optional `.wording_id`,
`.method` and `.occurred_at`. A header naming any other column is refused before anything is
stored (`cdp.import_file.csv_header`).

A CSV value is text; a trait's value is typed as JSON would read it, exponents aside (segment
rules are typed: `eq 5` does not match `"5"`):
- `true` / `false`, in any case, are booleans (`yes`, `no`, `1`, `0` are not);
- an integer written plainly: `0`, or digits that do not start with `0`, optionally after
  `-`: `0`, `1`, `42`, `-7`;
- a decimal: such an integer, `.`, digits: `0.5`, `-12.75`, `1999.90` (a float);
- anything else stays text exactly as written: `007`, `00123`, `+7`, `1e3`, `1 000`, `1234,5`,
  `nan`, `inf`, `.5`. Spaces around a number or a boolean are ignored.

A row that cannot be imported is written to the rejects file with the line of the file where it
starts (a CSV's header is line 1), field and reason (never its values: the file holds no
personal data). A row whose consent claim is bad (e.g. a marketing grant without wording) is
imported as a profile and the claim alone is rejected and reported. So is an identifier that was
not kept (a placeholder address, a phone with an extension, one over the policy's cap, one the
merge guards refused to link), as the API reports it in `ignored`: its line names the field and
the reason, and the row is not counted as rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gc
import math
import multiprocessing
import os
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from cdp.crypto.blind_index import BlindIndexer
from cdp.crypto.master import MasterKey
from cdp.db.availability import KeyStoreDown
from cdp.db.messages import database_message
from cdp.errors import DomainError, FieldError, InvalidInput, repeatable
from cdp.ids import new_id
from cdp.import_file import (
    REJECTS_HEADER,
    Chunk,
    ImportFileError,
    check_file,
    open_rejects,
    read_chunks,
    rejects_file,
    rows_at_most,
)
from cdp.platform import Platform
from cdp.profiles.records import trait_field
from cdp.profiles.service import Prepared, prepare_with, store_prepared_in
from cdp.profiles.wire import decode_results, encode_results
from cdp.spreadsheet import spreadsheet_safe
from consent.policy import Policy

log = structlog.get_logger(__name__)

CHUNK = 1000
STATISTICS_AFTER = 1000  # rows imported before the first planner statistics refresh
# Chunks share a write transaction until it holds TXN_ROWS rows or has been open TXN_SECONDS.
# A commit writes every page the transaction changed to the WAL, and the blind-index and
# consent-subject indexes take keys in random order: a 1000-row transaction changed about one
# index page per key, so each commit rewrote most of those indexes. Fewer, larger commits write
# a page that several chunks changed once. The time bound keeps other writers (a running
# `cdp serve`'s opt-outs) from waiting behind an import for longer than about a second, and
# the import commits whenever it has to wait for a worker (100,000 rows: ~25 commits of ~4,000).
# SQLite only: a PostgreSQL commit costs one WAL flush, and each chunk's transaction holds an
# advisory lock per identifier, which must stay well inside the server's shared lock table.
TXN_ROWS = 10_000
TXN_SECONDS = 1.0
_BOOLEANS = {"true": True, "false": False}
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?")  # an integer, or with a fraction


@dataclass(slots=True)
class ImportSummary:
    rows: int = 0
    created: int = 0
    joined: int = 0
    merged: int = 0
    rejected_rows: int = 0
    consents_recorded: int = 0
    consents_rejected: int = 0
    identifiers_ignored: int = 0  # not kept, each reported in the rejects file
    rejects_path: Path | None = None
    reasons: dict[str, int] = field(default_factory=dict)  # each reason of the rejects file: lines


class ImportStopped(DomainError):
    """The import failed midway (the database refused a write, the connection was lost...):
    what is stored, and that running it again is safe."""

    title = "Import stopped"

    @classmethod
    def after(cls, exc: Exception, txns: _Transactions, summary: ImportSummary) -> ImportStopped:
        log.error(
            "import_stopped",
            error=type(exc).__name__,
            stored_rows=txns.stored_rows,
            stored_through_line=txns.stored_through,
        )
        stored = (
            f"the rows up to line {txns.stored_through} are stored "
            f"({txns.stored_rows} imported), none after it"
            if txns.stored_rows
            else "no row of it is stored"
        )
        return cls(
            f"the import stopped after {summary.rows} rows read ({_cause(exc)}): {stored}. "
            "Running the same import again is safe: the rows already stored join their profiles "
            "again instead of making new ones."
        )


def _cause(exc: Exception) -> str:
    """The error's type and the database's own first line (never bound values: SQLAlchemy
    hides them), or the message of one of ours."""
    if isinstance(exc, DomainError):
        return exc.detail
    if isinstance(exc, KeyStoreDown):  # our own words, naming CDP_KEY_STORE_URL
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:  # the rejects file: "No space left on device"
        return f"{type(exc).__name__}: {exc.strerror}"  # never its file name or a value
    if getattr(exc, "orig", None) is None:
        return type(exc).__name__
    return database_message(exc)


def _trait_value(text: str) -> Any:
    """A CSV trait value typed as the module docstring says."""
    plain = text.strip()
    boolean = _BOOLEANS.get(plain.lower())
    if boolean is not None:
        return boolean
    number = _NUMBER.fullmatch(plain)
    if number is None:
        return text
    try:
        value = float(plain) if number.group(1) else int(plain)
    except ValueError:  # an integer beyond Python's 4,300 digits
        return text
    return text if isinstance(value, float) and math.isinf(value) else value  # 400 digits


# What a column name means, decided once per name (a file has a few dozen).
_PLAIN, _TRAIT, _CONSENT, _SKIP, _CONSENTS = range(5)
_plans: tuple[dict[str, tuple], dict[str, tuple]] = ({}, {})


def _key_plan(key: str, from_csv: bool) -> tuple:
    cache = _plans[from_csv]
    plan = cache.get(key)
    if plan is None:
        if key.startswith("traits."):
            plan = (_TRAIT, key[7:])
        elif key.startswith("consent."):
            parts = key.split(".")
            if len(parts) < 3:  # names no channel: an unknown field, as the API says
                plan = (_PLAIN, key)
            else:
                plan = (_CONSENT, (parts[1], parts[2]), parts[3] if len(parts) > 3 else None)
        elif key == "source":
            plan = (_SKIP,)  # the import's --source names the system
        elif key in ("traits", "consents") and not from_csv:
            plan = (_CONSENTS,) if key == "consents" else (_SKIP,)
        else:
            plan = (_PLAIN, key)
        if len(cache) < 10_000:
            cache[key] = plan
    return plan


_TRAIT_TWICE = "given twice, in traits and as a traits.* key, with different values"


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b  # 1 and true are two values


def row_to_record(row: dict[str, Any], source: str, *, from_csv: bool) -> dict[str, Any]:
    """A flat CSV/NDJSON row as a POST /v1/profiles body. An NDJSON row's `traits` or
    `consents` of the wrong type is passed on as it is, for validation to name."""
    record: dict[str, Any] = {"source": source}
    given = None if from_csv else row.get("traits")
    traits: dict[str, Any] = dict(given) if isinstance(given, dict) else {}
    consents: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in row.items():
        if key is None or value is None or (isinstance(value, str) and not value.strip()):
            continue
        plan = _key_plan(key, from_csv)
        what = plan[0]
        if what == _PLAIN:
            record[key] = value
        elif what == _TRAIT:
            name = plan[1]
            if given is not None and name in traits and not _same(traits[name], value):
                raise InvalidInput.field(trait_field(name), _TRAIT_TWICE)
            traits[name] = _trait_value(value) if from_csv else value
        elif what == _CONSENT:
            item = consents.setdefault(plan[1], {})
            part = plan[2]
            if part is None:
                item["status"] = value.strip() if isinstance(value, str) else value
            elif part in ("wording_id", "method"):
                item.setdefault("evidence", {})[part] = value
            elif part == "occurred_at":
                item["occurred_at"] = value
            else:
                item[f"unknown.{part}"] = value
        elif what == _CONSENTS:
            record["consents"] = value
    if given is not None and not isinstance(given, dict):
        record["traits"] = given
    elif traits:
        record["traits"] = traits
    claims = [
        {"purpose": p, "channel": c, "source": source, **item}
        for (p, c), item in consents.items()
        if "status" in item
    ]
    listed = record.get("consents", [])
    if claims and isinstance(listed, list):
        record["consents"] = listed + claims
    return record


# An import allocates millions of short-lived, acyclic objects (rows, records, parameter tuples):
# collecting the youngest generation every 700 allocations costs more than a tenth of the
# import's CPU time, in the workers and in the main process. Cycles are still collected.
_GC_THRESHOLDS = (100_000, 50, 100)


@contextlib.contextmanager
def _relaxed_gc() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(*_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


# Worker processes validate and normalise rows (CPU-bound: email and phone parsing, blind
# indexes) and seal each record for the new profile it would create (cdp.profiles.sealing),
# while the main process resolves and writes the previous chunk.
_worker: dict[str, Any] = {}


def _init_worker(
    policy: Policy, index_key: bytes, source: str, kek: tuple[str, bytes] | None
) -> None:
    gc.set_threshold(*_GC_THRESHOLDS)
    _worker.update(
        policy=policy,
        indexer=BlindIndexer(index_key),
        source=source,
        master=MasterKey.from_kek(*kek) if kek else None,
    )


def _prepare_chunk(chunk: Chunk, ids: bytes) -> bytes:
    """`prepare_rows` in a worker; `ids`: the profile ids as `_pack_ids` sends them."""
    w = _worker
    pids = _unpack_ids(ids)
    results = prepare_rows(chunk, w["policy"], w["indexer"], w["source"], pids, master=w["master"])
    return encode_results(results)  # type: ignore[arg-type]


def _pack_ids(ids: list[uuid.UUID]) -> bytes:
    """Profile ids for a worker: 16 bytes each, cheaper to send than UUID objects."""
    return b"".join([pid.bytes for pid in ids])


def _unpack_ids(packed: bytes) -> list[uuid.UUID]:
    return [uuid.UUID(bytes=packed[i : i + 16]) for i in range(0, len(packed), 16)]


def draw_profile_ids(chunk: Chunk) -> list[uuid.UUID]:
    """An id for the profile each row of the chunk would start, drawn in this process as the
    file is read, in its order: a worker seals the row for it, and the lowest id is the oldest
    profile (cdp.profiles.resolution). Drawn by the workers, a row's id could sort before an
    earlier row's (two workers at once, or an id drawn at resolution after a sealed one)."""
    return [new_id() for _ in chunk[1]]


def _too_many(values: int, columns: int) -> str:
    return f"{values} values for {columns} columns (a delimiter inside an unquoted value?)"


_UNNAMED = "a value in a column the header gives no name"


def prepare_rows(
    chunk: Chunk,
    policy: Policy,
    indexer: BlindIndexer,
    source: str,
    ids: list[uuid.UUID],
    *,
    master: MasterKey | None = None,
) -> list[tuple]:
    """(line number, Prepared | None, errors) for each row of a chunk; `ids`: the id of the
    profile each row would start (`draw_profile_ids`). With `master`, each record is sealed for
    that profile."""
    header, rows = chunk
    unnamed = [i for i, key in enumerate(header or ()) if not key]
    out: list[tuple] = []
    for (n, row), pid in zip(rows, ids, strict=True):
        if isinstance(row, str):  # the line could not be read as a row: the reason
            out.append((n, None, [FieldError("row", row)]))
            continue
        if header is not None:
            if len(row) > len(header):  # a value would have no column: refuse, not drop it
                out.append((n, None, [FieldError("row", _too_many(len(row), len(header)))]))
                continue
            if unnamed and any(i < len(row) and row[i].strip() for i in unnamed):
                out.append((n, None, [FieldError("row", _UNNAMED)]))
                continue
            row = dict(zip(header, row, strict=False))  # a short row leaves the rest empty
        record: dict[str, Any] = {}
        try:
            record = row_to_record(row, source, from_csv=header is not None)
            prepared = prepare_with(
                record, policy, indexer, strict_consents=False, master=master, profile_id=pid
            )
        except DomainError as exc:
            errors = exc.errors
            if header is not None:
                errors = by_column(errors, record.get("consents"))
            out.append((n, None, errors))
            continue
        if header is not None and prepared.rejected_consents:
            prepared.rejected_consents = by_column(prepared.rejected_consents, record["consents"])
        out.append((n, prepared, None))
    return out


_CONSENT_FIELD = re.compile(r"consents\[(\d+)\](.*)")
# the part of a record's consent an error names -> the suffix of its CSV column
_COLUMN_SUFFIX = {
    "": "",
    ".status": "",
    ".purpose": "",
    ".channel": "",
    ".evidence": "",
    ".evidence.wording_id": ".wording_id",
    ".evidence.method": ".method",
    ".occurred_at": ".occurred_at",
}


def by_column(errors: list[FieldError], claims: Any) -> list[FieldError]:
    """Errors of a CSV row's consents named by its columns (`consent.marketing.sms.method`):
    the row has no `consents` list, and `consents[0]` was the first consent column it filled,
    a different one from row to row. A name that could be an address is not repeated."""
    if not isinstance(claims, list):
        return errors
    out = []
    for e in errors:
        found = _CONSENT_FIELD.fullmatch(e.field)
        if found and int(found[1]) < len(claims) and found[2] in _COLUMN_SUFFIX:
            claim = claims[int(found[1])]
            column = (
                f"consent.{claim.get('purpose')}.{claim.get('channel')}{_COLUMN_SUFFIX[found[2]]}"
            )
            if repeatable(column):
                e = FieldError(column, e.message)
        out.append(e)
    return out


class _Transactions:
    """The import's write transactions: opened on demand, shared by consecutive chunks, and
    committed once they hold TXN_ROWS rows or have been open TXN_SECONDS, or when a writer of
    another process waits (cdp.db.writer_turnstile)."""

    def __init__(self, p: Platform) -> None:
        self._p = p
        self._stack: contextlib.AsyncExitStack | None = None
        self._conn: Any = None
        self._rows = 0
        self._opened = 0.0
        self._last_line = 0  # of the file's rows in the open transaction
        self.stored_rows = 0  # rows whose transaction has committed
        self.stored_through = 0  # the line of the last of them

    async def store(self, prepared: list[Prepared], actor: str, last_line: int) -> list:
        if not prepared:
            return []
        if self._stack is None:
            stack = contextlib.AsyncExitStack()
            self._conn = await stack.enter_async_context(self._p.db.write(bulk=True))
            self._stack, self._rows, self._opened = stack, 0, time.monotonic()
        outcomes = await store_prepared_in(self._conn, self._p, prepared, actor)
        self._rows += len(prepared)
        self._last_line = last_line
        if (
            not self._p.db.is_sqlite
            or self._rows >= TXN_ROWS
            or time.monotonic() - self._opened >= TXN_SECONDS
            or self._p.db.writers_waiting()
        ):
            await self.commit()
        return outcomes

    async def commit(self) -> None:
        stack, self._stack, self._conn = self._stack, None, None
        if stack is not None:
            await stack.aclose()
            self.stored_rows += self._rows
            self.stored_through = self._last_line

    async def rollback(self, exc: BaseException) -> None:
        stack, self._stack, self._conn = self._stack, None, None
        if stack is not None:
            await stack.__aexit__(type(exc), exc, exc.__traceback__)


async def _prepared_chunks(
    p: Platform,
    chunks: Iterator[Chunk],
    source: str,
    workers: int,
    *,
    on_wait: Callable[[], Awaitable[None]],
) -> AsyncIterator[list[tuple]]:
    """The file's chunks as `prepare_rows` gives them, in file order: validated and sealed by
    `workers` processes (0: here, unsealed). `on_wait` runs before waiting for a worker."""
    if workers == 0:
        for chunk in chunks:
            yield prepare_rows(chunk, p.policy, p.keys.indexer, source, draw_profile_ids(chunk))
        return
    loop = asyncio.get_running_loop()
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(p.policy, p.keys.indexer.key, source, p.keys.worker_kek()),
    ) as pool:
        # While the oldest chunk is still with a worker (a busy machine), this process
        # prepares the next one itself.
        pending: deque[asyncio.Future | list[tuple]] = deque()
        in_pool = 0
        more = True
        while more or pending:
            while more and in_pool <= workers:
                chunk = next(chunks, None)
                if chunk is None:
                    more = False
                else:
                    ids = _pack_ids(draw_profile_ids(chunk))
                    pending.append(loop.run_in_executor(pool, _prepare_chunk, chunk, ids))
                    in_pool += 1
            head = pending[0]
            if isinstance(head, list):
                yield pending.popleft()  # type: ignore[misc]
                continue
            if more and not head.done() and all(isinstance(x, asyncio.Future) for x in pending):
                chunk = next(chunks, None)
                if chunk is None:
                    more = False
                else:
                    ids = draw_profile_ids(chunk)
                    pending.append(prepare_rows(chunk, p.policy, p.keys.indexer, source, ids))
                continue
            pending.popleft()
            in_pool -= 1
            if not head.done():
                await on_wait()
            yield decode_results(await head)  # type: ignore[misc]


async def run_import(
    p: Platform,
    path: Path,
    source: str,
    *,
    actor: str = "cli-import",
    rejects_path: Path | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    workers: int | None = None,
    encoding: str = "utf-8",
    delimiter: str | None = None,
) -> ImportSummary:
    """Import a file. `workers`: validation processes (None: one per spare core for large
    files, 0: validate in this process). `encoding` and `delimiter` (a CSV's; None: read off
    its header) as `cdp.import_file` says; a file that cannot be read as given (not in its
    encoding, a header naming an unknown column...) raises ImportFileError before anything is
    stored. `on_total` is told, once the file is checked, how many rows it holds at most (its
    lines, less a CSV's header)."""
    lines = check_file(path, encoding, delimiter)
    if on_total:
        on_total(rows_at_most(path, lines))
    summary = ImportSummary()
    summary.rejects_path = rejects_path = rejects_file(path, rejects_path)
    if workers is None:
        big = path.stat().st_size > 2_000_000  # noqa: ASYNC240
        workers = max(1, (os.cpu_count() or 2) - 1) if big else 0

    # The rejects file is written as rows are read (constant memory); a CLI may block on it.
    out = open_rejects(rejects_path)
    writer = csv.writer(out)
    writer.writerow(REJECTS_HEADER)

    chunk_lines: list[tuple[int, FieldError]] = []  # the chunk's, written once it is stored

    def reject(n: int, errors: list[FieldError], *, row_rejected: bool) -> None:
        for e in errors or [FieldError("row", "rejected")]:
            chunk_lines.append((n, e))
            summary.reasons[e.message] = summary.reasons.get(e.message, 0) + 1
        if row_rejected:
            summary.rejected_rows += 1

    refresh_at = [STATISTICS_AFTER]
    txns = _Transactions(p)

    async def store(results: list[tuple]) -> None:
        good: list[Prepared] = []
        numbers: list[int] = []
        for n, prep, errors in results:
            summary.rows += 1
            if prep is None:
                reject(n, errors, row_rejected=True)
                continue
            if prep.rejected_consents:
                summary.consents_rejected += len(prep.rejected_consents)
                reject(n, prep.rejected_consents, row_rejected=False)
            good.append(prep)
            numbers.append(n)
        outcomes = await txns.store(good, actor, numbers[-1] if numbers else 0)
        for o in outcomes:
            summary.consents_recorded += o.consents_recorded
            summary.created += o.created
            summary.joined += not o.created
            summary.merged += len(o.merged_profile_ids)
        for n, o in zip(numbers, outcomes, strict=True):
            if o.ignored:  # identifiers not kept (as the API's "ignored"): reported, row kept
                dropped = sum(e.field == "consents" for e in o.ignored)  # their grants too
                summary.consents_rejected += dropped
                summary.identifiers_ignored += len(o.ignored) - dropped
                reject(n, o.ignored, row_rejected=False)
        # in the order of the file (a sort keeps each row's lines in their order)
        chunk_lines.sort(key=lambda line: line[0])
        writer.writerows((n, spreadsheet_safe(e.field), e.message) for n, e in chunk_lines)
        chunk_lines.clear()
        if summary.rows >= refresh_at[0]:
            # The tables grow as the import runs: a plan made on the sizes at the start (e.g.
            # a sequential scan of a table that was empty) gets slower with every chunk. So the
            # planner statistics are refreshed each time the import has doubled its rows.
            await txns.commit()
            await p.db.refresh_statistics()
            refresh_at[0] *= 2
        if on_progress:
            on_progress(summary.rows)

    async with p.db.bulk_load():
        with _relaxed_gc():
            try:
                # while the next chunk is still with a worker, let other writers in
                chunks = _prepared_chunks(
                    p,
                    read_chunks(path, CHUNK, encoding=encoding, delimiter=delimiter),
                    source,
                    workers,
                    on_wait=txns.commit,
                )
                async with contextlib.aclosing(chunks):
                    async for results in chunks:
                        await store(results)
                await txns.commit()
            except BaseException as exc:
                await txns.rollback(exc)
                if isinstance(exc, Exception) and not isinstance(exc, ImportFileError):
                    raise ImportStopped.after(exc, txns, summary) from exc
                raise
            finally:
                out.close()
    if summary.rows >= STATISTICS_AFTER:
        await p.db.refresh_statistics()  # plan later queries on the tables' final sizes
    return summary
