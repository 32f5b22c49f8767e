"""Crash consistency of the webhook outbox and of `cdp events import` (tests/crash.py).

- `cdp dispatch` killed with SIGKILL while requests are in flight to two real receivers on
  loopback (subscriptions with and without `include_address`; signatures checked as
  docs/webhooks.md says), consent changes committed while it is down, then a dispatcher again
  until the queue is empty: every committed change of a kind the subscription wants is
  delivered at least once (a copy only under the same `webhook-id`, with the same body),
  nothing is delivered that is not in the outbox, each address's (else profile's) events
  arrive in the order they committed, every signature verifies, no body carries a name or
  evidence, only the `include_address` one an address (never an erased customer's), and it
  gets the address of every opt-out of an address no customer had, whose sealed copy is then
  forgotten.
- `cdp events import` killed midway, then run again: per-profile stats and categories equal
  those of one clean run of the same file, no event stored twice, and the fault invariants
  hold (tests/fault_invariants.py).
- `cdp serve --workers 2` (PostgreSQL), its dispatchers on, killed as a whole session under a
  stream of creations, grants, opt-outs and erasures: every answered opt-out is in force after
  the restart and its `opt_out` event delivered, with the outbox checks above.

A killed dispatcher's leases (2 minutes) are made to run out rather than waited for. A few
derandomised kill points per database; CDP_CRASH_ROUNDS=N tries N per scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import hashlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from cdp.db.tables import events, profiles
from cdp.profiles.identifiers import parse_identifier
from consent.outbox.receiver import Receiver
from consent.outbox.tables import outbox_events, webhook_deliveries
from tests.crash import ROUNDS, Site, free_port, kill, rng, rounds, serving
from tests.fault_invariants import violations
from tests.test_crash_consistency import (
    GRANT_EVIDENCE,
    Sent,
    answered,
    check_after_serve_crash,
    email,
    run_stream,
    stream_requests,
)
from tests.test_webhooks_delivery import PAYLOAD_KEYS

# --------------------------------------------------------------------------- webhooks

KINDS = [
    "opt_out",
    "consent.withdrawn",
    "consent.granted",
    "suppression.added",
    "erasure.completed",
]


class SlowReceiver(Receiver):
    """The reference receiver (records and dedupes each request as it arrives), answering
    each request `delay` seconds after processing it, so that a kill finds requests processed
    but unanswered; the first try of some events is answered 503 (retried)."""

    delay: float = 0.03

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                item = self.handle(headers, body)
                await asyncio.sleep(self.delay)
                writer.write(
                    f"HTTP/1.1 {item.status} X\r\ncontent-length: 2\r\n"
                    "content-type: application/json\r\n\r\n{}".encode()
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()


def receiving(r: random.Random) -> SlowReceiver:
    """A receiver answering 503 to the first try of one event in eight (by its id)."""
    receiver = SlowReceiver(secret="")

    def flaky(item: Any) -> int:
        wid = item.headers.get("webhook-id", "")
        first = not any(x.headers.get("webhook-id") == wid for x in receiver.requests)
        return 503 if first and hashlib.sha256(wid.encode()).digest()[0] < 32 else 200

    receiver.respond = flaky
    return receiver


async def subscribe(client: Any, keys: dict, receiver: Receiver, include_address: bool) -> None:
    body = {"url": receiver.url, "kinds": KINDS, "include_address": include_address}
    got = await client.post("/v1/webhooks", json=body, headers=keys["admin"])
    assert got.status_code == 201, got.text
    receiver.secret = got.json()["secret"]


def who(tag: str, n: int) -> tuple[str, str]:
    return f"{tag}{n}@example.com", f"+7919{n:07d}"


def unseen(tag: str, n: int) -> str:
    """An address no customer has: its opt-out carries it, sealed until sent."""
    return f"{tag}{n}@unseen.example"


async def consent_changes(client: Any, keys: dict, tag: str, plan: list[tuple[str, int]]) -> None:
    """Each step committed through the API (answered 2xx) before the next."""
    for step, n in plan:
        mail, tel = who(tag, n)
        if step == "create":
            body = {"source": "crm", "email": mail, "phone": tel, "first_name": f"Имя{n}"}
            r = await client.post("/v1/profiles", json=body, headers=keys["ingest"])
            assert r.status_code in (200, 201), r.text
        elif step == "grant":
            for channel, ident in (("email", {"email": mail}), ("sms", {"phone": tel})):
                body = {
                    "purpose": "marketing",
                    "channel": channel,
                    "status": "granted",
                    "source": "web",
                    "occurred_at": "2026-11-20T09:00:00Z",
                    "evidence": GRANT_EVIDENCE,
                    **ident,
                }
                r = await client.post("/v1/consents", json=body, headers=keys["ingest"])
                assert r.status_code == 201, r.text
        elif step in ("opt_out", "unseen_opt_out"):
            body = {"source": "esp", "email": mail if step == "opt_out" else unseen(tag, n)}
            r = await client.post("/v1/opt-outs", json=body, headers=keys["ingest"])
            assert r.status_code in (200, 201), r.text
        elif step == "erase":
            body = {"email": mail, "requested_by": "customer"}
            r = await client.post("/v1/erasure-requests", json=body, headers=keys["compliance"])
            assert r.status_code == 202, r.text
            rid = r.json()["request_id"]
            for _ in range(500):
                got = await client.get(f"/v1/erasure-requests/{rid}", headers=keys["compliance"])
                if got.json().get("status") == "completed":
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"erasure of {n} not completed: {got.text}")
        else:
            raise AssertionError(step)


def change_plan(r: random.Random, customers: range) -> list[tuple[str, int]]:
    plan = []
    for n in customers:
        plan += [("create", n), ("grant", n)]
        fate = r.random()
        if fate < 0.1:
            plan.append(("unseen_opt_out", n))
        elif fate < 0.4:
            plan.append(("opt_out", n))
        elif fate < 0.55:
            plan.append(("erase", n))
    return plan


async def leases_run_out(p: Any) -> None:
    """What the 2 minutes after a kill do: the deliveries it held leased are due again (a
    dispatcher after the lease takes them)."""
    async with p.db.write() as conn:
        await conn.execute(
            update(webhook_deliveries)
            .where(webhook_deliveries.c.lease_until.is_not(None))
            .values(lease_until=datetime(2000, 1, 1, tzinfo=UTC))
        )


async def drained(site: Site, streamed: bool = False) -> bool:
    return (
        await site.count("outbox_events", "WHERE fanned_out = false") == 0
        and await site.count("webhook_deliveries", "WHERE status = 'pending'") == 0
        and (not streamed or await site.count("outbox_events", "WHERE streamed_at IS NULL") == 0)
    )


@contextlib.asynccontextmanager
async def nats_server(r: random.Random, tmp: Path) -> AsyncIterator[str | None]:
    """A JetStream server of the test's own (its URL), None where nats-server is not installed
    or the nats client is missing."""
    binary = shutil.which("nats-server")
    if binary is None or importlib.util.find_spec("nats") is None:
        yield None
        return
    import nats

    port = free_port(r, 8400, 8500)
    proc = subprocess.Popen(
        [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp / "nats")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"nats://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0)
            except Exception:
                await asyncio.sleep(0.05)
                continue
            await nc.close()
            break
        yield url
    finally:
        kill(proc)


async def stream_event_ids(url: str, stream: str) -> list[tuple[str, str, dict]]:
    """(Nats-Msg-Id, subject, body) of every message in the stream, in its order."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            out.append((msg.headers["Nats-Msg-Id"], msg.subject, json.loads(msg.data)))
        return out
    finally:
        await nc.close()


