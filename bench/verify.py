"""Benchmark: verification of the consent ledger (hash chain) and of the derived state.

    .venv/bin/python bench/verify.py --entries 1000000 --db sqlite
    .venv/bin/python bench/verify.py --entries 200000 --db postgres [--pg-url URL]

Generates N chained ledger entries (real field encryption of the evidence, real hashing with
consent.chain.entry_hash) in a fresh database by bulk insert, with the consent_state rows and
suppressions they imply (about three entries per address, 10,000 profiles with push consent,
opt-outs with their suppressions, "*" withdrawals), then times, in the same run:
- baseline: the same columns fetched through the driver in seq order, nothing checked;
- verify_chain: consent.chain.verify_chain over the whole ledger (the chain alone);
- check_state: consent.audit.state.check_state (the state check alone);
- verify: consent.audit.verify.verify_ledger, both (what `cdp audit verify` and
  `GET /v1/audit/verify` run): from consent.audit.parallel.PARALLEL_FROM entries the chain is
  recomputed in a child process while this one checks the state.
It prints each, the entries per second, and the ratio verify / baseline. Target: 1,000,000
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
from cdp.settings import DEFAULT_POLICY_DIR
from consent.audit.state import check_state
from consent.audit.verify import snapshot, verify_ledger
from consent.chain import GENESIS, HASHED_FIELDS, entry_hash, verify_chain
from consent.ledger import supersedes
from consent.policy import Policy, load_policy
from consent.subjects import expand_channel, profile_subject
from consent.tables import consent_ledger, consent_state, suppressions

CHUNK = 10_000
PG_ADMIN_URL = os.environ.get("CDP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


class Derived:
    """The consent_state rows and suppressions a ledger implies, kept as ledger.append and
    consent.optout keep them."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.state: dict[tuple[bytes, str, str], dict] = {}
        self.suppressed: dict[tuple[bytes, str, str], datetime] = {}

    def add(self, row: dict, subject: bytes) -> None:
        at = min(row["occurred_at"], row["recorded_at"])
        for channel in expand_channel(self.policy, row["subject_kind"], row["channel"]):
            key = (subject, row["purpose"], channel)
            current = self.state.get(key)
            if supersedes(row["status"], at, current and (current["status"], current["since"])):
                self.state[key] = {
                    "subject": subject,
                    "purpose": row["purpose"],
                    "channel": channel,
                    "profile_id": row["profile_id"],
                    "status": row["status"],
                    "since": at,
                    "seq": row["seq"],
                    "source": row["source"],
                }
        if row["method"] == "opt_out":
            key = (subject, row["purpose"], row["channel"])
            self.suppressed[key] = max(self.suppressed.get(key, at), row["occurred_at"])

    def suppression_rows(self) -> list[dict]:
        return [
            {
                "bidx": bidx,
                "purpose": purpose,
                "channel": channel,
                "reason": "opt_out",
                "source": "esp",
                "at": at,
                "created_at": at,
            }
            for (bidx, purpose, channel), at in self.suppressed.items()
        ]


