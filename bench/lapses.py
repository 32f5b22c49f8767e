"""Announcing consent lapses (consent.outbox.lapses): the burst when a period is first set, and
what a pass costs afterwards, against reading every grant.

    python -m bench.lapses --db sqlite --db postgres --grants 100000

Fills a scratch database with `--grants` RU customers, each with one marketing email grant,
their times spread evenly over the last ten years, then sets a five-year period on marketing:
the first pass announces the half that lapsed (the burst, `consent.outbox.lapses.BATCH` a
transaction), a pass a minute later the few that lapsed in that minute. The baseline is one
statement reading every granted row of the purpose (what a pass without a watermark would do,
at the least). It also prints the plan of the step that walks the grants by their time.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import Select, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement

from bench.common import scratch_platform
from cdp.db.bulk import bulk_insert
from cdp.db.partial import equals
from cdp.db.tables import identities, profiles
from cdp.platform import Platform
from consent.outbox.lapses import BATCH, START, Mark, announce_lapses, by_time, scopes
from consent.policy import JurisdictionPurpose
from consent.tables import consent_state

PERIOD = 1825
cs = consent_state.c


async def fill(p: Platform, n: int, now: datetime) -> None:
    """n active RU customers, each holding one email with a marketing grant."""
    span = timedelta(days=3650)
    for start in range(0, n, 5000):
        prof, ident, state = [], [], []
        for i in range(start, min(n, start + 5000)):
            pid, bidx = uuid.uuid4(), os.urandom(32)
            since = now - span + span * i / n
            prof.append(
                {
                    "id": pid,
                    "status": "active",
                    "jurisdiction": "RU",
                    "traits": {},
                    "key_id": 1,
                    "created_at": since,
                    "updated_at": since,
                }
            )
            ident.append(
                {
                    "id": uuid.uuid4(),
                    "profile_id": pid,
                    "kind": "email",
                    "bidx": bidx,
                    "value": b"x",
                    "source": "bench",
                    "created_at": since,
                    "last_seen_at": since,
                }
            )
            state.append(
                {
                    "subject": bidx,
                    "purpose": "marketing",
                    "channel": "email",
                    "profile_id": pid,
                    "status": "granted",
                    "since": since,
                    # one grant each (a grant is announced once, by its seq), none after the
                    # empty ledger's head (0): the by-time step reads rows set up to it
                    "seq": -1 - i,
                    "source": "bench",
                }
            )
        async with p.db.write() as conn:
            await bulk_insert(conn, profiles, prof)
            await bulk_insert(conn, identities, ident)
            await bulk_insert(conn, consent_state, state)
    await p.db.refresh_statistics()


def with_period(p: Platform) -> None:
    ru = p.policy.jurisdictions["RU"]
    setting = JurisdictionPurpose(consent_valid_days=PERIOD)
    ru = msgspec.structs.replace(ru, purposes={**ru.purposes, "marketing": setting})
    p.policy = dataclasses.replace(p.policy, jurisdictions={**p.policy.jurisdictions, "RU": ru})


class Explain(Executable, ClauseElement):
    """`EXPLAIN <statement>` with the statement's own parameters (PostgreSQL; SQLite: its
    QUERY PLAN)."""

    inherit_cache = False

    def __init__(self, statement: Select) -> None:
        self.statement = statement


@compiles(Explain)
def _explain(element: Explain, compiler: Any, **kw: Any) -> str:
    prefix = "EXPLAIN QUERY PLAN " if compiler.dialect.name == "sqlite" else "EXPLAIN "
    # the plan's rows are not the statement's: without its result columns (SQLite's four plan
    # columns were read positionally as the statement's four, a time among them)
    with compiler._nested_result():
        return prefix + compiler.process(element.statement, **kw)


async def plan(p: Platform, now: datetime) -> str:
    """The plan of the by-time step's statement, at the burst's first step."""
    scope = scopes(p.policy, now)[0]
    async with p.db.read() as conn:
        rows = await conn.execute(Explain(by_time(scope, Mark(0, START), BATCH)))
        return "\n".join(" ".join(str(c) for c in r) for r in rows)


async def run(db: str, n: int) -> None:
    now = datetime.now(UTC)
    async with scratch_platform(db) as p:
        await fill(p, n, now)
        with_period(p)
        t = time.perf_counter()
        burst = await announce_lapses(p, now=now)
        burst_s = time.perf_counter() - t
        t = time.perf_counter()
        later = await announce_lapses(p, now=now + timedelta(minutes=1))
        pass_s = time.perf_counter() - t
        t = time.perf_counter()
        async with p.db.read() as conn:
            await conn.execute(
                select(func.count()).where(
                    cs.purpose == "marketing", equals(cs.status, "granted"), cs.seq <= 0
                )
            )
        scan_s = time.perf_counter() - t
        print(f"{db}: {n} grants, period {PERIOD} days")
        print(f"  burst: {burst} lapses announced in {burst_s:.2f} s ({burst / burst_s:.0f}/s)")
        print(f"  a minute later: {later} announced in {pass_s * 1000:.1f} ms")
        print(
            f"  baseline, one read of every grant: {scan_s * 1000:.1f} ms "
            f"(the pass took {pass_s / scan_s:.2f}x of it)"
        )
        print("  plan of the by-time step:\n    " + (await plan(p, now)).replace("\n", "\n    "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--grants", type=int, default=100_000)
    args = parser.parse_args()
    for db in args.db or ["sqlite"]:
        asyncio.run(run(db, args.grants))


if __name__ == "__main__":
    main()
