"""How long the access export's search of the segment export records takes (not a test).

    .venv/bin/python -m bench.access_scan --chunks 3000 [--db sqlite|postgres]

Fills a new database with `--chunks` export chunks of 2,000 members each (64 KB, as
`cdp.segments.exports` writes them; 100 chunks an export), puts one customer in one chunk
near the end, and times `consent.dsr.access._segment_exports` for her (2 profile ids and 2
identity ids, as a merged customer with an email and a phone has), cold and warm, then for a
customer newer than every export (whose search reads no members).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert

from cdp.crypto.master import MasterKey
from cdp.db.tables import segment_export_chunks, segment_exports
from cdp.ids import new_id, utcnow
from cdp.platform import open_platform
from cdp.settings import Settings
from consent.dsr import access

MEMBERS = 2000
PER_EXPORT = 100


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(
        os.environ.get("CDP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def measure(db: str, chunks: int, work: Path) -> None:
    name = f"cdp_scan_{uuid.uuid4().hex[:8]}"
    if db == "postgres":
        await _pg_admin(f'CREATE DATABASE "{name}"')
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    else:
        url = f"sqlite+aiosqlite:///{work / 'scan.db'}"
    settings = Settings(
        database_url=url,
        master_key=MasterKey.generate_base64(),
        default_jurisdiction="RU",
        public_url="http://localhost",
        dev_key_dir=work / "keys",
    )
    p = await open_platform(settings, run_migrations=True)
    try:
        pids = [uuid.uuid4(), uuid.uuid4()]
        iids = [uuid.uuid4(), uuid.uuid4()]
        target = chunks - 7
        started = utcnow() - timedelta(days=1)
        n = 0
        while n < chunks:
            async with p.db.write() as conn:
                eid = new_id()
                await conn.execute(
                    insert(segment_exports).values(
                        id=eid,
                        segment_id=uuid.uuid4(),
                        actor="marketing-key",
                        role="marketing",
                        purpose="marketing",
                        channel="email",
                        format="ndjson",
                        started_at=started,
                        finished_at=started,
                        rows=0,
                    )
                )
                rows = []
                for seq in range(min(PER_EXPORT, chunks - n)):
                    members = bytearray(os.urandom(32 * MEMBERS))
                    if n == target:
                        members[32 * 500 : 32 * 501] = pids[1].bytes + iids[0].bytes
                    rows.append(
                        {"export_id": eid, "seq": seq, "rows": MEMBERS, "members": bytes(members)}
                    )
                    n += 1
                await conn.execute(insert(segment_export_chunks), rows)
        scope = access._Scope(
            {x.bytes for x in pids}, {iids[0].bytes: "her@example.com", iids[1].bytes: None}
        )
        for run in ("cold", "warm", "warm"):
            t = time.perf_counter()
            found = await access._segment_exports(p, scope)
            took = time.perf_counter() - t
            assert [f["addresses"] for f in found] == [["her@example.com"]], found
            mb = chunks * 32 * MEMBERS / 1e6
            print(f"{db:8} {chunks} chunks ({mb:.0f} MB of records) {run}: {took:.2f} s")
        # a customer whose first profile is newer than every export: no members are read
        scope.since = utcnow()
        t = time.perf_counter()
        assert await access._segment_exports(p, scope) == []
        took = time.perf_counter() - t
        print(f"{db:8} {chunks} chunks, all finished before the customer existed: {took:.2f} s")
    finally:
        await p.close()
        if db == "postgres":
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}_keys" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=3000)
    parser.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    args = parser.parse_args()
    for db in args.db or ["sqlite", "postgres"]:
        with tempfile.TemporaryDirectory() as work:
            asyncio.run(measure(db, args.chunks, Path(work)))


if __name__ == "__main__":
    main()
