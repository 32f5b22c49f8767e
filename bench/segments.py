"""Segment benchmark: time to first page, export rows/s, the ratio to a raw select of the same
rows with the same decryption (measured in the same run), and peak memory of the export.

    python -m bench.segments --scale 100000 --db sqlite|postgres [--consent-valid-days N]

`--consent-valid-days N` runs it with a consent validity period on marketing in every
jurisdiction (docs/features.md, "Consent"): 1825 lapses none of the generated grants (the
cost of the rule's added comparison alone), 365 about two thirds (the oldest customers').

Data. N profiles are written straight into the tables in bulk, with real per-profile data keys
(wrapped by the master key), real AES-GCM field encryption and real blind indexes; consent state
and suppressions are written as rows of `consent_state` / `suppressions` (the ledger is not
read by segments, so it is not generated). Shape: 90% RU, 5% EU, 5% US; one email each, 20% a
second one; marketing email granted on 65% of primary and 50% of second emails, withdrawn on
5%, 3% of emails suppressed after their grant; 60% have order stats; trait `bucket` = i % 100.
Profiles are created over the last 1,000 days in id order, as a real store's are (until
2026-11-22 their creation dates were random, which made the status index's order random
against the table's, and SQLite's segment stats about twice as slow as on real data).

Measured:
  first page  `segment_members` (load segment, query, decrypt, tokens, access log), limit 100,
              on a fresh platform (the first call unwraps 100 data keys)
  export      `export_chunks` NDJSON over the whole segment (pages of 2000), rows/s
  recorded    the same export as the API runs it (`service.start_export`): access-logged and on
              record, each page's members written (one row per page) before it is sent
  raw         the same (profile, address) rows selected by primary keys from a helper table,
              keyset pages of the same size, with the same `ciphers` call and decryption
  query only  the export's pages selected (members SQL with the wrapped data keys) but not
              unwrapped, decrypted, signed or encoded: the ceiling the database sets for the
              export (until 2026-12-04 it included unwrapping the keys)
  no database the export's Python work alone (key unwrap, decryption, token, NDJSON) on rows
              fetched beforehand: the ceiling one core sets, whatever the database
  export and raw alternate, each on a fresh platform (every data key is unwrapped, as in a new
  process; an export reads each member once and does not fill the key ring's cache, so until
  2026-12-04 a second "warm keys" line measured a cache that, at 1,000,000 profiles, the scan
  had already churned)
  memory      tracemalloc peak of exports of 10%, 50% and 100% segments, untimed (an export
              leaves the key ring's cache as it was, so nothing it caches is counted)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Column, LargeBinary, MetaData, Table, Uuid, insert, select, text

from bench.common import peak_rss_mb, scratch_platform
from cdp.apikeys import Principal
from cdp.db.tables import identities, profile_keys, profile_stats, profiles
from cdp.ids import new_id
from cdp.platform import Platform, open_platform
from cdp.segments import service
from cdp.segments.audience import Audience, members_query
from cdp.segments.conditions import compile_condition
from cdp.segments.export import EXPORT_PAGE, export_chunks, ndjson_chunk
from cdp.segments.members import Definition, render, select_rows
from cdp.segments.pages import range_rows
from cdp.settings import DEFAULT_POLICY_DIR
from consent.tables import consent_state, suppressions

FIRST = ["Анна", "Мария", "Иван", "Дмитрий", "James", "Emma", "Olivia", "Noah"]
CITIES = ["Moscow", "Kazan", "Saint Petersburg", "Berlin", "Los Angeles"]
EVERYONE: dict[str, Any] = {"all": []}
TENTH: dict[str, Any] = {"field": "traits.bucket", "op": "lt", "value": 10}
HALF: dict[str, Any] = {"field": "traits.bucket", "op": "lt", "value": 50}
WHO = Principal("bench", "marketing")
CHUNK = 10_000

bench_rows = Table(  # the helper table of the raw baseline, outside the app's metadata
    "bench_rows",
    MetaData(),
    Column("profile_id", Uuid, primary_key=True),
    Column("bidx", LargeBinary, nullable=False),
)


# data ----------------------------------------------------------------------------------------
def _rows(
    p: Platform, start: int, stop: int, total: int, rng: random.Random, now: datetime
) -> dict:
    out: dict[str, list[dict]] = {
        "keys": [],
        "profiles": [],
        "ids": [],
        "cs": [],
        "sup": [],
        "stats": [],
    }
    idx = p.keys.indexer
    for i in range(start, stop):
        pid = new_id()
        cipher, key_row = p.keys.new_profile_key(pid)
        out["keys"].append(key_row)
        r = rng.random()
        j, country = ("RU", "RU") if r < 0.9 else ("EU", "DE") if r < 0.95 else ("US", "US")
        # profiles are created in id order (a real store mints each id as it stores the
        # profile), spread over the last 1,000 days
        created = now - timedelta(days=1000 * (total - i) / total)
        out["profiles"].append(
            {
                "id": pid,
                "status": "active",
                "merged_into": None,
                "jurisdiction": j,
                "country": country,
                "city": rng.choice(CITIES),
                "traits": {"bucket": i % 100, "tier": rng.choice(["bronze", "silver", "gold"])},
                "key_id": cipher.key_id,
                "first_name": cipher.encrypt("profiles.first_name", rng.choice(FIRST)),
                "last_name": None,
                "birth_date": None,
                "postal_address": None,
                "postcode": None,
                "created_at": created,
                "updated_at": created,
            }
        )
        for n, grant_share in ((0, 0.65), (1, 0.5)):
            if n == 1 and rng.random() >= 0.2:
                break
            email = f"u{i}.{n}@example.com"
            bidx = idx.email(email)
            since = created + timedelta(minutes=rng.randrange(100_000))
            g = rng.random()
            status = (
                "granted" if g < grant_share else "withdrawn" if g < grant_share + 0.05 else None
            )
            out["ids"].append(
                {
                    "id": new_id(),
                    "profile_id": pid,
                    "kind": "email",
                    "bidx": bidx,
                    "value": cipher.encrypt("identities.value", email),
                    "source": "crm",
                    "created_at": created,
                    "last_seen_at": created,
                    "confirmed_at": since if status == "granted" else None,
                }
            )
            if status:
                out["cs"].append(
                    {
                        "subject": bidx,
                        "purpose": "marketing",
                        "channel": "email",
                        "profile_id": pid,
                        "status": status,
                        "since": since,
                        "seq": 0,
                        "source": "bench",
                    }
                )
            if rng.random() < 0.03:
                at = since + timedelta(minutes=1)
                out["sup"].append(
                    {
                        "bidx": bidx,
                        "purpose": "marketing",
                        "channel": "*",
                        "reason": "opt_out",
                        "source": "bench",
                        "at": at,
                        "created_at": at,
                    }
                )
        if rng.random() < 0.6:
            last = now - timedelta(days=rng.randrange(400))
            out["stats"].append(
                {
                    "profile_id": pid,
                    "orders_count": rng.randrange(1, 20),
                    "total_spent": rng.randrange(100, 100_000),
                    "first_order_at": last,
                    "last_order_at": last,
                }
            )
    return out


async def generate(p: Platform, n: int, seed: int = 7) -> float:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    tables = {
        "keys": profile_keys,
        "profiles": profiles,
        "ids": identities,
        "cs": consent_state,
        "sup": suppressions,
        "stats": profile_stats,
    }
    for start in range(0, n, CHUNK):
        rows = _rows(p, start, min(n, start + CHUNK), n, rng, now)
        await p.keys.store_shares([(k["profile_id"], k.pop("share")) for k in rows["keys"]])
        async with p.db.write() as conn:
            for name, table in tables.items():
                if rows[name]:
                    await conn.execute(insert(table), rows[name])
    async with p.db.engine.connect() as conn:
        await conn.execute(text("ANALYZE"))
        await conn.commit()
    return time.perf_counter() - t0


async def fill_baseline_rows(p: Platform, d: Definition) -> int:
    """The member rows' (profile, address) keys, selected by the segment SQL itself."""
    async with p.db.engine.begin() as conn:
        await conn.run_sync(bench_rows.metadata.create_all)
    dialect = p.db.engine.dialect.name
    audience = Audience(p.policy, d.purpose, d.channel, dialect, d.automated)
    now = datetime.now(UTC)
    compiled = compile_condition(d.condition, dialect, now, audience.scope)
    after, total = None, 0
    while True:
        async with p.db.write() as conn:
            query = members_query(audience, compiled, after=after, limit=CHUNK)
            rows = (await conn.execute(query, audience.params(now))).all()
            if rows:
                await conn.execute(
                    insert(bench_rows), [{"profile_id": r[0], "bidx": r[2]} for r in rows]
                )
        total += len(rows)
        if len(rows) < CHUNK:
            break
        after = rows[-1][0]
    async with p.db.engine.connect() as conn:
        await conn.execute(text("ANALYZE"))
        await conn.commit()
    return total


