"""How long an opt-out waits for its answer while batch ingests keep a real `cdp serve` busy.

    python -m bench.optout_latency --db sqlite --db postgres

An opt-out is honoured at once (DESIGN.md): it is recorded before it is answered, so a slow
answer breaks no guarantee, but a mail provider's one-click unsubscribe (RFC 8058), an ESP's
webhook and a customer on the unsubscribe page each give up after seconds and try again, or
not at all. For each database: the latency of an opt-out sent every 0.2 s (p50, p95, max)
with the server idle (the baseline), then while `--clients` clients each post batches of
`--batch` new customers to `/v1/profiles/batch` one after another, as an import over the API
does, and while a `cdp import` of `--import-rows` runs beside the server (`--load` picks one),
and the ratio of each to the baseline; with the load's own rate, so a change that makes
opt-outs quick by starving the load shows.

The load is generated here (bodies built once, sent as bytes), the server is its own process.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.api import free_port
from bench.common import cli_env, scratch_platform, until_serving
from bench.data import write_customers
from cdp.apikeys import create_key


def batch_body(run: str, client: int, n: int, size: int) -> bytes:
    records = ",".join(
        f'{{"source":"shop","email":"b{run}.{client}.{n}.{i}@mail.example",'
        f'"phone":"+7926{(client * 7919 + n * 104729 + i) % 10_000_000:07d}",'
        f'"first_name":"Анна","city":"Omsk","traits":{{"tier":"gold"}}}}'
        for i in range(size)
    )
    return f'{{"records":[{records}]}}'.encode()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


async def opt_outs(client: httpx.AsyncClient, h: dict, stop: float, tag: str) -> list[float]:
    """An opt-out every 0.2 s until `stop` (each naming an address of its own), their
    latencies; one that fails stops the benchmark. One sent on a kept-alive connection that the
    server closed as idle (uvicorn, after 5 s) in the same instant is sent again at once, as a
    client does with a request that may be repeated; its latency counts both."""
    out = []
    i = 0
    while time.perf_counter() < stop:
        t = time.perf_counter()
        body = {"source": "esp", "email": f"o{tag}.{i}@mail.example"}
        try:
            r = await client.post("/v1/opt-outs", json=body, headers=h)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            r = await client.post("/v1/opt-outs", json=body, headers=h)
        if r.status_code != 200:
            raise SystemExit(f"an opt-out was answered {r.status_code}")
        out.append(time.perf_counter() - t)
        i += 1
        await asyncio.sleep(max(0.0, 0.2 - (time.perf_counter() - t)))
    return out


async def batches(
    client: httpx.AsyncClient, h: dict, stop: float, clients: int, size: int
) -> tuple[int, int]:
    """Clients posting batches back to back until `stop`: (records stored, batches shed)."""
    run = uuid.uuid4().hex[:6]
    stored = shed = 0

    async def one(c: int) -> None:
        nonlocal stored, shed
        n = 0
        while time.perf_counter() < stop:
            body = batch_body(run, c, n, size)
            n += 1
            r = await client.post(
                "/v1/profiles/batch",
                content=body,
                headers={**h, "content-type": "application/json"},
            )
            if r.status_code == 503:  # the in-flight bound: try again, as a client does
                shed += 1
                await asyncio.sleep(0.5)
                continue
            r.raise_for_status()
            stored += size

    await asyncio.gather(*(one(c) for c in range(clients)))
    return stored, shed


async def importing(env: dict, tmp: Path, rows: int) -> tuple[int, float]:
    """`cdp import` of `rows` new customers beside the server: (rows, seconds)."""
    path = write_customers(tmp / f"import-{uuid.uuid4().hex[:6]}.csv", rows)
    t = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cdp.cli",
        "import",
        str(path),
        "--source",
        "crm",
        "--rejects",
        str(tmp / "rejects.csv"),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    if await proc.wait() != 0:
        raise SystemExit("the import failed")
    return rows, time.perf_counter() - t


async def during_import(
    client: httpx.AsyncClient, h: dict, env: dict, tmp: Path, rows: int
) -> tuple[list[float], int, float]:
    """Opt-outs every 0.2 s for as long as a `cdp import` of `rows` runs."""
    task = asyncio.create_task(importing(env, tmp, rows))
    out: list[float] = []
    i = 0
    while not task.done():
        out += await opt_outs(client, h, time.perf_counter() + 0.01, f"imp{i}")
        i += 1
    stored, took = await task
    return out, stored, took


async def run(db: str, args: argparse.Namespace) -> list[str]:
    """The table's rows for `db`: under batches, and under a `cdp import`."""
    tmp = Path(tempfile.mkdtemp(prefix="cdp-optout-"))
    rows = []
    async with scratch_platform(db, tmp) as p:
        ingest = await create_key(p.db, "bench-ingest", "ingest")
        env = cli_env(p, tmp, CDP_WEBHOOK_DISPATCHER="off")
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "cdp.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            h = {"Authorization": f"Bearer {ingest}"}
            limits = httpx.Limits(max_connections=args.clients + 4)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=300
            ) as client:
                await until_serving(client)
                idle = await opt_outs(client, h, time.perf_counter() + args.seconds / 2, "idle")
                base = statistics.median(idle) * 1000
                if "batches" in args.load:
                    stop = time.perf_counter() + args.seconds
                    t = time.perf_counter()
                    (busy, (stored, shed)) = await asyncio.gather(
                        opt_outs(client, h, stop, "busy"),
                        batches(client, h, stop, args.clients, args.batch),
                    )
                    took = time.perf_counter() - t
                    load = f"{args.clients} clients posting batches of {args.batch}"
                    rows.append(row(db, load, base, busy, stored / took, shed))
                if "import" in args.load:
                    busy, stored, took = await during_import(client, h, env, tmp, args.import_rows)
                    load = f"`cdp import` of {args.import_rows:,}"
                    rows.append(row(db, load, base, busy, stored / took, 0))
        finally:
            server.terminate()
            server.wait(timeout=60)
    return rows


def row(db: str, load: str, base: float, busy: list[float], rate: float, shed: int) -> str:
    return (
        f"| {db} | {load} | {base:.1f} | {pct(busy, 0.5):.0f} | {pct(busy, 0.95):.0f} "
        f"| {max(busy) * 1000:.0f} | {pct(busy, 0.5) / base:.0f}x | {rate:,.0f} "
        f"| {shed} | {len(busy)} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--load", action="append", choices=["batches", "import"], help="default: both")
    ap.add_argument("--clients", type=int, default=60)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--import-rows", type=int, default=100_000)
    args = ap.parse_args()
    args.load = args.load or ["batches", "import"]
    print("Opt-out latency (an opt-out every 0.2 s) while the service is loaded\n")
    print(
        "| db | load | idle p50 ms (baseline) | busy p50 ms | busy p95 ms | busy max ms "
        "| p50 ratio | load records/s | batches shed | opt-outs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for db in args.db or ["sqlite"]:
        for line in asyncio.run(run(db, args)):
            print(line, flush=True)


if __name__ == "__main__":
    main()
