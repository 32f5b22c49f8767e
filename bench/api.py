"""API throughput under 100 concurrent clients on loopback, against a real `cdp serve`.

    python -m bench.api --scale 20000 --db sqlite --seconds 10

For each endpoint: requests/s and p50/p99 latency, next to `GET /health/live` of the same app
(the framework's own ceiling, no database). The load comes from `wrk` (100 connections, a
separate process written in C, so the generator is not the bottleneck) when it is installed
(Debian: `apt-get install wrk`), else from a Python httpx generator whose own ceiling is a few
hundred requests/s on a small machine; the table says which.

Then opt-outs race segment member reads, and the benchmark counts contacts handed out after an
opt-out's answer: a member page whose request started after an opt-out was answered must not
contain that customer. That count must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import httpx

from bench.common import cli_env, peak_rss_mb, scratch_platform, until_serving
from bench.data import write_customers
from cdp.apikeys import create_key
from cdp.importer import run_import

CLIENTS = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_of(pid: int) -> float:
    """Peak resident set (VmHWM) of a running process and of its children (the workers of
    `cdp serve --workers`), in MB, or NaN where /proc has none."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            children = [int(c) for c in fh.read().split()]
    except OSError:
        children = []
    return _own_peak_rss(pid) + sum(_own_peak_rss(c) for c in children)