def ledger_rows(n: int, derived: Derived, seed: int = 7):
    """Chunks of realistic, correctly chained ledger rows; `derived` follows them."""
    rnd = random.Random(seed)
    prev = GENESIS
    start = datetime(2025, 1, 1, tzinfo=UTC)
    ciphers = [FieldCipher(new_data_key(), 1, str(uuid.uuid4())) for _ in range(64)]
    addresses = {k: [rnd.randbytes(32) for _ in range(max(1, n // 6))] for k in ("email", "phone")}
    profiles = [uuid.uuid4() for _ in range(max(1, min(10_000, n // 10)))]
    chunk: list[dict] = []
    for seq in range(1, n + 1):
        cipher = ciphers[seq % len(ciphers)]
        kind = rnd.choice(("email", "email", "phone", "profile"))
        status = "granted" if rnd.random() < 0.7 else "withdrawn"
        opt_out = kind != "profile" and status == "withdrawn" and rnd.random() < 0.5
        channel = {"email": "email", "phone": "sms", "profile": "push"}[kind]
        if status == "withdrawn" and rnd.random() < 0.3:
            channel = "*"
        occurred = start + timedelta(seconds=seq * 13, microseconds=rnd.randrange(1_000_000))
        if rnd.random() < 0.1:  # an import of an older consent: kept, not effective
            occurred -= timedelta(days=rnd.randrange(1, 30))
        evidence = {
            "wording_id": "newsletter-v3",
            "method": "double_opt_in",
            "ip": f"203.0.{rnd.randrange(256)}.{rnd.randrange(256)}",
            "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        }
        pid = rnd.choice(profiles) if kind == "profile" else uuid.UUID(cipher.owner)
        bidx = None if kind == "profile" else rnd.choice(addresses[kind])
        row = {
            "seq": seq,
            "event_id": new_id(),
            "profile_id": pid,
            "subject_kind": kind,
            "address_bidx": bidx,
            "purpose": "marketing" if rnd.random() < 0.8 else "service",
            "channel": channel,
            "status": status,
            "occurred_at": occurred,
            "recorded_at": start + timedelta(seconds=seq * 13 + 2),
            "source": "web_form",
            "actor": "crm-sync",
            "method": "opt_out" if opt_out else "double_opt_in",
            "wording_id": None if opt_out else "newsletter-v3",
            "policy_version": derived.policy.version,
            "evidence": None
            if opt_out
            else cipher.encrypt("consent_ledger.evidence", msgspec.json.encode(evidence)),
            "evidence_owner": None if opt_out else cipher.owner,
            "evidence_key_id": None if opt_out else cipher.key_id,
            # what the check reads of it: a grant recorded as not effective is left out
            # (consent.audit.replay.EFFECTIVE_GRANTS), and Derived counts every entry
            "effective": True,
            "prev_hash": prev,
        }
        row["hash"] = prev = entry_hash(prev, row)
        derived.add(row, bidx if bidx is not None else profile_subject(pid))
        chunk.append(row)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def fill(db: Database, n: int, policy: Policy) -> float:
    t0 = time.perf_counter()
    derived = Derived(policy)
    for chunk in ledger_rows(n, derived):
        async with db.write() as conn:
            await conn.execute(insert(consent_ledger), chunk)
    for table, rows in (
        (consent_state, list(derived.state.values())),
        (suppressions, derived.suppression_rows()),
    ):
        for start in range(0, len(rows), CHUNK):
            async with db.write() as conn:
                await conn.execute(insert(table), rows[start : start + CHUNK])
    if db.is_postgres:
        async with db.engine.connect() as conn:
            await conn.execute(text("COMMIT"))
            for table in ("consent_ledger", "consent_state", "suppressions"):
                await conn.exec_driver_sql(f"VACUUM ANALYZE {table}")
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


async def timed_chain(db: Database):  # type: ignore[no-untyped-def]
    t0, c0 = time.perf_counter(), time.process_time()
    async with db.read() as conn:
        result = await verify_chain(conn)
    return time.perf_counter() - t0, time.process_time() - c0, result


async def timed_state(db: Database, policy: Policy):  # type: ignore[no-untyped-def]
    t0, c0 = time.perf_counter(), time.process_time()
    async with snapshot(db) as conn:
        found = await check_state(conn, policy)
    return time.perf_counter() - t0, time.process_time() - c0, found


async def timed_verify(db: Database, policy: Policy):  # type: ignore[no-untyped-def]
    t0, c0 = time.perf_counter(), time.process_time()
    async with snapshot(db) as conn:
        report = await verify_ledger(conn, [], policy=policy)
    return time.perf_counter() - t0, time.process_time() - c0, report


async def ledger_size(db: Database) -> int:
    async with db.read() as conn:
        return (await conn.execute(text("SELECT count(*) FROM consent_ledger"))).scalar_one()


async def state_size(db: Database) -> int:
    async with db.read() as conn:
        return (await conn.execute(text("SELECT count(*) FROM consent_state"))).scalar_one()


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
    policy = load_policy(DEFAULT_POLICY_DIR)
    try:
        await migrate(db)
        if await ledger_size(db) != args.entries or not await state_size(db):
            async with db.write() as conn:
                for table in ("consent_ledger", "consent_state", "suppressions"):
                    await conn.execute(text(f"DELETE FROM {table}"))
            fill_s = await fill(db, args.entries, policy)
            print(f"{args.db}: generated {args.entries:,} chained entries in {fill_s:.1f} s")
        print(f"consent_state rows: {await state_size(db):,}")
        base_s = min([(await baseline_select(db))[0] for _ in range(args.runs)])
        chains = [await timed_chain(db) for _ in range(args.runs)]
        chain_s, chain_cpu, chain = min(chains, key=lambda r: r[0])
        assert chain.ok and chain.entries == args.entries, chain
        states = [await timed_state(db, policy) for _ in range(args.runs)]
        state_s, state_cpu, found = min(states, key=lambda r: r[0])
        assert found.ok and found.entries == args.entries, found.to_json()
        runs = [await timed_verify(db, policy) for _ in range(args.runs)]
        verify_s, cpu_s, report = min(runs, key=lambda r: r[0])
        assert report.ok and report.chain.entries == args.entries, report.to_json()
        print(f"baseline (driver fetch of the same rows):  {base_s:6.2f} s")
        print(
            f"verify_chain (the chain alone):          {chain_s:6.2f} s  "
            f"({args.entries / chain_s:,.0f} entries/s; {chain_cpu:.2f} s CPU in this process)"
        )
        print(
            f"check_state (the state check alone):     {state_s:6.2f} s  "
            f"({args.entries / state_s:,.0f} entries/s; {state_cpu:.2f} s CPU in this process)"
        )
        print(
            f"verify (both, one verification):         {verify_s:6.2f} s  "
            f"({args.entries / verify_s:,.0f} entries/s; {cpu_s:.2f} s CPU in this process)"
        )
        print(f"ratio verify / baseline:                 {verify_s / base_s:6.2f}x")
        tracemalloc.start()  # an untimed run: tracing slows every allocation
        await timed_verify(db, policy)
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        print(f"peak traced memory (this process):       {peak:6.1f} MiB")
        if args.entries == 1_000_000:
            met = "met" if verify_s < 10 else "NOT met"
            print(f"target < 10 s at 1,000,000 entries:     {met}")
        else:  # the child process's start-up (~0.5 s) does not grow with the ledger
            print("target: < 10 s at 1,000,000 entries (run with --entries 1000000)")
    finally:
        await db.dispose()
        if pg_name:
            await pg_admin(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
        tmp.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