async def test_a_dispatcher_killed_mid_delivery_loses_nothing_and_keeps_each_address_in_order(
    backend, sites
):
    """`cdp dispatch` killed while requests are in flight (some processed by the receiver but
    unanswered), changes committed while it is down, a dispatcher again until drained."""
    for n in range(rounds(1)):
        r = rng("webhooks", backend, n)
        site = await sites(f"wh-{n}")
        receiver, shown = receiving(r), receiving(r)  # shown: include_address
        await receiver.start(port=free_port(r, 8400, 8500))
        await shown.start(port=free_port(r, 8400, 8500))
        tag = f"wh{n}-"
        stack = contextlib.AsyncExitStack()
        try:
            async with site.opened() as (_, client, keys):
                await subscribe(client, keys, receiver, include_address=False)
                await subscribe(client, keys, shown, include_address=True)
                plan = change_plan(r, range(0, 12))
                await consent_changes(client, keys, tag, plan)
            env = {
                "CDP_WEBHOOK_POLL_MS": "20",
                "CDP_WEBHOOK_RETRY_BASE_MS": "50",
                "CDP_WEBHOOK_RETRY_CAP_MS": "200",
                "CDP_WEBHOOK_CONCURRENCY": "8",
            }
            nats_url = await stack.enter_async_context(nats_server(r, site.tmp))
            if nats_url:
                env |= {"CDP_NATS_URL": nats_url, "CDP_NATS_STREAM": "CRASH"}
            proc = site.spawn("dispatch", **env)
            goal = r.randrange(1, 50)

            async def ready(goal: int = goal, receiver: Any = receiver, shown: Any = shown) -> bool:
                return len(receiver.requests) + len(shown.requests) >= goal

            killed = await site.kill_when(proc, ready, extra=r.random() * 0.08)
            context = f"{backend} n={n}: dispatch killed={killed} after {goal} requests"
            async with site.opened() as (p, client, keys):
                await leases_run_out(p)
                later = [(s, k) for s, k in change_plan(r, range(12, 15))]
                later += [("opt_out", k) for k in range(0, 12, 4)]  # again, or after a grant
                later += [("grant", k) for k in range(1, 12, 5)]  # back after an opt-out
                later += [("unseen_opt_out", k) for k in range(2, 12, 6)]
                await consent_changes(client, keys, tag, later)
            proc = site.spawn("dispatch", **env)
            until = functools.partial(drained, site, streamed=bool(nats_url))
            await site.kill_when(proc, until, limit=90)
            await asyncio.sleep(0.2)  # the last answers
            async with site.opened() as (p, client, keys):
                if nats_url:
                    await check_stream(p, nats_url, context)
                kinds = await check_deliveries(p, client, keys, receiver, context)
                assert {"opt_out", "consent.granted", "consent.withdrawn"} <= set(kinds), kinds
                await check_deliveries(p, None, None, shown, context, include_address=True)
                async with p.db.read() as conn:  # forgotten: the column, and the key's share
                    rows = await conn.execute(
                        select(outbox_events.c.id, outbox_events.c.address_sealed).where(
                            outbox_events.c.kind == "opt_out", outbox_events.c.profile_id.is_(None)
                        )
                    )
                    sealed = rows.all()
                assert sealed and all(v is None for _, v in sealed), context
                assert not await p.keys.store.get([i for i, _ in sealed]), context
            unseen_sent = {
                x.payload.get("address") for x in shown.accepted if x.payload["kind"] == "opt_out"
            }
            for step, k in plan + later:
                if step == "unseen_opt_out":
                    assert unseen(tag, k) in unseen_sent, f"{context}: unseen opt-out {k}"
        finally:
            await receiver.stop()
            await shown.stop()
            await stack.aclose()


