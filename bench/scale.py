"""Scale review: how every request that names one customer, one id or one page behaves as the
base grows. Each request is timed on a small base and on a large one in the same run; the
ratio large/small should stay near 1. The statements each request runs (SQLAlchemy's
before_cursor_execute) are EXPLAINed on the large base (EXPLAIN ANALYZE on PostgreSQL, EXPLAIN
QUERY PLAN on SQLite), and a scan of a whole big table is listed next to the request.

    python -m bench.scale --scale 1000000 --small 10000 --db postgres
    python -m bench.scale --scale 300000 --db sqlite --workdir /tmp/scale   # keep the bases

Data. Profiles, identities, consent state, suppressions, order stats and data keys as in
bench.segments (real encryption and blind indexes); then, in proportion to the base, rows
written in bulk into the other tables: one consent-ledger entry and one event per profile, an
access-log entry per 10 profiles, a merge and a match suggestion per 100, a DSR request (two
transitions) and a merge review per 1,000, an outbox event and a delivery to each of three
webhook subscriptions per 10 profiles (one attempt each). The ledger's and the DSR chain's
hashes are not real (`/v1/audit/verify` is measured by bench.verify, not here). Last, a few
customers are created through the API (consents, events, a merge, an opt-out, an erasure
request, a webhook, a segment): the requests below name them.

With --workdir a base built once is kept (SQLite files, or PostgreSQL databases named in
DIR/state-<db>-<n>.json) and reused by later runs; `--drop` removes them.

Not here: the import, the segment export and audit verification (bench.ingest, bench.segments,
bench.verify), whose work is the whole base by definition; `GET /v1/segments/{id}/stats`,
`/members` and `/export` are listed for completeness (a segment of everyone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from sqlalchemy import event, func, insert, select, text

from api.app import create_app
from bench.common import PG_ADMIN
from bench.segments import generate
from cdp.apikeys import create_key
from cdp.crypto.master import MasterKey
from cdp.db.tables import access_log, events, merges, profiles, segment_exports
from cdp.event_ids import plain_ids_left
from cdp.keyring import whole_keys_left
from cdp.matching.tables import match_suggestions, merge_reviews
from cdp.platform import Platform, open_platform
from cdp.settings import DEFAULT_POLICY_DIR, Settings
from consent.audit.paging import encode_cursor
from consent.dsr import worker as dsr_worker
from consent.dsr_tables import dsr_requests, dsr_transitions
from consent.outbox import delivery, dispatcher, fanout
from consent.outbox.config import DispatchConfig
from consent.outbox.tables import (
    outbox_events,
    webhook_attempts,
    webhook_deliveries,
    webhook_subscriptions,
)
from consent.tables import address_erasures, consent_ledger, consent_state

CHUNK = 20_000
BIG = 5_000  # a scan of a table with more rows than this, at the large base, is reported
METRICS_TOKEN = "scale-metrics-token-0123456789abcdef"


# the base ---------------------------------------------------------------------------------------
@dataclass
class Base:
    db: str
    n: int
    url: str
    master_key: str
    key_dir: str
    ids: dict[str, str] = field(default_factory=dict)  # names the requests use

    def settings(self) -> Settings:
        return Settings(
            database_url=self.url,
            master_key=self.master_key,
            dev_key_dir=Path(self.key_dir),
            policy_dir=DEFAULT_POLICY_DIR,
            metrics_token=METRICS_TOKEN,
        )


def _pg_name(n: int, tag: str) -> str:
    return f"cdp_scale_{n}_{tag}"


async def _pg_admin(sql: str) -> None:
    import asyncpg

    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


async def drop_base(b: Base) -> None:
    if b.db == "postgres":
        name = b.url.rsplit("/", 1)[1]
        for db in (name, f"{name}_keys"):
            await _pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    else:
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(b.url.split("///", 1)[1] + suffix)


async def _ids(p: Platform) -> list[uuid.UUID]:
    async with p.db.engine.connect() as conn:
        return list((await conn.execute(select(profiles.c.id))).scalars())


def _chunks(rows: list[dict]) -> list[list[dict]]:
    return [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]


async def _bulk(p: Platform, table: Any, rows: list[dict]) -> None:
    for part in _chunks(rows):
        async with p.db.write() as conn:
            await conn.execute(insert(table), part)


async def fill_secondary(p: Platform, n: int, seed: int = 11) -> str:
    """The other tables, in proportion to the base (see the module's docstring); the id of a
    webhook subscription with deliveries."""
    rng = random.Random(seed)
    pids = await _ids(p)
    now = datetime.now(UTC)
    ago = [now - timedelta(minutes=rng.randrange(600_000)) for _ in range(1000)]

    def when() -> datetime:
        return rng.choice(ago)

    ledger = []
    async with p.db.engine.connect() as conn:
        subjects = (
            await conn.execute(select(consent_state.c.subject, consent_state.c.profile_id))
        ).all()
    for seq, (subject, pid) in enumerate(subjects[:n], start=1):
        at = when()
        ledger.append(
            {
                "seq": seq,
                "event_id": uuid.uuid4(),
                "profile_id": pid,
                "subject_kind": "email",
                "address_bidx": bytes(subject)[:32],
                "purpose": "marketing",
                "channel": "email",
                "status": "granted",
                "occurred_at": at,
                "recorded_at": at,
                "source": "bench",
                "actor": "bench",
                "method": "checkbox",
                "wording_id": "newsletter-v3",
                "policy_version": "bench",
                "effective": True,
                "prev_hash": b"\0" * 32,
                "hash": rng.randbytes(32),
                "via_profile": False,
            }
        )
    await _bulk(p, consent_ledger, ledger)
    del ledger
    await _bulk(
        p,
        events,
        [
            {
                "id": uuid.uuid4(),
                "profile_id": pid,
                "source": "shop",
                "event_key": rng.randbytes(32),
                "type": "purchase",
                "occurred_at": when(),
                "recorded_at": now,
                "amount": rng.randrange(100, 10_000),
                "currency": "RUB",
                "category": rng.choice(["shoes", "bags", "books"]),
            }
            for pid in pids
        ],
    )
    await _bulk(
        p,
        access_log,
        [
            {
                "id": uuid.uuid4(),
                "at": when(),
                "actor": rng.choice(["crm-key", "officer", "bench"]),
                "role": "compliance",
                "action": "profile.read",
                "object_type": "profile",
                "object_id": str(pid),
                "profile_id": pid,
                "rows": 1,
            }
            for pid in pids[::10]
        ],
    )
    await _bulk(
        p,
        merges,
        [
            {
                "id": uuid.uuid4(),
                "survivor_id": a,
                "absorbed_id": b,
                "matched_on": ["email"],
                "provenance": "deterministic",
                "source": "crm",
                "actor": "bench",
                "at": when(),
            }
            for a, b in zip(pids[::100], pids[1::100], strict=False)
        ],
    )
    await _bulk(
        p,
        match_suggestions,
        [
            {
                "id": uuid.uuid4(),
                "profile_a": min(a, b),
                "profile_b": max(a, b),
                "score": rng.random(),
                "reasons": {"last_name": 1.0},
                "status": rng.choice(["open", "rejected", "accepted", "stale"]),
                "created_at": when(),
            }
            for a, b in zip(pids[2::100], pids[3::100], strict=False)
        ],
    )
    await _bulk(
        p,
        merge_reviews,
        [
            {
                "id": uuid.uuid4(),
                "status": rng.choice(["open", "rejected", "accepted"]),
                "reason": {"code": "conflicting_birth_date"},
                "profile_ids": [str(a), str(b)],
                "attached_to": a,
                "matched_on": ["phone"],
                "source": "crm",
                "actor": "bench",
                "created_at": when(),
            }
            for a, b in zip(pids[4::1000], pids[5::1000], strict=False)
        ],
    )
    requests, transitions = [], []
    for i, pid in enumerate(pids[6::1000]):
        rid, at = uuid.uuid4(), when()
        status = rng.choice(["completed", "completed", "rejected", "received"])
        requests.append(
            {
                "id": rid,
                "kind": "erasure",
                "status": status,
                "profile_id": pid,
                "identifier_kind": "email",
                "jurisdiction": "RU",
                "deadline_jurisdiction": "RU",
                "requested_by": "customer",
                "actor": "bench",
                "received_at": at,
                "due_at": at + timedelta(days=30),
                "extensions": 0,
                "completed_at": at if status == "completed" else None,
                "updated_at": at,
                "attempts": 0,
            }
        )
        for k, (ev, to) in enumerate((("created", "received"), ("status", status))):
            transitions.append(
                {
                    "id": uuid.uuid4(),
                    "request_id": rid,
                    "event": ev,
                    "to_status": to,
                    "at": at,
                    "actor": "bench",
                    "reason": "bench",
                    "due_at": at + timedelta(days=30),
                    "seq": 2 * i + k + 1,
                    "prev_hash": b"\0" * 32,
                    "hash": rng.randbytes(32),
                }
            )
    await _bulk(p, dsr_requests, requests)
    await _bulk(p, dsr_transitions, transitions)
    await _bulk(
        p,
        address_erasures,
        [{"bidx": rng.randbytes(32), "at": when()} for _ in range(max(1, n // 1000))],
    )
    subs = [uuid.uuid4() for _ in range(3)]
    secret = rng.randbytes(60)  # never decrypted: every delivery here has ended
    await _bulk(
        p,
        webhook_subscriptions,
        [
            {
                "id": s,
                "url": f"https://hooks{i}.example/cdp",
                "kinds": ["consent.withdrawn"],
                "include_address": False,
                "secret": secret,
                "created_at": now,
                "created_by": "bench",
            }
            for i, s in enumerate(subs)
        ],
    )
    outbox = []
    for pid in pids[7::10]:
        at = when()
        outbox.append(
            {
                "id": uuid.uuid4(),
                "kind": "consent.withdrawn",
                "order_key": pid.bytes,
                "profile_id": pid,
                "purpose": "marketing",
                "channel": "email",
                "source": "bench",
                "occurred_at": at,
                "recorded_at": at,
                "fanned_out": True,
                "streamed_at": at,
            }
        )
    await _bulk(p, outbox_events, outbox)
    async with p.db.engine.connect() as conn:
        seqs = (await conn.execute(select(outbox_events.c.seq, outbox_events.c.id))).all()
    deliveries, attempts = [], []
    for seq, eid in seqs:
        for s in subs:
            did, at = uuid.uuid4(), when()
            deliveries.append(
                {
                    "id": did,
                    "subscription_id": s,
                    "event_seq": seq,
                    "event_id": eid,
                    "order_key": b"k",
                    "status": "delivered" if rng.random() < 0.98 else "dead",
                    "attempts": 1,
                    "total_attempts": 1,
                    "replays": 0,
                    "next_attempt_at": at,
                    "created_at": at,
                    "delivered_at": at,
                }
            )
            attempts.append(
                {
                    "id": uuid.uuid4(),
                    "delivery_id": did,
                    "number": 1,
                    "at": at,
                    "status_code": 200,
                    "duration_ms": 30,
                }
            )
    await _bulk(p, webhook_deliveries, deliveries)
    await _bulk(p, webhook_attempts, attempts)
    await _bulk(
        p,
        segment_exports,
        [
            {
                "id": uuid.uuid4(),
                "segment_id": uuid.uuid4(),
                "actor": "bench",
                "role": "marketing",
                "purpose": "marketing",
                "channel": "email",
                "format": "ndjson",
                "started_at": when(),
                "finished_at": now,
                "rows": 1000,
            }
            for _ in range(max(1, n // 10_000))
        ],
    )
    return str(subs[0])


_GRANT = {
    "purpose": "marketing",
    "channel": "email",
    "status": "granted",
    "evidence": {"wording_id": "newsletter-v3", "method": "checkbox"},
}


async def activity(p: Platform) -> dict[str, str]:
    """A few customers and operations through the API; the ids the measured requests name."""
    ids: dict[str, str] = {}
    key = await create_key(p.db, "scale-admin", "admin")
    ids["admin_key"] = key
    ids["compliance_key"] = await create_key(p.db, "scale-officer", "compliance")
    h = {"Authorization": f"Bearer {key}"}
    transport = httpx.ASGITransport(app=create_app(platform=p))
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as c:

        async def call(method: str, path: str, body: Any = None) -> dict:
            r = await c.request(method, path, json=body, headers=h)
            assert r.status_code < 300, (method, path, r.status_code, r.text[:300])
            return r.json()

        for i in range(20):
            out = await call(
                "POST",
                "/v1/profiles",
                {
                    "source": "crm",
                    "external_id": f"S{i}",
                    "email": f"scale{i}@mail.example",
                    "phone": f"+7926{i:07d}",
                    "first_name": "Анна",
                    "last_name": "Иванова",
                    "city": "Moscow",
                    "consents": [_GRANT],
                },
            )
            ids[f"p{i}"] = out["profile_id"]
            for k in range(3):
                await call(
                    "POST",
                    "/v1/events",
                    {
                        "source": "shop",
                        "event_id": f"scale-{i}-{k}",
                        "type": "purchase",
                        "occurred_at": "2026-11-01T12:00:00Z",
                        "email": f"scale{i}@mail.example",
                        "amount": "450.00",
                        "currency": "RUB",
                        "category": "shoes",
                    },
                )
        # a merge: a record naming p1's email and p2's phone
        out = await call(
            "POST",
            "/v1/profiles",
            {"source": "shop", "email": "scale1@mail.example", "phone": "+79260000002"},
        )
        ids["merged"] = out["profile_id"]
        await call("POST", "/v1/opt-outs", {"email": "scale3@mail.example", "source": "bench"})
        out = await call(
            "POST",
            "/v1/erasure-requests",
            {"email": "scale4@mail.example", "requested_by": "customer"},
        )
        ids["request"] = out["request_id"]
        out = await call(
            "POST",
            "/v1/webhooks",
            {"url": "https://hooks.example/scale", "kinds": ["consent.withdrawn"]},
        )
        ids["webhook"] = out["id"]
        out = await call(
            "POST",
            "/v1/segments",
            {
                "name": "scale",
                "purpose": "marketing",
                "channel": "email",
                "rules": {"field": "country", "op": "eq", "value": "RU"},
            },
        )
        ids["segment"] = out["id"]
        page = await call("GET", f"/v1/segments/{ids['segment']}/members?limit=1")
        ids["unsubscribe"] = page["items"][0]["unsubscribe_token"]
        out = await call("POST", "/v1/preference-links", {"email": "scale5@mail.example"})
        ids["preferences"] = out["url"].rsplit("/", 1)[1]
    return ids


async def open_base(db: str, n: int, workdir: Path, tag: str) -> tuple[Base, bool]:
    """The base of n profiles kept in workdir (built=False), or a new empty one (built=True)."""
    state = workdir / f"state-{db}-{n}.json"
    if state.exists():
        return Base(**json.loads(state.read_text())), False
    if db == "postgres":
        name = _pg_name(n, tag)
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await _pg_admin(f'DROP DATABASE IF EXISTS "{name}_keys" WITH (FORCE)')
        await _pg_admin(f'CREATE DATABASE "{name}"')
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    else:
        url = f"sqlite+aiosqlite:///{workdir / f'scale-{n}.db'}"
    b = Base(db, n, url, MasterKey.generate_base64(), str(workdir / f"keys-{db}-{n}"))
    return b, True


async def build(b: Base, workdir: Path) -> None:
    t = time.perf_counter()
    p = await open_platform(b.settings())
    try:
        await generate(p, b.n)
        bulk_webhook = await fill_secondary(p, b.n)
        b.ids = {**await activity(p), "bulk_webhook": bulk_webhook}
        async with p.db.engine.connect() as conn:
            await conn.execute(text("ANALYZE"))
            await conn.commit()
    finally:
        await p.close()
    (workdir / f"state-{b.db}-{b.n}.json").write_text(json.dumps(b.__dict__))
    print(f"  built {b.db} {b.n:,} in {time.perf_counter() - t:.0f} s", flush=True)


# the requests -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Req:
    name: str
    method: str
    path: str  # {names} from Base.ids
    body: Any = None
    console: bool = False
    token: str | None = None  # a bearer token other than the admin key's
    call: Callable[[Platform], Awaitable[Any]] | None = None  # a background pass, not HTTP
    expect: tuple[int, ...] = (200,)


REQUESTS = [
    Req("health", "GET", "/health"),
    Req("metrics", "GET", "/metrics", token=METRICS_TOKEN),
    Req("profile by id", "GET", "/v1/profiles/{p7}"),
    Req("profile by merged-away id", "GET", "/v1/profiles/{merged}"),
    Req("profile by email", "GET", "/v1/profiles?email=scale8@mail.example"),
    Req("profile by phone", "GET", "/v1/profiles?phone=%2B79260000009"),
    Req("profile by external id", "GET", "/v1/profiles?source=crm&external_id=S10"),
    Req("profile consents", "GET", "/v1/profiles/{p11}/consents"),
    Req(
        "upsert profile (existing)",
        "POST",
        "/v1/profiles",
        {"source": "crm", "external_id": "S12", "email": "scale12@mail.example", "city": "Kazan"},
    ),
    Req(
        "upsert profile (new)",
        "POST",
        "/v1/profiles",
        {"source": "crm", "email": "new-{uniq}@mail.example"},
        expect=(201,),
    ),
    Req(
        "batch of 10",
        "POST",
        "/v1/profiles/batch",
        {"records": [{"source": "crm", "email": f"b{i}-{{uniq}}@mail.example"} for i in range(10)]},
    ),
    Req(
        "event",
        "POST",
        "/v1/events",
        {
            "source": "shop",
            "event_id": "e-{uniq}",
            "type": "purchase",
            "occurred_at": "2026-11-02T12:00:00Z",
            "email": "scale13@mail.example",
            "amount": "10.00",
            "currency": "RUB",
        },
        expect=(201,),
    ),
    Req(
        "consent",
        "POST",
        "/v1/consents",
        {"email": "scale14@mail.example", "source": "web", **_GRANT},
        expect=(201,),
    ),
    Req("opt-out", "POST", "/v1/opt-outs", {"email": "scale15@mail.example", "source": "bench"}),
    Req("unsubscribe page", "GET", "/v1/unsubscribe/{unsubscribe}"),
    Req("inbound sms", "POST", "/v1/inbound/sms", {"from": "+79260000016", "text": "STOP"}),
    Req("segments list", "GET", "/v1/segments"),
    Req("segment", "GET", "/v1/segments/{segment}"),
    Req("segment members, first page", "GET", "/v1/segments/{segment}/members?limit=100"),
    Req("segment exports list", "GET", "/v1/segments/{segment}/exports"),
    Req("segment stats (whole base)", "GET", "/v1/segments/{segment}/stats"),
    Req("erasure request", "GET", "/v1/erasure-requests/{request}"),
    Req("erasure requests, received", "GET", "/v1/erasure-requests?status=received&limit=100"),
    Req("erasure requests, completed", "GET", "/v1/erasure-requests?status=completed&limit=100"),
    Req("erasure requests, all", "GET", "/v1/erasure-requests?limit=100"),
    Req("access request", "POST", "/v1/access-requests", {"email": "scale17@mail.example"}),
    Req("preference link", "POST", "/v1/preference-links", {"email": "scale18@mail.example"}),
    Req("preferences page", "GET", "/preferences/{preferences}"),
    Req("match suggestions, open", "GET", "/v1/match-suggestions?status=open&limit=100"),
    Req("match suggestions, all", "GET", "/v1/match-suggestions?limit=100"),
    Req("merge reviews", "GET", "/v1/merge-reviews?limit=100"),
    Req("merge reviews, open", "GET", "/v1/merge-reviews?status=open&limit=100"),
    Req("audit consent events (profile)", "GET", "/v1/audit/consent-events?profile_id={p19}"),
    Req(
        "audit consent events (email)", "GET", "/v1/audit/consent-events?email=scale19@mail.example"
    ),
    Req("audit consent events, first page", "GET", "/v1/audit/consent-events?limit=100"),
    Req("audit access log, first page", "GET", "/v1/audit/access-log?limit=100"),
    Req("audit access log (profile)", "GET", "/v1/audit/access-log?profile_id={p7}&limit=100"),
    Req("audit access log, one actor", "GET", "/v1/audit/access-log?actor=scale-admin&limit=100"),
    Req("audit access log, a page deep in", "GET", "/v1/audit/access-log?limit=100&cursor={deep}"),
    Req("audit access log, last day", "GET", "/v1/audit/access-log?since={day_ago}&limit=100"),
    Req("audit consent events, last day", "GET", "/v1/audit/consent-events?since={day_ago}"),
    Req("audit consent events, purpose", "GET", "/v1/audit/consent-events?purpose=service"),
    Req("audit checkpoints", "GET", "/v1/audit/checkpoints"),
    Req("evidence bundle", "GET", "/v1/audit/evidence-bundle?profile_id={p6}"),
    Req("webhooks list", "GET", "/v1/webhooks"),
    Req(
        "webhook deliveries, dead",
        "GET",
        "/v1/webhooks/{bulk_webhook}/deliveries?status=dead&limit=100",
    ),
    Req("webhook with deliveries", "GET", "/v1/webhooks/{bulk_webhook}"),
    Req("webhook", "GET", "/v1/webhooks/{webhook}"),
    Req(
        "webhook deliveries, first page", "GET", "/v1/webhooks/{bulk_webhook}/deliveries?limit=100"
    ),
    Req("console home", "GET", "/console", console=True),
    Req("console customer", "GET", "/console/customers/{p7}", console=True),
    Req("console requests", "GET", "/console/requests", console=True),
    Req("console access log", "GET", "/console/access-log", console=True),
    Req(
        "console access log, one actor",
        "GET",
        "/console/access-log?actor=scale-admin",
        console=True,
    ),
    Req("console requests, completed", "GET", "/console/requests?status=completed", console=True),
]

# what runs in the background every few seconds, and at `cdp serve`'s start
_DISPATCH = DispatchConfig()


async def _startup_checks(p: Platform) -> None:
    await whole_keys_left(p.db)
    await plain_ids_left(p.db)


async def _claim(p: Platform) -> None:
    await delivery.claim(p, _DISPATCH, 10)  # leases what the requests above queued, then none


BACKGROUND = [
    Req("dispatcher: any work? (idle)", "", "", call=delivery.work_waiting),
    Req("dispatcher: claim", "", "", call=_claim),
    Req("dispatcher: fan-out (nothing new)", "", "", call=fanout.fan_out),
    Req("dispatcher: outstanding", "", "", call=dispatcher.outstanding),
    Req("DSR worker: open requests", "", "", call=dsr_worker.pending),
    Req("cdp serve: upgrade checks", "", "", call=_startup_checks),
]
REQUESTS += BACKGROUND


@dataclass
class Measured:
    ms: float
    statements: list[tuple[str, Any]]
    status: int


class Runner:
    def __init__(self, b: Base, p: Platform) -> None:
        self.b, self.p = b, p
        self.capture: list[tuple[str, Any]] | None = None
        self.unexpected: dict[str, int] = {}
        event.listen(p.db.engine.sync_engine, "before_cursor_execute", self._seen)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(platform=p)), base_url="http://bench"
        )
        self.h = {"Authorization": f"Bearer {b.ids['admin_key']}"}
        self.console = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(platform=p)), base_url="http://bench"
        )

    def _seen(self, _conn, _cursor, statement, parameters, _context, _many) -> None:  # type: ignore[no-untyped-def]
        if self.capture is not None:
            self.capture.append((statement, parameters))

    async def sign_in(self) -> None:
        form = await self.console.get("/console/login")
        csrf = re.search(r'name="login_csrf" value="([^"]+)"', form.text)
        assert csrf, form.text[:200]
        r = await self.console.post(
            "/console/login",
            data={"api_key": self.b.ids["compliance_key"], "login_csrf": csrf.group(1)},
        )
        assert r.status_code == 303, r.text[:300]

    async def prepare(self) -> None:
        """Names that depend on the moment or on the base: a cursor 90 % into the access log."""
        al = access_log.c
        async with self.p.db.engine.connect() as conn:
            total = (await conn.execute(select(func.count()).select_from(access_log))).scalar()
            at, aid = (
                await conn.execute(
                    select(al.at, al.id).order_by(al.at, al.id).offset(total * 9 // 10).limit(1)
                )
            ).one()
        self.names = {
            "deep": encode_cursor([at.isoformat(), str(aid)]),
            "day_ago": quote((datetime.now(UTC) - timedelta(days=1)).isoformat()),
        }

    def _fill(self, value: Any) -> Any:
        uniq = uuid.uuid4().hex[:12]
        names = {**self.b.ids, **self.names, "uniq": uniq}
        if isinstance(value, str):
            return value.format(**names)
        return json.loads(json.dumps(value).replace("{uniq}", uniq)) if value else value

    async def once(self, r: Req, capture: bool = False) -> Measured:
        path, body = self._fill(r.path), self._fill(r.body)
        self.capture = [] if capture else None
        c, h = (self.console, {}) if r.console else (self.client, self.h)
        if r.token:
            h = {"Authorization": f"Bearer {r.token}"}
        t = time.perf_counter()
        if r.call is not None:
            await r.call(self.p)
            ms = (time.perf_counter() - t) * 1000
            statements, self.capture = self.capture or [], None
            return Measured(ms, statements, 200)
        resp = await c.request(r.method, path, json=body, headers=h)
        ms = (time.perf_counter() - t) * 1000
        statements, self.capture = self.capture or [], None
        if resp.status_code not in r.expect and not (
            r.expect == (200,) and resp.status_code == 201
        ):
            self.unexpected[r.name] = resp.status_code  # shown in the table
        return Measured(ms, statements, resp.status_code)

    async def close(self) -> None:
        await self.client.aclose()
        await self.console.aclose()


_PG_SCAN = re.compile(r"Seq Scan on (\w+).*?rows=(\d+) loops=(\d+)")
_SQLITE_SCAN = re.compile(r"^SCAN (\w+)(?! USING (?:COVERING )?INDEX)(?!.*VIRTUAL)")


async def big_tables(p: Platform) -> dict[str, int]:
    async with p.db.engine.connect() as conn:
        if p.db.engine.dialect.name == "postgresql":
            rows = await conn.execute(text("SELECT relname, n_live_tup FROM pg_stat_user_tables"))
            out = {r[0]: int(r[1]) for r in rows}
            if not any(out.values()):  # statistics not collected: count
                out = {}
            return out
        names = (
            await conn.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))
        ).scalars()
        out = {}
        for name in list(names):
            out[name] = (await conn.execute(text(f'SELECT count(*) FROM "{name}"'))).scalar()
        return out


@dataclass
class Plans:
    work: int  # PostgreSQL: buffers read or hit; SQLite: virtual machine steps (hundreds)
    scans: list[str]


def _pg_buffers(node: dict) -> int:
    return int(node.get("Shared Hit Blocks", 0)) + int(node.get("Shared Read Blocks", 0))


def _pg_scans(node: dict, sizes: dict[str, int], out: list[str]) -> None:
    table = node.get("Relation Name")
    if node.get("Node Type") == "Seq Scan" and sizes.get(table, 0) > BIG:
        out.append(f"Seq Scan on {table}")
    for child in node.get("Plans", []):
        _pg_scans(child, sizes, out)


def _sqlite_steps(path: str, statements: list[tuple[str, Any]]) -> list[int]:
    """Each statement's virtual machine steps, in hundreds, run again on a connection of its
    own (read only)."""
    import sqlite3

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    steps = [0]

    def tick() -> int:
        steps[0] += 1
        return 0

    con.execute("SELECT count(*) FROM sqlite_master").fetchall()  # the schema, read once
    con.set_progress_handler(tick, 100)
    out = []
    try:
        for sql, params in statements:
            steps[0] = 0
            with contextlib.suppress(sqlite3.Error):
                con.execute(sql, params or ()).fetchall()
            out.append(steps[0])
    finally:
        con.close()
    return out


def _reads(statements: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    out = []
    for sql, params in statements:
        head = sql.lstrip().split(None, 1)[0].upper()
        if head in ("SELECT", "WITH") and " FOR UPDATE" not in sql.upper():
            out.append((sql, params))
    return out


async def explain(p: Platform, statements: list[tuple[str, Any]], sizes: dict[str, int]) -> Plans:
    """The reads among these statements: the work they do, and their whole-table scans of big
    tables (EXPLAIN ANALYZE on PostgreSQL, EXPLAIN QUERY PLAN on SQLite)."""
    reads = _reads(statements)
    scans: list[str] = []
    work = 0
    if p.db.engine.dialect.name == "postgresql":
        async with p.db.engine.connect() as conn:
            for sql, params in reads:
                try:
                    rows = await conn.exec_driver_sql(
                        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params
                    )
                    plan = rows.scalar()
                    plan = json.loads(plan) if isinstance(plan, str) else plan
                    top = plan[0]["Plan"]
                    work += _pg_buffers(top)
                    _pg_scans(top, sizes, scans)
                except Exception as e:
                    scans.append(f"(not explained: {type(e).__name__})")
                await conn.rollback()
        return Plans(work, sorted(set(scans)))
    path = p.settings.database_url.split("///", 1)[1]
    steps = await asyncio.to_thread(_sqlite_steps, path, reads)
    async with p.db.engine.connect() as conn:
        for (sql, params), n in zip(reads, steps, strict=True):
            work += n
            rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)
            for r in rows:
                m = _SQLITE_SCAN.match(r[3])
                if m and sizes.get(m.group(1), 0) > BIG and n > 100:
                    scans.append(f"SCAN {m.group(1)}")
    return Plans(work, sorted(set(scans)))


async def measure(b: Base, repeat: int) -> dict[str, tuple[float, int, Plans]]:
    """Per request: median milliseconds, statements run, and their plans."""
    p = await open_platform(b.settings(), run_migrations=False)
    run = Runner(b, p)
    out: dict[str, tuple[float, int, Plans]] = {}
    try:
        await run.sign_in()
        await run.prepare()
        sizes = await big_tables(p)
        for r in REQUESTS:
            first = await run.once(r, capture=True)
            times = [(await run.once(r)).ms for _ in range(repeat)]
            plans = await explain(p, first.statements, sizes)
            if r.name in run.unexpected:
                plans.scans.append(f"HTTP {run.unexpected[r.name]}")
            out[r.name] = (statistics.median(times), len(first.statements), plans)
    finally:
        await run.close()
        await p.close()
    return out


async def run(db: str, small: int, large: int, repeat: int, workdir: Path, keep: bool) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    bases = []
    for n in (small, large):
        b, new = await open_base(db, n, workdir, tag)
        if new:
            await build(b, workdir)
        bases.append(b)
    try:
        small_m = await measure(bases[0], repeat)
        large_m = await measure(bases[1], repeat)
    finally:
        if not keep:
            for b in bases:
                await drop_base(b)
    unit = "buffers" if db == "postgres" else "VM steps (x100)"
    lines = [
        f"`python -m bench.scale --db {db} --small {small} --scale {large}` (median of {repeat})",
        "",
        f"| request | ms {small:,} | ms {large:,} | ratio | reads' {unit} {small:,} | "
        f"{large:,} | ratio | statements | scans of a big table |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in REQUESTS:
        s, stmts, ps = small_m[r.name]
        m, stmts_l, pl = large_m[r.name]
        ratio = f"{pl.work / ps.work:.1f}x" if ps.work else "-"
        notes = sorted({*pl.scans, *(x for x in ps.scans if x.startswith("HTTP"))})
        lines.append(
            f"| {r.name} | {s:.1f} | {m:.1f} | {m / s:.2f}x | {ps.work:,} | {pl.work:,} | "
            f"{ratio} | {stmts}/{stmts_l} | {'; '.join(notes) or '-'} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=1_000_000, help="profiles in the large base")
    ap.add_argument("--small", type=int, default=10_000, help="profiles in the small base")
    ap.add_argument("--db", action="append", choices=["sqlite", "postgres"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workdir", type=Path, help="keep the bases here and reuse them")
    ap.add_argument("--drop", action="store_true", help="with --workdir: remove the bases after")
    args = ap.parse_args()
    for db in args.db or ["sqlite", "postgres"]:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cdp-scale-"))
        workdir.mkdir(parents=True, exist_ok=True)
        keep = args.workdir is not None and not args.drop
        t = time.perf_counter()
        lines = asyncio.run(run(db, args.small, args.scale, args.repeat, workdir, keep))
        print(f"\n## Requests at scale ({db}) ({time.perf_counter() - t:.0f} s)\n")
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