def _own_peak_rss(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


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


WRK_SCRIPTS = {
    "profiles": """
counter = 0
request = function()
  counter = counter + 1
  local body = '{"source":"api","first_name":"Anna","email":"w' .. RUN .. '.' .. counter ..
    '.' .. math.random(1, 1000000000) .. '@example.com"}'
  return wrk.format("POST", "/v1/profiles", nil, body)
end
""",
    "opt-outs": """
request = function()
  local body = '{"source":"esp","email":"user' .. math.random(0, SCALE - 1) .. '@example.com"}'
  return wrk.format("POST", "/v1/opt-outs", nil, body)
end
""",
    "lookups": """
request = function()
  local path = "/v1/profiles?email=user" .. KNOWN[math.random(1, #KNOWN)] .. "%40example.com"
  return wrk.format("GET", path)
end
""",
}
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def known_customers(path: Path) -> list[int]:
    """The n of each user{n}@example.com the base file holds (bench.data: a row that repeats
    an earlier customer's email brings no address of its own)."""
    with path.open(encoding="utf-8") as fh:
        return [int(line[1 : line.index(",")]) for line in fh if line.startswith("C")]


def wrk_load(
    base: str,
    path: str,
    key: str | None,
    script: str | None,
    seconds: float,
    scale: int,
    run: str,
    known: Sequence[int] = (),
) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) from wrk with CLIENTS connections; `known`: the
    customers a script may name (KNOWN)."""
    args = ["wrk", "-t2", f"-c{CLIENTS}", f"-d{max(1, int(seconds))}s", "--latency"]
    if key:
        args += ["-H", f"Authorization: Bearer {key}", "-H", "Content-Type: application/json"]
    if script:
        lua = Path(tempfile.mkdtemp(prefix="cdp-wrk-")) / "load.lua"
        lua.write_text(
            f"RUN = '{run}'\nSCALE = {scale}\nmath.randomseed({random.randrange(1 << 30)})\n"
            # one string, split in Lua: a table constructor of 100,000 numbers is too many
            # constants for LuaJIT
            + f'KNOWN = {{}}\nfor n in string.gmatch("{" ".join(map(str, known or [0]))}", "%d+")'
            + " do KNOWN[#KNOWN + 1] = n end\n"
            + WRK_SCRIPTS[script]
        )
        args += ["-s", str(lua)]
    out = subprocess.run([*args, base + path], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {
        q: float(v) * _UNITS[u]
        for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    }
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += (
        sum(
            int(n)
            for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out.split("Socket")[-1])
        )
        if "Socket errors" in out
        else 0
    )
    return rps, lat.get("50", 0.0), lat.get("99", 0.0), errors


async def run(
    scale: int, db: str, seconds: float, generator: str = "wrk", workers: int = 1
) -> tuple[list[str], str]:
    """(the table's rows for `db`, a line with the peak memory of the server and of this
    process), the rows printed as they are measured. `workers`: `cdp serve --workers`."""
    tmp = Path(tempfile.mkdtemp(prefix="cdp-api-"))
    rows = []
    label = db if workers == 1 else f"{db}, {workers} workers"
    async with scratch_platform(db, tmp) as p:
        base_file = write_customers(tmp / "base.csv", scale)
        await run_import(p, base_file, "crm", rejects_path=tmp / "rej.csv")
        known = known_customers(base_file)
        ingest = await create_key(p.db, "bench-ingest", "ingest")
        marketing = await create_key(p.db, "bench-marketing", "marketing")
        support = await create_key(p.db, "bench-support", "compliance")  # reads profiles
        env = cli_env(p, tmp)
        # wrk's connections all send one key, and one client holds half the bound at most
        # (api.in_flight.client_share): a bound that lets the benchmark's clients all in
        env["CDP_MAX_REQUESTS_IN_FLIGHT"] = str(2 * CLIENTS)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "cdp.cli", "serve", "--port", str(port)]
            + (["--workers", str(workers)] if workers > 1 else []),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
                await until_serving(client)
                hi = {"Authorization": f"Bearer {ingest}"}
                hm = {"Authorization": f"Bearer {marketing}"}
                hs = {"Authorization": f"Bearer {support}"}
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
                    "GET /v1/profiles?email=": lambda w, i: (
                        "GET",
                        "/v1/profiles",
                        {
                            "headers": hs,
                            "params": {"email": f"user{random.choice(known)}@example.com"},
                        },
                    ),
                }
                ceiling = None
                wrk_cases = {
                    "GET /health/live (ceiling)": ("/health/live", None, None),
                    "POST /v1/profiles": ("/v1/profiles", ingest, "profiles"),
                    "POST /v1/opt-outs": ("/v1/opt-outs", ingest, "opt-outs"),
                    "GET /v1/segments/{id}/members": (
                        f"/v1/segments/{seg_id}/members?limit=100",
                        marketing,
                        None,
                    ),
                    "GET /v1/profiles?email=": ("/v1/profiles", support, "lookups"),
                }
                for name, make in cases.items():
                    if generator == "wrk":
                        path, key, script = wrk_cases[name]
                        rps, p50, p99, errors = await asyncio.to_thread(
                            wrk_load, base, path, key, script, seconds, scale, run_id, known
                        )
                    else:
                        rps, lat, errors = await load(client, make, seconds)
                        p50, p99 = pct(lat, 0.5), pct(lat, 0.99)
                    ceiling = ceiling or rps
                    rows.append(
                        f"| {label} | {name} | {rps:,.0f} | {rps / ceiling:.2f}x | "
                        f"{p50:.1f} | {p99:.1f} | {errors} | {generator} |"
                    )
                    print(rows[-1], flush=True)
            # a client of its own: the keep-alive connections of the one above sat idle
            # while wrk ran, and the server had closed them (httpx.ReadError on reuse)
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
                leaked = await race(client, hi, hm, seg_id, seconds)
            rows.append(
                f"| {label} | contacts handed out after an opt-out's answer | {leaked} "
                "| | | | | python |"
            )
            print(rows[-1], flush=True)
        finally:
            server_peak = _peak_rss_of(server.pid)
            server.terminate()
            server.wait(timeout=30)
    peak = (
        f"peak RSS on {label}: server (`cdp serve`, its workers included) {server_peak:,.0f} MB, "
        f"load generator and scenario set-up {peak_rss_mb():,.0f} MB"
    )
    return rows, peak


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
    ap.add_argument(
        "--generator", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python"
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="`cdp serve --workers N` (PostgreSQL only); the table's first column says N",
    )
    args = ap.parse_args()
    if args.workers > 1 and "sqlite" in (args.db or ["sqlite"]):
        ap.error("--workers needs --db postgres alone (cdp serve refuses several on SQLite)")
    print("| db | endpoint | req/s | vs ceiling | p50 ms | p99 ms | errors | load generator |")
    print("|---|---|---|---|---|---|---|---|")
    # the peak memory lines go after the table: a line inside it would end the table there
    peaks = [
        asyncio.run(run(args.scale, db, args.seconds, args.generator, args.workers))[1]
        for db in args.db or ["sqlite"]
    ]
    print()
    for line in peaks:
        print(f"- {line}")


if __name__ == "__main__":
    main()