# measurements ----------------------------------------------------------------------------------
async def fresh(p: Platform) -> Platform:
    """A new platform on the same database: an empty data-key cache, as in a new process."""
    return await open_platform(p.settings, run_migrations=False)


async def first_page_ms(q: Platform, segment_id: str, repeat: int = 7) -> list[float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        page = await service.segment_members(q, WHO, segment_id, limit=100, cursor=None)
        times.append((time.perf_counter() - t) * 1000)
        assert len(page.items) == 100
    return times


async def export_run(q: Platform, d: Definition) -> tuple[int, int, float]:
    rows, size = 0, 0

    def counted(k: int) -> None:
        nonlocal rows
        rows += k

    t = time.perf_counter()
    async for chunk in export_chunks(q, d, "ndjson", counted=counted):
        size += len(chunk)
    return rows, size, time.perf_counter() - t


async def recorded_run(q: Platform, segment_id: str) -> tuple[int, float]:
    t = time.perf_counter()
    started = await service.start_export(q, WHO, segment_id, "ndjson")
    rows = 0
    async for chunk in started.chunks:
        rows += chunk.count(b"\n")
    return rows, time.perf_counter() - t


async def query_run(q: Platform, d: Definition) -> tuple[int, float]:
    """The export's range queries alone (`range_rows`, one range ahead, nothing rendered)."""
    t = time.perf_counter()
    rows = 0
    async for got in range_rows(q, d, page_size=EXPORT_PAGE, ahead=1):
        rows += len(got.rows)
    return rows, time.perf_counter() - t


async def raw_run(q: Platform) -> tuple[int, float]:
    """Raw select of the same rows, same page size, same `ciphers` call and decryption."""
    b = bench_rows.c
    t = time.perf_counter()
    after, rows = None, 0
    while True:
        query = (
            select(profiles.c.id, profiles.c.first_name, identities.c.value)
            .select_from(
                bench_rows.join(profiles, profiles.c.id == b.profile_id).join(
                    identities, identities.c.bidx == b.bidx
                )
            )
            .order_by(b.profile_id)
            .limit(EXPORT_PAGE)
        )
        if after is not None:
            query = query.where(b.profile_id > after)
        async with q.db.read() as conn:
            page = (await conn.execute(query)).all()
            ciphers = await q.keys.ciphers(conn, [r[0] for r in page])
        out = []
        for pid, first_name, value in page:
            c = ciphers[pid]
            out.append(
                (
                    str(pid),
                    c.decrypt("identities.value", value),
                    c.decrypt("profiles.first_name", first_name),
                )
            )
        rows += len(out)
        if len(page) < EXPORT_PAGE:
            return rows, time.perf_counter() - t
        after = page[-1][0]


async def python_only_rate(p: Platform, d: Definition, wanted: int = 20_000) -> tuple[int, float]:
    """The export's own Python work with no database: rows of the segment fetched beforehand,
    then timed: unwrap each data key (cold), decrypt, sign the token, encode NDJSON. What one
    core can do at best, whatever the database."""
    q = await fresh(p)
    try:
        pages, after, n = [], None, 0
        while n < wanted:
            async with q.db.read() as conn:
                got = await select_rows(conn, q, d, after=after, limit=EXPORT_PAGE, now=None)
            pages.append(got)
            n += len(got.rows)
            if got.next_after is None:
                break
            after = got.next_after
        best = float("inf")
        for _ in range(3):
            for got in pages:
                for r in got.rows:
                    q.keys.forget(r[0])
            t = time.perf_counter()
            for got in pages:
                ndjson_chunk(render(q, d, got).items)
            best = min(best, time.perf_counter() - t)
        return n, n / best
    finally:
        await q.close()


async def traced_peak_mb(q: Platform, d: Definition) -> tuple[int, float]:
    rows = 0

    def counted(k: int) -> None:
        nonlocal rows
        rows += k

    tracemalloc.start()
    async for _chunk in export_chunks(q, d, "ndjson", counted=counted):
        pass
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return rows, peak / 2**20


async def compare(p: Platform, d: Definition, segment_id: str, expected: int, rounds: int) -> None:
    """Export, recorded export, raw and query alone, alternating, `rounds` times, each on a
    fresh platform."""
    export_rates, recorded_rates, raw_rates, query_rates = [], [], [], []
    for _ in range(rounds):
        for kind in ("export", "recorded", "raw", "query"):
            r = await fresh(p)
            try:
                if kind == "export":
                    rows, _, secs = await export_run(r, d)
                    export_rates.append(rows / secs)
                elif kind == "recorded":
                    rows, secs = await recorded_run(r, segment_id)
                    recorded_rates.append(rows / secs)
                elif kind == "raw":
                    rows, secs = await raw_run(r)
                    raw_rates.append(rows / secs)
                else:
                    rows, secs = await query_run(r, d)
                    query_rates.append(rows / secs)
                assert rows == expected, (kind, rows, expected)
            finally:
                await r.close()
    ex, raw = statistics.median(export_rates), statistics.median(raw_rates)
    rec, qo = statistics.median(recorded_rates), statistics.median(query_rates)
    print(
        f"  cold keys: export {ex:,.0f} rows/s, raw select + same decryption {raw:,.0f} rows/s,"
        f" ratio {ex / raw:.2f}x; recorded export {rec:,.0f} rows/s ({rec / ex:.2f}x export,"
        f" {rec / raw:.2f}x raw); query only {qo:,.0f} rows/s (export {ex / qo:.2f}x of it)"
        f"  (medians of {rounds})"
    )


def policies_with_validity(days: int) -> Path:
    """A copy of the shipped policies with `[purposes.marketing] consent_valid_days = days`
    in every jurisdiction file (where marketing is opt-in, as shipped)."""
    target = Path(tempfile.mkdtemp(prefix="cdp-bench-policies-")) / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, target)
    for path in sorted((target / "jurisdictions").glob("*.toml")):
        with path.open("a", encoding="utf-8") as f:
            f.write(f"\n[purposes.marketing]\nconsent_valid_days = {days}\n")
    return target