async def check_stream(p: Any, url: str, context: str) -> None:
    """Every outbox event in the stream once (JetStream drops a republished copy), without an
    address, each address's (else profile's) in commit order."""
    got = await stream_event_ids(url, "CRASH")
    async with p.db.read() as conn:
        outbox = {
            str(row.id): (row.seq, row.order_key)
            for row in await conn.execute(select(outbox_events))
        }
    ids = [i for i, _, _ in got]
    assert len(ids) == len(set(ids)), f"{context}: an event twice in the stream"
    assert set(ids) == set(outbox), f"{context}: stream {len(ids)} != outbox {len(outbox)}"
    for i, subject, body in got:
        assert body["event_id"] == i and subject == f"cdp.consent.{body['kind']}", context
        assert "address" not in body and "@" not in json.dumps(body), f"{context}: {body}"
    place = {i: k for k, i in enumerate(ids)}
    by_key: dict[bytes, list[tuple[int, int]]] = {}
    for i, (seq, key) in outbox.items():
        by_key.setdefault(key, []).append((seq, place[i]))
    for key, evs in by_key.items():
        evs.sort()
        assert [a for _, a in evs] == sorted(a for _, a in evs), f"{context}: {key.hex()}"


async def check_deliveries(
    p: Any,
    client: Any,
    keys: Any,
    receiver: Receiver,
    context: str,
    *,
    include_address: bool = False,
) -> list[str]:
    """The kinds delivered (each event once), after checking what the module says (and the
    fault invariants, given a client)."""
    if client is not None:
        found = await violations(p, client, keys)
        assert not found, f"{context}: " + "; ".join(found)
    async with p.db.read() as conn:
        outbox = {
            str(row.id): (row.seq, row.order_key, row.kind)
            for row in await conn.execute(select(outbox_events))
            if row.kind in KINDS
        }
        statuses = {
            row.status for row in await conn.execute(select(webhook_deliveries.c.status).distinct())
        }
        query = select(profiles.c.id).where(profiles.c.status == "erased")
        erased = {str(pid) for pid in (await conn.execute(query)).scalars()}
    # none at all where no consent changed before the kill (creations only): what had to be
    # sent is checked below, event by event, against what the receiver accepted
    assert statuses <= {"delivered"}, f"{context}: deliveries {statuses}"
    invalid = [x for x in receiver.requests if not x.valid]
    assert not invalid, f"{context}: {len(invalid)} requests with a bad signature"
    first: dict[str, int] = {}  # event id -> position of its first accepted arrival
    bodies: dict[str, dict] = {}
    for i, x in enumerate(receiver.requests):
        wid = x.headers["webhook-id"]
        payload = x.payload
        assert payload["event_id"] == wid, context
        text = x.body.decode()
        assert "Имя" not in text and "Клиент" not in text and "203.0.113" not in text, text
        if include_address:  # the address only, and never an erased customer's
            assert set(payload) <= PAYLOAD_KEYS | {"address"}, f"{context}: {sorted(payload)}"
            if payload["kind"] == "erasure.completed" or payload["profile_id"] in erased:
                assert "address" not in payload, f"{context}: an erased customer's: {text}"
        else:
            assert set(payload) <= PAYLOAD_KEYS, f"{context}: {sorted(payload)}"
            assert "@" not in text and "+79" not in text, f"{context}: {text}"
        if wid in bodies:
            assert bodies[wid] == payload, f"{context}: {wid} sent with two bodies"
        bodies[wid] = payload
        if 200 <= x.status < 300:
            first.setdefault(wid, i)
    lost = set(outbox) - set(first)
    extra = set(bodies) - set(outbox)
    assert not lost, f"{context}: {len(lost)} committed events never delivered: {lost}"
    assert not extra, f"{context}: {len(extra)} delivered events not in the outbox"
    by_key: dict[bytes, list[tuple[int, int, str]]] = {}
    for wid, (seq, key, kind) in outbox.items():
        by_key.setdefault(key, []).append((seq, first[wid], kind))
    for key, evs in by_key.items():
        evs.sort()
        arrivals = [a for _, a, _ in evs]
        assert arrivals == sorted(arrivals), f"{context}: order of {key.hex()}: {evs}"
    return [bodies[w]["kind"] for w in first]


