"""CPU per API request, one client at a time, in process (the ASGI app, no network).

What one request costs the server alone: the floor of its latency, and under load the ceiling
of its throughput (bench.api measures that). Each endpoint's figure stands next to the same
process's cost of `GET /health/live`, the cheapest request the app answers, measured in the
same run; and next to the number of SQL statements it ran on the main database.

    python -m bench.requests --db sqlite --db postgres
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
from sqlalchemy import event

from api.app import create_app
from bench.common import scratch_platform
from cdp.apikeys import create_key

_GRANT = {
    "purpose": "marketing",
    "channel": "email",
    "status": "granted",
    "evidence": {"wording_id": "newsletter-v3", "method": "checkbox"},
}


def _customer(i: int) -> dict:
    return {
        "source": "crm",
        "email": f"c{i}@mail.example",
        "phone": f"+7916{i:07d}",
        "first_name": "Анна",
        "city": "Moscow",
        "consents": [_GRANT],
    }


async def run(db: str, customers: int, requests: int) -> list[str]:
    lines = []
    async with scratch_platform(db) as p:
        key = await create_key(p.db, "bench", "admin")
        h = {"Authorization": f"Bearer {key}"}
        statements = [0]

        @event.listens_for(p.db.engine.sync_engine, "before_cursor_execute")
        def _count(*_args) -> None:  # type: ignore[no-untyped-def]
            statements[0] += 1

        transport = httpx.ASGITransport(app=create_app(platform=p))
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as c:
            for start in range(0, customers, 500):
                batch = [_customer(i) for i in range(start, min(customers, start + 500))]
                r = await c.post("/v1/profiles/batch", json={"records": batch}, headers=h)
                r.raise_for_status()
            rules = {"all": [{"field": "city", "op": "eq", "value": "Moscow"}]}
            r = await c.post(
                "/v1/segments",
                json={"name": "all", "purpose": "marketing", "channel": "email", "rules": rules},
                headers=h,
            )
            r.raise_for_status()
            segment = r.json()["id"]
            r = await c.get("/v1/profiles", params={"email": "c1@mail.example"}, headers=h)
            r.raise_for_status()
            pid = r.json()["profile_id"]
            n = min(requests, customers // 4)  # each request below names another customer
            cases: list[tuple[str, Callable[[int], Awaitable[httpx.Response]]]] = [
                ("GET /health/live", lambda i: c.get("/health/live")),
                (
                    "POST /v1/profiles (new customer)",
                    lambda i: c.post(
                        "/v1/profiles",
                        json={"source": "shop", "email": f"new{i}@mail.example"},
                        headers=h,
                    ),
                ),
                (
                    "POST /v1/profiles (known customer)",
                    lambda i: c.post(
                        "/v1/profiles",
                        json={"source": "shop", "email": f"c{i}@mail.example", "last_name": "П"},
                        headers=h,
                    ),
                ),
                ("GET /v1/profiles/{id}", lambda i: c.get(f"/v1/profiles/{pid}", headers=h)),
                (
                    "POST /v1/events (purchase)",
                    lambda i: c.post(
                        "/v1/events",
                        json={
                            "source": "shop",
                            "event_id": f"order-{i}",
                            "type": "purchase",
                            "occurred_at": "2026-11-01T12:00:00Z",
                            "email": f"c{n + i}@mail.example",
                            "amount": "4500.00",
                            "currency": "RUB",
                            "category": "shoes",
                        },
                        headers=h,
                    ),
                ),
                (
                    "POST /v1/consents (grant)",
                    lambda i: c.post(
                        "/v1/consents",
                        json={"email": f"c{2 * n + i}@mail.example", "source": "web", **_GRANT},
                        headers=h,
                    ),
                ),
                (
                    "POST /v1/opt-outs",
                    lambda i: c.post(
                        "/v1/opt-outs",
                        json={"email": f"c{3 * n + i}@mail.example", "source": "api"},
                        headers=h,
                    ),
                ),
                (
                    "GET /v1/segments/{id}/members (100)",
                    lambda i: c.get(
                        f"/v1/segments/{segment}/members", params={"limit": 100}, headers=h
                    ),
                ),
            ]
            baseline = None
            for name, send in cases:
                (await send(n)).raise_for_status()  # warm: compiled statements, caches
                statements[0] = 0
                cpu = time.process_time()
                for i in range(n):
                    (await send(i)).raise_for_status()
                per = (time.process_time() - cpu) / n * 1000
                baseline = baseline or per
                lines.append(
                    f"| {db} | {name} | {per:.2f} | {statements[0] / n:.1f} | "
                    f"{per / baseline:.1f}x |"
                )
                print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--customers", type=int, default=4000)
    ap.add_argument("--requests", type=int, default=300, help="of each endpoint")
    args = ap.parse_args()
    print("| db | request | ms of CPU a request | SQL statements | vs GET /health/live |")
    print("|---|---|---|---|---|")
    for db in args.db or ["sqlite"]:
        asyncio.run(run(db, args.customers, args.requests))


if __name__ == "__main__":
    main()
