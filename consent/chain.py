"""The hash chain over the consent ledger: canonical encoding, hashing, verification.

hash = SHA-256(prev_hash || canonical JSON of the entry's fields). The evidence is hashed as
ciphertext, so destroying a data key (erasure) leaves every hash valid.

Canonical JSON: a compact JSON array (msgspec, UTF-8, no whitespace) of the HASHED_FIELDS values
in that order, followed by `via_profile` where the entry has one (entries recorded since
migration 0018 on an address; those before it keep the hash they were given): bytes as standard
base64, datetimes as ISO 8601 in UTC (`+00:00`), UUIDs in their dashed lower-case form,
booleans, integers, strings and null as themselves.

Verification reads the rows through the database driver (no ORM row processing) in batches and
recomputes every hash in a worker thread while the next batch is fetched: about a million
entries in a few seconds. `_FAST_PAYLOAD` must produce exactly the canonical encoding of the
values SQLAlchemy would return; tests check it against `entry_hash` on both backends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from operator import attrgetter, itemgetter
from typing import Any

import msgspec
from sqlalchemy import Select, Table, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.engine import xact_lock
from consent.tables import consent_ledger

GENESIS = bytes(32)
HASHED_FIELDS = (
    "seq",
    "event_id",
    "profile_id",
    "subject_kind",
    "address_bidx",
    "purpose",
    "channel",
    "status",
    "occurred_at",
    "recorded_at",
    "source",
    "actor",
    "method",
    "wording_id",
    "policy_version",
    "evidence",
    "evidence_owner",
    "evidence_key_id",
    "effective",
)
# Hashed after HASHED_FIELDS where set (not null): a field added later leaves the hashes of
# the entries recorded before it as they were.
TRAILING_FIELDS = ("via_profile",)
WITH_TRAILING = (*HASHED_FIELDS, *TRAILING_FIELDS)
_encoder = msgspec.json.Encoder()


_AS_THEY_ARE = frozenset({str, int, bool, type(None), bytes})  # msgspec: bytes as base64


def _canonical(value: Any) -> Any:
    kind = type(value)
    if kind in _AS_THEY_ARE:
        return value
    if kind is uuid.UUID:
        return str(value)
    if kind is datetime and value.tzinfo is UTC:
        return value.isoformat()  # as astimezone(UTC) below would give it
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).isoformat()  # stored in UTC: hash what is read back
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def ledger_fields(row: Any) -> tuple[str, ...]:
    """The fields a consent ledger entry's hash covers (see the module's docstring)."""
    value = row.get("via_profile") if isinstance(row, dict) else getattr(row, "via_profile", None)
    return HASHED_FIELDS if value is None else WITH_TRAILING


def canonical_payload(row: Any, fields: Sequence[str] | None = None) -> bytes:
    """The canonical JSON of `fields` of an entry (a mapping, or an object with attributes);
    by default those of a consent ledger entry."""
    if fields is None:
        fields = ledger_fields(row)
    get = (itemgetter if isinstance(row, dict) else attrgetter)(*fields)
    values = get(row) if len(fields) > 1 else (get(row),)
    return _encoder.encode([_canonical(v) for v in values])


def entry_hash(prev_hash: bytes, row: Any, fields: Sequence[str] | None = None) -> bytes:
    """SHA-256(prev_hash || canonical JSON): the link of any chained table (the consent
    ledger by default; data-subject-request transitions pass their own fields)."""
    return hashlib.sha256(prev_hash + canonical_payload(row, fields)).digest()


@cache  # built once per table: building it per append cost more than running it
def _head_of(table: Table) -> Select:
    return select(table.c.seq, table.c.hash).order_by(table.c.seq.desc()).limit(1)


async def chain_head(conn: AsyncConnection, table: Table, lock: int) -> tuple[int, bytes]:
    """(last seq, last hash) of a chained table, locked for appending until the transaction
    ends: a PostgreSQL advisory lock `lock` (on SQLite the write transaction is the lock), so
    appends get consecutive seqs and each links to the one before."""
    await xact_lock(conn, lock)
    head = (await conn.execute(_head_of(table))).first()
    return (head.seq, head.hash) if head else (0, GENESIS)


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    entries: int
    head_hash: str | None
    first_invalid_seq: int | None
    reason: str | None = None
    # head hash (hex) of the chain at each requested size that the verified part reached
    heads: dict[int, str] = field(default_factory=dict)


# --- fast path: raw driver rows -> canonical payload ------------------------------------------
# msgspec encodes bytes as standard base64, as _canonical does; the rest is formatted here (SQLite)
# or by PostgreSQL in the query (typed, exact, and done outside this process).

_BOOL = {0: False, 1: True}  # SQLite keeps booleans as 0 and 1


def _uuid_hex(h: str | None) -> str | None:  # SQLite keeps a Uuid as 32 hex digits
    return None if h is None else f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _utc_text(s: str) -> str:  # "2026-11-20 09:00:00.000000" (UTC) -> isoformat
    # only the form every writer stores: another spelling of the same time (a "T" for the
    # space, no microseconds) hashed alike but compared otherwise as text (a "T" sorts after
    # every space: a grant made later than the withdrawal after it, unseen)
    if len(s) != 26 or s[10] != " " or s[19] != ".":
        raise ValueError("not a stored time")
    s = s.replace(" ", "T", 1)
    if s.endswith(".000000"):
        s = s[:-7]
    return s + "+00:00"


def _sqlite_payload(r: Sequence[Any]) -> list[Any]:
    out = [
        r[0],
        _uuid_hex(r[1]),
        _uuid_hex(r[2]),
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        _utc_text(r[8]),
        _utc_text(r[9]),
        r[10],
        r[11],
        r[12],
        r[13],
        r[14],
        r[15],
        r[16],
        r[17],
        _BOOL[r[18]],
    ]
    if r[_VIA] is not None:
        out.append(_BOOL[r[_VIA]])
    return out


def _pg_payload(r: Sequence[Any]) -> Sequence[Any]:  # already canonical (_PG_COLUMNS)
    if r[_VIA] is None:
        return r[:_PREV]
    return [*r[:_PREV], r[_VIA]]


def _pg_time(column: str) -> str:
    utc = f"{column} AT TIME ZONE 'UTC'"
    return (
        f"to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN to_char({utc}, 'US') = "
        f"'000000' THEN '' ELSE to_char({utc}, '.US') END || '+00:00'"
    )


_FAST_PAYLOAD: dict[str, Callable[[Sequence[Any]], Sequence[Any]]] = {
    "sqlite": _sqlite_payload,
    "postgresql": _pg_payload,
}
_COLUMNS = [*HASHED_FIELDS, "prev_hash", "hash", *TRAILING_FIELDS]
_PREV, _HASH, _VIA = len(HASHED_FIELDS), len(HASHED_FIELDS) + 1, len(HASHED_FIELDS) + 2
_PG_COLUMNS = {
    "event_id": "event_id::text",
    "profile_id": "profile_id::text",
    "occurred_at": _pg_time("occurred_at"),
    "recorded_at": _pg_time("recorded_at"),
}
_SQL = {
    "sqlite": f"SELECT {', '.join(_COLUMNS)} FROM consent_ledger "
    "WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
    "postgresql": f"SELECT {', '.join(_PG_COLUMNS.get(c, c) for c in _COLUMNS)} "
    "FROM consent_ledger WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
}


@dataclass(slots=True)
class _Scan:
    prev: bytes
    next_seq: int
    count: int
    marks: frozenset[int]
    heads: dict[int, str]
    failure: tuple[int, str] | None = None


def _check(rows: Sequence[Sequence[Any]], scan: _Scan, payload: Callable) -> None:
    """Check a batch of rows in seq order; records the first failure in `scan`."""
    prev, expected, marks, heads = scan.prev, scan.next_seq, scan.marks, scan.heads
    sha, encode = hashlib.sha256, _encoder.encode
    done = 0
    for row in rows:
        seq = row[0]
        if seq != expected:
            scan.failure = (expected, "missing entry")
            break
        if row[_PREV] != prev:
            scan.failure = (seq, "broken link")
            break
        try:
            digest = sha(prev + encode(payload(row))).digest()
        except Exception:  # a value of the wrong type or shape: the row was altered
            scan.failure = (seq, "unreadable entry")
            break
        if digest != row[_HASH]:
            scan.failure = (seq, "hash mismatch")
            break
        prev = digest
        expected += 1
        done += 1
        if seq in marks:
            heads[seq] = prev.hex()
    scan.prev, scan.next_seq, scan.count = prev, expected, scan.count + done


async def _fetcher(conn: AsyncConnection) -> Callable[[int, int, int], Any]:
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    sql = _SQL[conn.dialect.name]
    if conn.dialect.name == "postgresql":

        async def fetch_pg(after: int, upto: int, limit: int) -> Sequence[Any]:
            return await driver.fetch(sql, after, upto, limit)  # type: ignore[union-attr]

        return fetch_pg

    async def fetch_sqlite(after: int, upto: int, limit: int) -> Sequence[Any]:
        cursor = await driver.execute(sql, (after, upto, limit))  # type: ignore[union-attr]
        try:
            return await cursor.fetchall()
        finally:
            await cursor.close()

    return fetch_sqlite


async def verify_chain(
    conn: AsyncConnection,
    *,
    marks: Collection[int] = (),
    after: tuple[int, bytes] | None = None,
    batch: int = 20_000,
    upto: int | None = None,
) -> Verification:
    """Recompute the chain in seq order. Detects edits, deletions, insertions and reordering.

    `marks`: chain sizes whose head hash to report in `heads` (checkpoints). `after`: (size,
    head hash) of a prefix already vouched for (the last checkpoint): only the entries after it
    are recomputed, and the entry at that size must still carry that hash. `upto`: the last
    seq to verify (default: the last one this transaction sees).
    """
    seq = consent_ledger.c.seq
    # two subqueries: SQLite reads min and max off the index only when each is alone in its
    # SELECT, and otherwise scans the whole ledger (every evidence bundle and checkpoint did)
    lowest, highest = (
        await conn.execute(
            select(select(func.min(seq)).scalar_subquery(), select(func.max(seq)).scalar_subquery())
        )
    ).one()
    if upto is None:
        upto = highest or 0
    # the chain numbers its entries from 1: a row below (written by hand) is outside what the
    # scan hashes, yet the state check would read it
    if lowest is not None and lowest < 1:
        return Verification(False, 0, None, lowest, "entry outside the chain")
    start_seq, prev = after if after is not None else (0, GENESIS)
    heads = {0: GENESIS.hex()} if 0 in marks else {}
    if start_seq:
        stored = (
            await conn.execute(
                select(consent_ledger.c.hash).where(consent_ledger.c.seq == start_seq)
            )
        ).scalar()
        if stored != prev:
            return Verification(False, 0, None, start_seq, "differs from the checkpoint")
        if start_seq in marks:
            heads[start_seq] = prev.hex()
    scan = _Scan(prev, start_seq + 1, start_seq, frozenset(marks), heads)
    payload = _FAST_PAYLOAD[conn.dialect.name]
    fetch = await _fetcher(conn)
    pending: asyncio.Future | None = asyncio.ensure_future(fetch(start_seq, upto, batch))
    try:
        while pending is not None:
            rows = await pending
            pending = None
            if not rows:
                break
            pending = asyncio.ensure_future(fetch(rows[-1][0], upto, batch))
            await asyncio.to_thread(_check, rows, scan, payload)
            if scan.failure is not None:
                break
    finally:
        if pending is not None:  # let the driver finish before the connection is reused
            with contextlib.suppress(Exception):
                await pending
    if scan.failure is None and scan.next_seq <= upto:  # rows vanished during the scan
        scan.failure = (scan.next_seq, "missing entry")
    head = scan.prev.hex() if scan.count else None
    if scan.failure is not None:
        seq, reason = scan.failure
        return Verification(False, scan.count, head, seq, reason, scan.heads)
    return Verification(True, scan.count, head, None, None, scan.heads)
