"""Shared benchmark plumbing: a throwaway database on SQLite or PostgreSQL, a platform on it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from cdp.crypto.master import MasterKey
from cdp.platform import Platform, open_platform
from cdp.settings import DEFAULT_POLICY_DIR, Settings

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.asynccontextmanager
async def scratch_platform(
    db: str, workdir: Path | None = None, policy_dir: Path | None = None
) -> AsyncIterator[Platform]:
    """A platform on a new, migrated, empty database that is removed afterwards (with the
    policies of `policy_dir`, else the shipped ones)."""
    own = workdir is None  # a directory made here is removed afterwards (SQLite: gigabytes)
    tmp = Path(workdir or tempfile.mkdtemp(prefix="cdp-bench-"))
    name = None
    if db == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    else:
        import asyncpg

        name = f"cdp_bench_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    settings = Settings(
        database_url=url,
        master_key=MasterKey.generate_base64(),
        dev_key_dir=tmp / "keys",
        policy_dir=policy_dir or DEFAULT_POLICY_DIR,
    )
    p = await open_platform(settings)
    try:
        yield p
    finally:
        await p.close()
        if own:
            shutil.rmtree(tmp, ignore_errors=True)
        if name:
            import asyncpg

            admin = await asyncpg.connect(PG_ADMIN)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}_keys" WITH (FORCE)')
            await admin.close()


def cli_env(p: Platform, workdir: Path, **more: str) -> dict[str, str]:
    """The environment in which `cdp` commands (`cdp serve`, `cdp import`, ...) open `p`'s
    database and keys."""
    return {
        **os.environ,
        "CDP_DATABASE_URL": p.settings.database_url,
        "CDP_MASTER_KEY": p.settings.master_key or "",
        "CDP_DEV_KEY_DIR": str(workdir),
        **more,
    }


async def until_serving(client: httpx.AsyncClient, tries: int = 150) -> None:
    """Until the `cdp serve` behind `client` answers /health (5 tries a second)."""
    for _ in range(tries):
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("cdp serve did not answer /health")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass(frozen=True, slots=True)
class CpuUse:
    """CPU seconds used while a block ran: by the thread that ran it (an asyncio program's event
    loop), by this process (all its threads: with SQLite, aiosqlite's thread does SQLite's own
    work) and by the whole machine (this process, its workers, a local database server,
    anything else running)."""

    wall: float
    process: float
    machine: float  # NaN where /proc/stat cannot be read
    thread: float = float("nan")

    def per_item_us(self, n: int) -> tuple[float, float]:
        return self.process / n * 1e6, self.machine / n * 1e6


def _machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine (Linux /proc/stat: every state but idle and iowait)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return float("nan")
    busy = sum(fields) - fields[3] - fields[4]  # idle, iowait
    return busy / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cpu_use() -> Iterator[list[CpuUse]]:
    """`with cpu_use() as used: ...` then `used[0]` is the block's CpuUse."""
    out: list[CpuUse] = []
    wall, proc, machine = time.perf_counter(), time.process_time(), _machine_cpu_seconds()
    thread = time.thread_time()
    yield out
    out.append(
        CpuUse(
            wall=time.perf_counter() - wall,
            process=time.process_time() - proc,
            machine=_machine_cpu_seconds() - machine,
            thread=time.thread_time() - thread,
        )
    )


async def raw_csv_insert(p: Platform, path: Path, table: str) -> float:
    """Seconds to insert the CSV's rows as they are (text columns named after its header)
    with executemany in batches of 5,000: the database's own ceiling, a benchmark's raw
    baseline."""
    import csv

    from sqlalchemy import Column, MetaData, String, Table

    with path.open(encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    names = [h.replace(".", "_") for h in header]
    md = MetaData()
    Table(table, md, *[Column(n, String) for n in names])
    async with p.db.engine.begin() as conn:
        await conn.run_sync(md.create_all)
    marks = (
        ", ".join(["?"] * len(names))
        if p.db.is_sqlite
        else ", ".join(f"${i + 1}" for i in range(len(names)))
    )
    sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})"
    t = time.perf_counter()
    with path.open(encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader)
        batch: list[tuple] = []
        for row in reader:
            batch.append(tuple(row))
            if len(batch) >= 5000:
                async with p.db.write() as conn:
                    await conn.exec_driver_sql(sql, batch)
                batch = []
        if batch:
            async with p.db.write() as conn:
                await conn.exec_driver_sql(sql, batch)
    return time.perf_counter() - t
