"""Ingest benchmark: `cdp import` and the API, encrypted vs. the same rows stored plainly.

    python -m bench.ingest --scale 100000 --db sqlite --db postgres

Figures, all measured in this one process:
- import: `cdp import`'s code path (validation, normalisation, identity resolution, field
  encryption, blind indexes, consent ledger) in records/s;
- plain: the same code path with encryption switched off (fields stored as plaintext bytes,
  blind indexes replaced by the plain normalised value): the cost of encryption is the ratio;
- raw: the CSV rows inserted as they are with executemany (the database's own ceiling);
- api: POST /v1/profiles/batch (1000 records a request) and POST /v1/profiles, in-process ASGI;
- CPU per record of the encrypted import: its event loop thread (resolution, the consent
  ledger, building rows), the importing process (all its threads; on SQLite that adds the
  database thread, where SQLite does its own work, and the loop waits for it), and the whole
  machine (with the validation workers and, on PostgreSQL, the server). On 2 cores, 10,000
  records/s leaves 100 µs per record to a process and 200 to the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from api.app import create_app
from bench.common import CpuUse, cpu_use, peak_rss_mb, raw_csv_insert, scratch_platform
from bench.data import write_customers
from cdp.apikeys import create_key
from cdp.importer import run_import
from cdp.platform import Platform


class PlainCipher:
    """Stores plaintext bytes: the 'no encryption' baseline. Benchmark use only."""

    key_id = 1
    owner = "plain"

    def encrypt(self, place: str, plaintext: str | bytes, nonce: bytes | None = None) -> bytes:
        return plaintext.encode() if isinstance(plaintext, str) else plaintext

    def decrypt(self, place: str, blob: bytes | None) -> str | None:
        return None if blob is None else blob.decode()

    def decrypt_bytes(self, place: str, blob: bytes) -> bytes:
        return blob


class PlainIndexer:
    key = b""

    def index(self, kind: str, normalised: str) -> bytes:
        return f"{kind}:{normalised}".encode()

    def email(self, v: str) -> bytes:
        return self.index("email", v)

    def phone(self, v: str) -> bytes:
        return self.index("phone", v)

    def external_id(self, source: str, v: str) -> bytes:
        return self.index("external_id", f"{source}:{v}")


def make_plain(p: Platform) -> None:
    cipher = PlainCipher()
    keys = p.keys

    def new_profile_key(pid):  # type: ignore[no-untyped-def]
        from cdp.ids import utcnow

        return cipher, {
            "profile_id": pid,
            "key_id": 1,
            "master_key_id": "plain",
            "wrapped": b"",
            "created_at": utcnow(),
            "split": False,  # stored whole: no share in the key store
            "share": None,
        }

    async def ciphers(conn, pids, strict=False):  # type: ignore[no-untyped-def]
        return {pid: cipher for pid in pids}

    keys.new_profile_key = new_profile_key  # type: ignore[method-assign]
    keys.ciphers = ciphers  # type: ignore[method-assign]
    keys.worker_kek = lambda: None  # type: ignore[method-assign]  # workers do not encrypt
    keys.indexer = PlainIndexer()  # type: ignore[assignment]


async def timed_import(p: Platform, path: Path, workers: int | None) -> tuple[float, int]:
    secs, rows, _ = await measured_import(p, path, workers)
    return secs, rows


async def measured_import(
    p: Platform, path: Path, workers: int | None
) -> tuple[float, int, CpuUse]:
    """(seconds, records imported, CPU used) of one `cdp import` of `path`."""
    with cpu_use() as used:
        summary = await run_import(
            p, path, "crm", rejects_path=path.with_suffix(".rej"), workers=workers
        )
    return used[0].wall, summary.rows - summary.rejected_rows, used[0]


async def raw_insert(p: Platform, path: Path) -> float:
    return await raw_csv_insert(p, path, "raw_rows")


async def api_ingest(p: Platform, n: int) -> tuple[float, float]:
    key = await create_key(p.db, "bench", "ingest")
    headers = {"Authorization": f"Bearer {key}"}
    transport = httpx.ASGITransport(app=create_app(platform=p))
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        t = time.perf_counter()
        for start in range(0, n, 1000):
            records = [
                {
                    "source": "api",
                    "email": f"api{i}@example.com",
                    "first_name": "Анна",
                    "phone": f"+7925{i:07d}",
                }
                for i in range(start, min(n, start + 1000))
            ]
            r = await client.post("/v1/profiles/batch", json={"records": records}, headers=headers)
            r.raise_for_status()
        batch_s = time.perf_counter() - t
        singles = min(2000, n)
        t = time.perf_counter()
        for i in range(singles):
            r = await client.post(
                "/v1/profiles",
                headers=headers,
                json={"source": "api1", "email": f"one{i}@example.com", "first_name": "Иван"},
            )
            r.raise_for_status()
        single_s = time.perf_counter() - t
    return n / batch_s, singles / single_s


async def run(
    scale: int, dbs: list[str], workers: int | None, plain_dbs: list[str] | None = None
) -> list[str]:
    lines = []
    tmp = Path(tempfile.mkdtemp(prefix="cdp-ingest-"))
    path = write_customers(tmp / "customers.csv", scale)
    for db in dbs:
        async with scratch_platform(db) as p:
            secs, rows, cpu = await measured_import(p, path, workers)
            enc = rows / secs
            own_us, machine_us = cpu.per_item_us(rows)
            loop_us = cpu.thread / rows * 1e6
        plain = float("nan")  # not measured for this database in this run
        if plain_dbs is None or db in plain_dbs:
            async with scratch_platform(db) as p:
                make_plain(p)
                psecs, prows = await timed_import(p, path, workers)
                plain = prows / psecs
        async with scratch_platform(db) as p:
            raw = scale / await raw_insert(p, path)
        async with scratch_platform(db) as p:
            api_batch, api_single = await api_ingest(p, min(scale, 20_000))
        measured = plain == plain  # not NaN
        plain_s = f"{plain:,.0f}" if measured else "not run"
        ratio_s = f"{enc / plain:.2f}x" if measured else "-"
        lines.append(
            f"| {db} | {scale:,} | {enc:,.0f} | {plain_s} | {ratio_s} | "
            f"{raw:,.0f} | {enc / raw:.2f}x | {api_batch:,.0f} | {api_single:,.0f} | "
            f"{loop_us:,.0f} / {own_us:,.0f} / {machine_us:,.0f} µs | {peak_rss_mb():,.0f} MB |"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=100_000)
    ap.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument(
        "--plain-db",
        action="append",
        choices=["sqlite", "postgres"],
        help="measure the plain baseline only on these databases (default: every --db)",
    )
    args = ap.parse_args()
    print(
        "| db | records | import rec/s (encrypted) | same path, plain rec/s | ratio | "
        "raw executemany rows/s | ratio to raw | API batch rec/s | API single req/s | "
        "import CPU per record (event loop thread / importing process / machine) | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    asyncio.run(run(args.scale, args.db or ["sqlite"], args.workers, args.plain_db))


if __name__ == "__main__":
    main()
