"""Benchmark: verification of the consent ledger's hash chain.

    .venv/bin/python bench/verify.py --entries 1000000 --db sqlite
    .venv/bin/python bench/verify.py --entries 200000 --db postgres [--pg-url URL]

Generates N chained ledger entries (real field encryption of the evidence, real hashing with
consent.chain.entry_hash) in a fresh database by bulk insert, then times, in the same run:
- baseline: the same columns fetched through the driver in seq order, nothing checked;
- verify: consent.chain.verify_chain over the whole ledger (what `cdp audit verify` runs).
It prints both, the entries per second, and the ratio verify / baseline. Target: 1,000,000
entries verified in under 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
from sqlalchemy import insert, text

from cdp.crypto.fields import FieldCipher, new_data_key
from cdp.db.engine import Database
from cdp.db.migrate import migrate
from cdp.ids import new_id
from consent.chain import GENESIS, HASHED_FIELDS, entry_hash, verify_chain
from consent.tables import consent_ledger

CHUNK = 10_000
PG_ADMIN_URL = os.environ.get("CDP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def ledger_rows(n: int, seed: int = 7):
    """Chunks of realistic, correctly chained ledger rows."""
    rnd = random.Random(seed)
    prev = GENESIS
    start = datetime(2025, 1, 1, tzinfo=UTC)
    ciphers = [FieldCipher(new_data_key(), 1, str(uuid.uuid4())) for _ in range(64)]
    chunk: list[dict] = []
    for seq in range(1, n + 1):
        cipher = ciphers[seq % len(ciphers)]
        kind = rnd.choice(("email", "email", "phone", "profile"))
        status = "granted" if rnd.random() < 0.7 else "withdrawn"
        occurred = start + timedelta(seconds=seq * 13, microseconds=rnd.randrange(1_000_000))
        evidence = {
            "wording_id": "newsletter-v3",
            "method": "double_opt_in",
            "ip": f"203.0.{rnd.randrange(256)}.{rnd.randrange(256)}",
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        }
        row = {
            "seq": seq,
            "event_id": new_id(),
            "profile_id": uuid.UUID(cipher.owner),
            "subject_kind": kind,
            "address_bidx": None if kind == "profile" else rnd.randbytes(32),
            "purpose": "marketing" if rnd.random() < 0.8 else "service",
            "channel": {"email": "email", "phone": "sms", "profile": "push"}[kind],
            "status": status,
            "occurred_at": occurred,
            "recorded_at": occurred + timedelta(seconds=2),
            "source": "web_form",
            "actor": "crm-sync",
            "method": "double_opt_in",
            "wording_id": "newsletter-v3",
            "policy_version": "2026.11.1+0123456789ab",
            "evidence": cipher.encrypt("consent_ledger.evidence", msgspec.json.encode(evidence)),
            "evidence_owner": cipher.owner,
            "evidence_key_id": cipher.key_id,
            "effective": status == "withdrawn" or rnd.random() < 0.9,
            "prev_hash": prev,
        }
        row["hash"] = prev = entry_hash(prev, row)
        chunk.append(row)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def fill(db: Database, n: int) -> float:
    t0 = time.perf_counter()
    for chunk in ledger_rows(n):
        async with db.write() as conn:
            await conn.execute(insert(consent_ledger), chunk)
    if db.is_postgres:
        async with db.engine.connect() as conn:
            await conn.execute(text("COMMIT"))
            await conn.exec_driver_sql("VACUUM ANALYZE consent_ledger")
    return time.perf_counter() - t0


async def baseline_select(db: Database) -> tuple[float, int]:
    """Fetch every hashed column of every row in seq order through the driver, in the same
    batches as verify_chain, and check nothing."""
    cols = ", ".join([*HASHED_FIELDS, "prev_hash", "hash"])
    t0 = time.perf_counter()
    rows = last = 0
    async with db.read() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        while True:
            if db.is_postgres:
                sql = f"SELECT {cols} FROM consent_ledger WHERE seq > $1 ORDER BY seq LIMIT $2"
                batch = await driver.fetch(sql, last, 20_000)  # type: ignore[union-attr]
            else:
                sql = f"SELECT {cols} FROM consent_ledger WHERE seq > ? ORDER BY seq LIMIT ?"
                cursor = await driver.execute(sql, (last, 20_000))  # type: ignore[union-attr]
                batch = await cursor.fetchall()
                await cursor.close()
            if not batch:
                break
            rows += len(batch)
            last = batch[-1][0]
    return time.perf_counter() - t0, rows


async def timed_verify(db: Database):  # type: ignore[no-untyped-def]
    t0, c0 = time.perf_counter(), time.process_time()
    async with db.read() as conn:
        result = await verify_chain(conn)
    return time.perf_counter() - t0, time.process_time() - c0, result


async def ledger_size(db: Database) -> int:
    async with db.read() as conn:
        return (await conn.execute(text("SELECT count(*) FROM consent_ledger"))).scalar_one()


async def pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--runs", type=int, default=2, help="timed runs of each (best is printed)")
    ap.add_argument(
        "--sqlite-file",
        type=Path,
        default=None,
        help="keep the generated SQLite ledger here and reuse it when it has --entries entries",
    )
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="cdp-bench-verify-")
    pg_name = None
    if args.db == "sqlite":
        url = f"sqlite+aiosqlite:///{args.sqlite_file or Path(tmp.name) / 'ledger.db'}"
    else:
        pg_name = f"cdp_bench_verify_{os.getpid()}"
        await pg_admin(f'CREATE DATABASE "{pg_name}"')
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        url = f"{base}/{pg_name}"
    db = Database(url)
    try:
        await migrate(db)
        if await ledger_size(db) != args.entries:
            async with db.write() as conn:
                await conn.execute(text("DELETE FROM consent_ledger"))
            fill_s = await fill(db, args.entries)
            print(f"{args.db}: generated {args.entries:,} chained entries in {fill_s:.1f} s")
        base_s = min([(await baseline_select(db))[0] for _ in range(args.runs)])
        runs = [await timed_verify(db) for _ in range(args.runs)]
        verify_s, cpu_s, result = min(runs, key=lambda r: r[0])
        assert result.ok and result.entries == args.entries, result
        print(f"baseline (driver fetch of the same rows):  {base_s:6.2f} s")
        print(
            f"verify_chain:                            {verify_s:6.2f} s  "
            f"({args.entries / verify_s:,.0f} entries/s; {cpu_s:.2f} s CPU in this process)"
        )
        print(f"ratio verify / baseline:                 {verify_s / base_s:6.2f}x")
        tracemalloc.start()  # an untimed run: tracing slows every allocation
        await timed_verify(db)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        print(f"peak traced memory of a verification:    {peak:6.1f} MiB")
        per_million = verify_s * 1_000_000 / args.entries
        print(
            f"projected for 1,000,000 entries:         {per_million:6.2f} s "
            f"(target < 10 s: {'met' if per_million < 10 else 'NOT met'})"
        )
    finally:
        await db.dispose()
        if pg_name:
            await pg_admin(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