# --------------------------------------------------------------------------- cdp events import

EVENT_ROWS = int(os.environ.get("CDP_CRASH_EVENT_ROWS", "1000"))  # 500 a chunk
EVENT_HEADER = ["event_id", "type", "occurred_at", "email", "phone", "amount", "currency"]


def orders_file(path: Path, rows: int = EVENT_ROWS) -> Path:
    """Purchases and refunds of rows/12 customers, by email or phone (some a new customer),
    some in another currency, a few rejected; some event ids repeated later in the file."""
    r = rng("orders", rows)
    people = rows // 12
    written: list[list[str]] = []
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*EVENT_HEADER, "category"])
        for i in range(rows):
            if written and r.random() < 0.03:
                w.writerow(r.choice(written))  # the same event again
                continue
            c = r.randrange(people)
            mail, tel = (f"buyer{c}@example.com", "") if c % 4 else ("", f"+7920{c:07d}")
            kind = "refund" if r.random() < 0.05 else "purchase"
            amount = f"{r.randrange(100, 100000) / 100:.2f}"
            currency = "USD" if r.random() < 0.05 else "RUB"
            day = f"2026-{1 + r.randrange(11):02d}-{1 + r.randrange(28):02d}"
            when = f"{day}T1{r.randrange(10)}:00:00Z"
            if r.random() < 0.01:
                amount = "abc"  # rejected
            row = [f"ord-{i}", kind, when, mail, tel, amount, currency, f"cat{r.randrange(6)}"]
            written.append(row)
            w.writerow(row)
    return path


async def stats_by_customer(site: Site) -> dict:
    """Each active customer's stats (with categories) by their identifiers, as the API shows
    them; the number of events stored, none twice."""
    async with site.opened() as (p, client, keys):
        found = await violations(p, client, keys)
        assert not found, f"{site.backend}: " + "; ".join(found)
        async with p.db.read() as conn:
            active = list(
                (
                    await conn.execute(select(profiles.c.id).where(profiles.c.status == "active"))
                ).scalars()
            )
            ids = [
                tuple(x) for x in await conn.execute(select(events.c.source, events.c.event_key))
            ]
        stats = {}
        for pid in active:
            r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
            assert r.status_code == 200, r.text
            view = r.json()
            who = frozenset((i["kind"], i["value"]) for i in view.get("identities", []))
            stats[who] = view.get("stats")
    assert len(ids) == len(set(ids)), f"{site.backend}: an event stored twice"
    return {"stats": stats, "events": len(ids), "customers": len(active)}


