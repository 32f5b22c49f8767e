"""Run every benchmark and write bench/RESULTS.md.

    python -m bench                      # 1,000,000 customers, SQLite and PostgreSQL
    python -m bench --scale 100000       # a quicker check

Each benchmark is its own module (`python -m bench.<name> --help`) and prints a markdown table
whose figures sit next to a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> str:
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            kb = int(fh.readline().split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores{mem}, Python {platform.python_version()}"


def suites(scale: int, dbs: list[str]) -> list[tuple[str, list[str]]]:
    db_args = [a for db in dbs for a in ("--db", db)]
    per_db = [  # modules that take one --db at a time
        (f"{title} ({db})", [module, *args, "--db", db])
        for title, module, args in (
            (
                "Segment export",
                "bench.segments",
                # one export/raw round at a million (each is a full export); medians of 3 below
                ["--scale", str(scale), "--rounds", "1" if scale >= 500_000 else "3"],
            ),
            ("Audit verification", "bench.verify", ["--entries", str(scale)]),
        )
        for db in dbs
    ]
    return [
        (
            "Ingest (`cdp import` and API)",
            # the plain baseline serves the SQLite target (encrypted >= 0.5x plain); at a
            # million it is measured there only, to keep the run within the hour
            ["bench.ingest", "--scale", str(scale), *db_args]
            + (["--plain-db", "sqlite"] if scale >= 500_000 else []),
        ),
        *per_db,
        ("CPU per request, one client", ["bench.requests", *db_args]),
        (
            "API under 100 concurrent clients",
            ["bench.api", "--scale", str(min(scale, 100_000)), *db_args],
        ),
        ("Opt-out to webhook delivery lag", ["bench.webhooks", *db_args]),
        ("Opt-out latency under load", ["bench.optout_latency", *db_args]),
        # every request on a base of 10,000 and one of `scale`: its ratio, its reads' work
        ("Requests at scale", ["bench.scale", "--scale", str(scale), *db_args]),
        ("Probabilistic matching on FEBRL", ["bench.febrl"]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description="Run all benchmarks, write bench/RESULTS.md")
    ap.add_argument("--scale", type=int, default=1_000_000)
    ap.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--only", action="append", help="run only these modules (e.g. bench.api)")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args()
    dbs = args.db or ["sqlite", "postgres"]
    command = "python -m bench " + " ".join(sys.argv[1:])
    parts = [
        "# Benchmark results\n",
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {machine()}",
        f"- command: `{command.strip()}`\n",
    ]
    for title, argv in suites(args.scale, dbs):
        if args.only and argv[0] not in args.only:
            continue
        if not (HERE / (argv[0].split(".")[1] + ".py")).exists():
            continue
        print(f"== {title}: {' '.join(argv)}", flush=True)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True)
        table = [
            ln
            for ln in proc.stdout.splitlines()
            if ln.strip() and "[info" not in ln and "[warning" not in ln
        ]
        print("\n".join(table), flush=True)
        parts.append(
            f"## {title}\n\n`python -m {' '.join(argv)}` ({time.perf_counter() - t:,.0f} s)\n"
        )
        parts.append(
            "\n".join(table)
            if proc.returncode == 0
            else f"FAILED (exit {proc.returncode}):\n```\n{proc.stderr[-3000:]}\n```"
        )
        parts.append("")
        args.out.write_text("\n".join(parts) + "\n", encoding="utf-8")  # progress survives
    args.out.write_text("\n".join(parts) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
