"""API throughput under 100 concurrent clients on loopback, against a real `cdp serve`.

    python -m bench.api --scale 20000 --db sqlite --seconds 10

For each endpoint: requests/s and p50/p99 latency, next to `GET /health/live` of the same app
(the framework's own ceiling, no database). Then opt-outs race segment member reads, and the
benchmark counts contacts handed out after an opt-out's answer: a member page whose request
started after an opt-out was answered must not contain that customer. That count must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.common import peak_rss_mb, scratch_platform
from bench.data import write_customers
from cdp.apikeys import create_key
from cdp.importer import run_import

CLIENTS = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else 0.0


async def load(client: httpx.AsyncClient, make, seconds: float) -> tuple[float, list[float], int]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal errors
        i = 0
        while time.perf_counter() < stop:
            method, url, kwargs = make(w, i)
            i += 1
            t = time.perf_counter()
            try:
                r = await client.request(method, url, **kwargs)
                failed = r.status_code >= 400
            except httpx.HTTPError:  # a timeout counts as an error, and its wait as latency
                failed = True
            latencies.append(time.perf_counter() - t)
            errors += failed

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(CLIENTS)))
    return len(latencies) / (time.perf_counter() - t0), latencies, errors


async def run(scale: int, db: str, seconds: float) -> list[str]:
    tmp = Path(tempfile.mkdtemp(prefix="cdp-api-"))
    rows = []
    async with scratch_platform(db, tmp) as p:
        await run_import(
            p, write_customers(tmp / "base.csv", scale), "crm", rejects_path=tmp / "rej.csv"
        )
        ingest = await create_key(p.db, "bench-ingest", "ingest")
        marketing = await create_key(p.db, "bench-marketing", "marketing")
        env = {
            **os.environ,
            "CDP_DATABASE_URL": p.settings.database_url,
            "CDP_MASTER_KEY": p.settings.master_key or "",
            "CDP_DEV_KEY_DIR": str(tmp),
        }
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "cdp.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
                for _ in range(100):
                    try:
                        if (await client.get("/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await asyncio.sleep(0.2)
                hi = {"Authorization": f"Bearer {ingest}"}
                hm = {"Authorization": f"Bearer {marketing}"}
                seg = await client.post(
                    "/v1/segments",
                    headers=hm,
                    json={
                        "name": "bench",
                        "purpose": "marketing",
                        "channel": "email",
                        "rules": {"field": "country", "op": "eq", "value": "RU"},
                    },
                )
                seg.raise_for_status()
                seg_id = seg.json()["id"]
                run_id = uuid.uuid4().hex[:6]
                cases = {
                    "GET /health/live (ceiling)": lambda w, i: ("GET", "/health/live", {}),
                    "POST /v1/profiles": lambda w, i: (
                        "POST",
                        "/v1/profiles",
                        {
                            "headers": hi,
                            "json": {
                                "source": "api",
                                "email": f"b{run_id}.{w}.{i}@example.com",
                                "first_name": "Анна",
                            },
                        },
                    ),
                    "POST /v1/opt-outs": lambda w, i: (
                        "POST",
                        "/v1/opt-outs",
                        {
                            "headers": hi,
                            "json": {
                                "source": "esp",
                                "email": f"user{random.randrange(scale)}@example.com",
                            },
                        },
                    ),
                    "GET /v1/segments/{id}/members": lambda w, i: (
                        "GET",
                        f"/v1/segments/{seg_id}/members?limit=100",
                        {"headers": hm},
                    ),
                }
                ceiling = None
                for name, make in cases.items():
                    rps, lat, errors = await load(client, make, seconds)
                    ceiling = ceiling or rps
                    rows.append(
                        f"| {db} | {name} | {rps:,.0f} | {rps / ceiling:.2f}x | "
                        f"{pct(lat, 0.5):.1f} | {pct(lat, 0.99):.1f} | {errors} |"
                    )
                    print(rows[-1], flush=True)
                leaked = await race(client, hi, hm, seg_id, seconds)
                rows.append(
                    f"| {db} | contacts handed out after an opt-out's answer | {leaked} | | | | |"
                )
                print(rows[-1], flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"peak RSS of the load generator: {peak_rss_mb():,.0f} MB")
    return rows


async def race(client: httpx.AsyncClient, hi: dict, hm: dict, seg_id: str, seconds: float) -> int:
    """Opt-outs of segment members interleaved with member reads; count late contacts."""
    page = (await client.get(f"/v1/segments/{seg_id}/members?limit=1000", headers=hm)).json()
    targets = [(m["profile_id"], m["address"]) for m in page["items"]]
    answered: dict[str, float] = {}
    reads: list[tuple[float, set[str]]] = []
    stop = time.perf_counter() + seconds

    async def opt_outs(share: list[tuple[str, str]]) -> None:
        for pid, address in share:
            if time.perf_counter() > stop:
                break
            r = await client.post(
                "/v1/opt-outs", headers=hi, json={"source": "race", "email": address}
            )
            if r.status_code == 200:
                answered[pid] = time.perf_counter()

    async def reader() -> None:
        while time.perf_counter() < stop and len(answered) < len(targets):
            t = time.perf_counter()
            r = await client.get(f"/v1/segments/{seg_id}/members?limit=1000", headers=hm)
            reads.append((t, {m["profile_id"] for m in r.json()["items"]}))

    await asyncio.gather(
        *([opt_outs(targets[k::10]) for k in range(10)] + [reader() for _ in range(20)])
    )
    return sum(
        1
        for started, members in reads
        for pid in members
        if pid in answered and answered[pid] < started
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=20_000)
    ap.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    print("| db | endpoint | req/s | vs ceiling | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|---|")
    for db in args.db or ["sqlite"]:
        asyncio.run(run(args.scale, db, args.seconds))


if __name__ == "__main__":
    main()
