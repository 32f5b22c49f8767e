"""Events import benchmark: `cdp events import` of an order history, against baselines.

    python -m bench.events --orders 100000 --db sqlite --db postgres

Figures, all measured in this one process, on a new database per figure:
- import: `cdp events import` (checks, identity resolution with new customers created, sealed
  event ids, stats) of `--orders` purchases by a quarter as many customers, in rows/s;
- again: the same file a second time (every event recognised, nothing stored);
- one by one: the first `--single` rows stored each in its own transaction through
  `POST /v1/events`'s function (`record_event`), what the import did before batching;
- raw: the CSV rows inserted as they are with executemany (the database's own ceiling).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import random
import tempfile
import time
from pathlib import Path

import msgspec

from bench.common import peak_rss_mb, raw_csv_insert, scratch_platform
from cdp.events import record_event
from cdp.events_import import run_event_import
from cdp.profiles.schemas import EventIn

HEADER = ["event_id", "type", "occurred_at", "email", "amount", "currency", "category"]
CATEGORIES = ["shoes", "bags", "hats", "coats", "toys", "books", "garden", "sport"]


def write_orders(path: Path, orders: int, seed: int = 7) -> Path:
    rng = random.Random(seed)
    customers = max(1, orders // 4)
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        for i in range(orders):
            day = f"2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d}T10:00:00Z"
            w.writerow(
                [
                    f"o-{i}",
                    "purchase",
                    day,
                    f"customer{rng.randrange(customers)}@example.com",
                    f"{rng.randint(100, 9_999_999) / 100:.2f}",
                    "RUB",
                    rng.choice(CATEGORIES),
                ]
            )
    return path


async def one_by_one(p, path: Path, n: int) -> float:  # type: ignore[no-untyped-def]
    with path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[:n]
    t = time.perf_counter()
    for row in rows:
        body = msgspec.convert({**row, "source": "shop"}, EventIn, strict=False)
        await record_event(p, body, "bench")
    return time.perf_counter() - t


async def run(orders: int, single: int, dbs: list[str]) -> list[str]:
    tmp = Path(tempfile.mkdtemp(prefix="cdp-events-"))
    path = write_orders(tmp / "orders.csv", orders)
    lines = []
    for db in dbs:
        async with scratch_platform(db) as p:
            t = time.perf_counter()
            first = await run_event_import(p, path, "shop", rejects_path=tmp / "rej.csv")
            imported = first.recorded / (time.perf_counter() - t)
            t = time.perf_counter()
            again = await run_event_import(p, path, "shop", rejects_path=tmp / "rej.csv")
            repeated = again.repeated / (time.perf_counter() - t)
        async with scratch_platform(db) as p:
            n = min(single, orders)
            each = n / await one_by_one(p, path, n)
        async with scratch_platform(db) as p:
            raw = orders / await raw_csv_insert(p, path, "raw_orders")
        lines.append(
            f"| {db} | {orders:,} | {imported:,.0f} | {repeated:,.0f} | {each:,.0f} | "
            f"{imported / each:.1f}x | {raw:,.0f} | {imported / raw:.3f}x | "
            f"{peak_rss_mb():,.0f} MB |"
        )
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=100_000)
    ap.add_argument("--single", type=int, default=3_000, help="rows stored one by one")
    ap.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    args = ap.parse_args()
    print(
        "| db | orders | import rows/s | same file again rows/s | one by one rows/s | "
        "import / one by one | raw executemany rows/s | ratio to raw | peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    asyncio.run(run(args.orders, args.single, args.db or ["sqlite"]))


if __name__ == "__main__":
    main()