async def main(
    scale: int, db: str, rounds: int, memory: bool = True, valid_days: int | None = None
) -> None:
    policy_dir = None if valid_days is None else policies_with_validity(valid_days)
    async with scratch_platform(db, policy_dir=policy_dir) as p:
        period = "" if valid_days is None else f", marketing consent valid {valid_days} days"
        print(f"segments benchmark: {scale:,} profiles on {db}{period}")
        gen = await generate(p, scale)
        print(f"  generated in {gen:.1f} s ({scale / gen:,.0f} profiles/s, encryption included)")
        # as `cdp import` and `cdp serve` do: plan on the tables' real sizes (this benchmark's
        # PostgreSQL server runs without autovacuum, so nothing else would)
        await p.db.refresh_statistics()
        seg = await service.create_segment(
            p, WHO, name="everyone", purpose="marketing", channel="email", rules=EVERYONE
        )
        d = service.build_definition(p, "marketing", "email", EVERYONE)
        t = time.perf_counter()
        stats = await service.segment_stats(p, seg.id)
        stats_ms = (time.perf_counter() - t) * 1000
        excluded = {k: v for k, v in stats.excluded.items() if v}
        print(
            f"  segment: matched {stats.matched:,}, contactable {stats.contactable:,}, "
            f"excluded {excluded}; stats took {stats_ms:.0f} ms"
        )
        expected = await fill_baseline_rows(p, d)
        assert expected == stats.contactable, (expected, stats.contactable)

        q = await fresh(p)
        try:
            times = await first_page_ms(q, seg.id)
        finally:
            await q.close()
        print(
            f"  first page (100 members, access-logged): cold {times[0]:.1f} ms, "
            f"then median {statistics.median(times[1:]):.1f} ms, worst {max(times):.1f} ms"
        )
        await compare(p, d, seg.id, expected, rounds)
        n, rate = await python_only_rate(p, d)
        print(
            f"  no database: the export's Python work alone on {n:,} fetched rows (data key"
            f" unwrap, 2 decryptions, token, NDJSON) {rate:,.0f} rows/s on one core"
        )

        q = await fresh(p)
        try:
            sizes = [
                ("10% segment", service.build_definition(p, "marketing", "email", TENTH)),
                ("50% segment", service.build_definition(p, "marketing", "email", HALF)),
                ("100% segment", d),
            ]
            for label, definition in sizes if memory else []:
                n, peak = await traced_peak_mb(q, definition)
                print(f"  export of the {label} ({n:,} rows): peak traced memory {peak:.1f} MiB")
        finally:
            await q.close()
        print(f"  process peak RSS: {peak_rss_mb():.0f} MiB")


def cli() -> None:
    parser = argparse.ArgumentParser(
        description="Segment benchmark: first page, export rows/s vs a raw select, peak memory."
    )
    parser.add_argument("--scale", type=int, default=100_000, help="profiles to generate")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=3, help="export/raw runs (medians)")
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the traced-memory exports (tracemalloc makes them several times slower)",
    )
    parser.add_argument(
        "--consent-valid-days",
        type=int,
        default=None,
        help="set [purposes.marketing] consent_valid_days in every jurisdiction (grants are "
        "spread over the last 1,000 days: 365 lapses about two thirds of them)",
    )
    args = parser.parse_args()
    asyncio.run(
        main(
            args.scale,
            args.db,
            args.rounds,
            memory=not args.no_memory,
            valid_days=args.consent_valid_days,
        )
    )


if __name__ == "__main__":
    cli()