async def test_an_events_import_killed_midway_and_run_again_counts_each_order_once(
    backend, sites, tmp_path
):
    data = orders_file(tmp_path / "orders.csv")
    clean = await sites("clean")
    rejects = tmp_path / "clean.rejects.csv"
    done = clean.cli("events", "import", str(data), "--source", "shop", "--rejects", str(rejects))
    assert done.returncode == 0, done.stderr[-2000:]
    rejected = rejects.read_text()
    assert rejected.count("\n") > 3, rejected
    want = await stats_by_customer(clean)
    assert want["events"] > EVENT_ROWS * 0.9, want["events"]
    for n in range(rounds(1)):
        r = rng("events-import", backend, n)
        site = await sites(f"events-{n}")
        proc = site.spawn("events", "import", str(data), "--source", "shop")
        goal = r.randrange(0, EVENT_ROWS // 2)  # then into the next chunk's transaction

        async def ready(site: Site = site, goal: int = goal) -> bool:
            return await site.count("events") >= goal

        killed = await site.kill_when(proc, ready, extra=r.random() * 0.6)
        context = f"{backend} n={n}: events import killed={killed} after {goal} events"
        rejects = tmp_path / f"again-{n}.rejects.csv"
        again = site.cli(
            "events", "import", str(data), "--source", "shop", "--rejects", str(rejects)
        )
        assert again.returncode == 0, f"{context}: {again.stderr[-2000:]}"
        assert rejects.read_text() == rejected, f"{context}: the rejects differ"
        got = await stats_by_customer(site)
        for part in ("events", "customers", "stats"):
            assert got[part] == want[part], f"{context}: {part} differ"


# --------------------------------------------------------------------------- cdp serve


def workers(site: Site) -> tuple[str, ...]:
    """Two workers on PostgreSQL, the one process on SQLite."""
    return ("--workers", "2") if site.backend == "postgres" else ()


async def test_serve_killed_whole_under_opt_outs_keeps_and_sends_each_answered(sites, backend):
    """`cdp serve --workers 2` on PostgreSQL (on SQLite, the one process), its dispatchers on
    and sending to a receiver, killed as a whole session under creations, grants, opt-outs
    and erasures: every answered opt-out is in force after the restart and its `opt_out`
    event delivered, nothing lost or out of order (check_deliveries)."""
    if backend == "sqlite" and not ROUNDS:  # time: test_crash_consistency kills it already
        pytest.skip("on SQLite with CDP_CRASH_ROUNDS only")
    for n in range(rounds(1)):
        r = rng("serve-workers", backend, n)
        site = await sites(f"workers-{n}")
        receiver = receiving(r)
        await receiver.start(port=free_port(r, 8400, 8500))
        try:
            async with site.opened() as (_, client, keys):
                await subscribe(client, keys, receiver, include_address=False)
            env = {
                "CDP_WEBHOOK_DISPATCHER": "on",
                "CDP_WEBHOOK_POLL_MS": "20",
                "CDP_WEBHOOK_RETRY_BASE_MS": "50",
                "CDP_WEBHOOK_RETRY_CAP_MS": "200",
            }
            port = free_port(r, 8400, 8500)
            base = f"http://127.0.0.1:{port}"
            plan = stream_requests(r, 16)
            done: list[Sent] = []
            server = await serving(site, port, *workers(site), **env)
            answers = r.randrange(10, len(plan) * 3 // 4)
            stream = asyncio.ensure_future(run_stream(base, keys, plan, 6, done))

            async def ready(
                done: list = done, answers: int = answers, stream: Any = stream
            ) -> bool:
                return answered(done) >= answers or stream.done()

            killed = await site.kill_when(server, ready, extra=r.random() * 0.05)
            await stream
            context = f"{backend} n={n}: killed={killed} after {answered(done)} answers"
            async with site.opened() as (p, _, _):
                await leases_run_out(p)
            server = await serving(site, port, *workers(site), **env)  # the restart
            try:  # drained first: on SQLite the check's writes wait for no dispatcher
                for _ in range(900):
                    if await drained(site):
                        break
                    await asyncio.sleep(0.1)
                await check_after_serve_crash(site, base, keys, done, context)
            finally:
                kill(server)
            await asyncio.sleep(0.2)
            opted = {s.n for s in done if s.kind == "opt_out" and s.status is not None}
            async with site.opened() as (p, _, _):  # invariants: check_after_serve_crash
                await check_deliveries(p, None, None, receiver, context)
                sent = {
                    bytes.fromhex(x.payload["address_blind_index"])
                    for x in receiver.accepted
                    if x.payload["kind"] == "opt_out" and x.payload["address_blind_index"]
                }
                for c in opted:
                    ident = parse_identifier(p.policy, p.keys.indexer, email=email(c))
                    assert ident.bidx in sent, f"{context}: the opt-out of {c} was not sent"
        finally:
            await receiver.stop()
