"""Crash consistency: the real `cdp` processes killed with SIGKILL at a moment of the test's
choosing (tests/crash.py), started again, and the result checked.

- `cdp import` killed midway, then run again to completion, ends as one clean import of the
  same file: the same customers (by their identifiers), fields, consent states, merges and
  reviews; the audit verifies and the fault invariants hold (tests/fault_invariants.py).
- `cdp serve` killed under a stream of writes: every opt-out answered is in force after the
  restart, every erasure answered completed stays complete, requests without an answer are
  wholly in or wholly out, and sent again they converge.
- `cdp dsr run` and `cdp keys rotate-master` killed midway, then run again: they complete,
  nothing of an erased customer is readable, every other customer is.

Each runs a few derandomised kill points per database; CDP_CRASH_ROUNDS=N tries N per
scenario (CDP_CRASH_SEED=k other ones).
"""

from __future__ import annotations

import asyncio
import csv
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from cdp.db.tables import identities, profiles
from consent.dsr_tables import dsr_requests
from tests.crash import Site, free_port, kill, rng, rounds, serving, walk_members
from tests.fault_invariants import violations

# --------------------------------------------------------------------------- cdp import

IMPORT_ROWS = int(os.environ.get("CDP_CRASH_IMPORT_ROWS", "400"))
IMPORT_HEADER = [
    "external_id",
    "email",
    "phone",
    "first_name",
    "city",
    "traits.tier",
    "consent.marketing.email",
    "consent.marketing.email.wording_id",
    "consent.marketing.email.occurred_at",
    "consent.marketing.sms",
    "consent.marketing.sms.wording_id",
]


def import_file(path: Path, rows: int = IMPORT_ROWS) -> Path:
    """A CRM file of `rows` rows for about rows/2 people: each person comes back with a phone,
    some rows link two people (merges), some are withdrawn later in the file, some are bad
    (rejects) or carry a bad grant (the claim alone rejected)."""
    r = rng("import-file", rows)
    people = rows // 2
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(IMPORT_HEADER)
        for _ in range(rows):
            p = r.randrange(people)
            email = f"person{p}@example.com"
            phone = f"+7916{p:07d}" if r.random() < 0.6 else ""
            if r.random() < 0.04:  # this row links two people: a merge
                phone = f"+7916{(p + 1) % people:07d}"
            ext = f"C-{p}" if r.random() < 0.5 else ""
            row = [ext, email, phone, f"Имя{p}-{r.randrange(3)}", f"City{r.randrange(20)}"]
            row.append(str(r.randrange(4)))
            status = r.choice(["granted", "granted", "withdrawn", ""])
            when = f"2026-0{1 + r.randrange(9)}-1{r.randrange(10)}T10:00:00Z" if status else ""
            wording = "newsletter-v3" if status == "granted" and r.random() < 0.95 else ""
            row += [status, wording, when]
            sms = r.choice(["granted", ""]) if phone else ""
            row += [sms, "sms-v1" if sms else ""]
            if r.random() < 0.02:
                row[1] = "not an email"  # a rejected row
            if r.random() < 0.01:
                row[2] = "+7000"  # a phone that is no phone: rejected
            w.writerow(row)
    return path


async def end_state(site: Site) -> dict[str, Any]:
    """What a user can see of the base, independent of ids, times and keys: each active
    customer by their identifiers, with fields, traits and consent states; counts of merges,
    open merge reviews, suppressions; who is contactable by email and SMS."""
    async with site.opened() as (p, client, keys):
        found = await violations(p, client, keys)
        assert not found, f"{site.backend}: " + "; ".join(found)
        async with p.db.read() as conn:
            active = list(
                (
                    await conn.execute(select(profiles.c.id).where(profiles.c.status == "active"))
                ).scalars()
            )
            counts = {}
            for table in ("merges", "merge_reviews", "suppressions", "consent_state"):
                counts[table] = (
                    await conn.exec_driver_sql(f"SELECT count(*) FROM {table}")
                ).scalar_one()
            counts["identities"] = (
                await conn.execute(select(func.count()).select_from(identities))
            ).scalar_one()
        customers = {}
        for pid in active:
            r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
            assert r.status_code == 200, r.text
            view = r.json()
            who = frozenset((i["kind"], i["value"]) for i in view.get("identities", []))
            c = await client.get(f"/v1/profiles/{pid}/consents", headers=keys["admin"])
            assert c.status_code == 200, c.text
            customers[who] = (_strip(view), _strip(c.json()))
        return {
            "customers": customers,
            "counts": counts,
            "email": await walk_members(client, keys, "marketing", "email"),
            "sms": await walk_members(client, keys, "marketing", "sms"),
        }


_VOLATILE = {"id", "profile_id", "created_at", "updated_at", "recorded_at", "seq", "since"}
_COUNTED = {"merged_from"}  # ids of other profiles: how many


def _strip(value: Any) -> Any:
    """`value` without ids and recording times (they differ between two runs)."""
    if isinstance(value, dict):
        return tuple(
            sorted(
                (k, len(v) if k in _COUNTED else _strip(v))
                for k, v in value.items()
                if k not in _VOLATILE
            )
        )
    if isinstance(value, list):
        return tuple(sorted((_strip(v) for v in value), key=repr))
    return value


def summary_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("rows:"))


def diff(a: dict, b: dict) -> str:
    lines = []
    for key in ("counts", "email", "sms"):
        if a[key] != b[key]:
            lines.append(f"{key}: {_short(a[key], b[key])}")
    ca, cb = a["customers"], b["customers"]
    for who in set(ca) | set(cb):
        if ca.get(who) != cb.get(who):
            lines.append(f"customer {sorted(who)[:3]}: {_apart(ca.get(who), cb.get(who))}")
            if len(lines) > 6:
                break
    return "\n".join(lines)


def _apart(a: Any, b: Any) -> str:
    """The parts of two stripped views that differ."""
    if a is None or b is None:
        return f"clean {a is not None}, crashed {b is not None}"
    out = []
    for part_a, part_b in zip(a, b, strict=True):  # the profile's view, its consents
        for x, y in zip(part_a, part_b, strict=False):
            if x != y:
                out.append(f"{x!r:.300} != {y!r:.300}")
    return "; ".join(out)


def _short(a: Any, b: Any) -> str:
    if isinstance(a, set):
        return f"only clean: {sorted(a - b)[:5]}, only crashed: {sorted(b - a)[:5]}"
    return f"{a} != {b}"


_reference: dict[str, tuple[dict, str, float]] = {}


async def clean_import(sites: Any, backend: str, data: Path) -> tuple[dict, str, float]:
    """The end state, summary line and duration of one import of `data` on an empty base."""
    if backend not in _reference:
        import time

        site = await sites("clean")
        site.cli("migrate")
        start = time.monotonic()
        done = site.cli("import", "--source", "crm", str(data), "--rejects", "clean.rejects")
        took = time.monotonic() - start
        assert done.returncode == 0, done.stderr[-2000:]
        _reference[backend] = (await end_state(site), summary_line(done.stdout), took)
    return _reference[backend]


async def test_an_import_killed_anywhere_and_run_again_ends_as_one_clean_import(
    backend, sites, tmp_path
):
    data = import_file(tmp_path / "customers.csv")
    clean, clean_summary, took = await clean_import(sites, backend, data)
    for n in range(rounds(2)):
        r = rng("import", backend, n)
        site = await sites(f"killed-{n}")
        if n % 2 == 0:  # after some rows are committed, a moment later
            goal = r.randrange(1, IMPORT_ROWS // 3)
            proc = site.spawn("import", "--source", "crm", str(data), "--rejects", "r.csv")

            async def ready(site: Site = site, goal: int = goal) -> bool:
                return await site.count("profiles") >= goal

            killed = await site.kill_when(proc, ready, extra=r.random() * 0.3)
        else:  # at a moment of the run, from the start of the process (migrations too)
            proc = site.spawn("import", "--source", "crm", str(data), "--rejects", "r.csv")
            killed = await site.kill_when(proc, _always, extra=r.random() * (took + 1.0))
        again = site.cli("import", "--source", "crm", str(data), "--rejects", "r.csv")
        assert again.returncode == 0, f"n={n} killed={killed}: {again.stderr[-2000:]}"
        state = await end_state(site)
        assert state == clean, f"n={n} killed={killed}:\n{diff(clean, state)}"
        if not killed:
            assert (
                summary_line(again.stdout).split("created")[0] == clean_summary.split("created")[0]
            )


async def _always() -> bool:
    return True


# --------------------------------------------------------------------------- cdp serve

GRANT_EVIDENCE = {"wording_id": "newsletter-v3", "method": "checkbox", "ip": "203.0.113.7"}


def email(n: int) -> str:
    return f"stream{n}@example.com"


def phone(n: int) -> str:
    return f"+7917{n:07d}"


@dataclass
class Sent:
    """A request of the stream and what came of it (None: no answer before the kill)."""

    kind: str  # create, grant, opt_out, erase
    n: int
    status: int | None = None
    body: dict = field(default_factory=dict)


def stream_requests(r: random.Random, customers: int) -> list[tuple[str, int]]:
    """Per customer: created, granted email and sms; then an opt-out for some, an erasure
    for others, in a shuffled order across customers (each customer's own in order)."""
    out: list[list[tuple[str, int]]] = []
    for n in range(customers):
        steps = [("create", n), ("grant", n)]
        fate = r.random()
        if fate < 0.45:
            steps.append(("opt_out", n))
        elif fate < 0.65:
            steps.append(("erase", n))
        out.append(steps)
    merged: list[tuple[str, int]] = []
    while any(out):
        steps = r.choice([s for s in out if s])
        merged.append(steps.pop(0))
    return merged


def grant_body(channel: str, who: dict) -> dict:
    """An evidenced grant of advertising on `channel` to the address `who` names."""
    return {
        "purpose": "marketing",
        "channel": channel,
        "status": "granted",
        "source": "web",
        "occurred_at": "2026-11-20T09:00:00Z",
        "evidence": GRANT_EVIDENCE,
        **who,
    }


async def send(c: httpx.AsyncClient, keys: dict, kind: str, n: int) -> httpx.Response:
    if kind == "create":
        body = {"source": "crm", "email": email(n), "phone": phone(n), "first_name": f"Клиент{n}"}
        return await c.post("/v1/profiles", json=body, headers=keys["ingest"])
    if kind == "grant":  # a profile's grant reaches its email; sms by its phone
        for channel, who in (("email", {"email": email(n)}), ("sms", {"phone": phone(n)})):
            r = await c.post("/v1/consents", json=grant_body(channel, who), headers=keys["ingest"])
            if r.status_code != 201:
                return r
        return r
    if kind == "opt_out":
        return await c.post(
            "/v1/opt-outs", json={"source": "esp", "email": email(n)}, headers=keys["ingest"]
        )
    if kind == "erase":
        r = await c.post(
            "/v1/erasure-requests",
            json={"email": email(n), "requested_by": "customer"},
            headers=keys["compliance"],
        )
        if r.status_code != 202:
            return r
        rid = r.json()["request_id"]
        for _ in range(400):  # answered "completed" once the erasure after the 202 is done
            got = await c.get(f"/v1/erasure-requests/{rid}", headers=keys["compliance"])
            if got.json().get("status") == "completed":
                return got
            await asyncio.sleep(0.02)
        return got
    raise AssertionError(kind)


async def run_stream(
    base: str, keys: dict, plan: list[tuple[str, int]], lanes: int, done: list[Sent]
) -> None:
    """Send `plan` on `lanes` concurrent connections (a customer's requests in order, on
    one lane), recording each in `done`; stops quietly when the server is gone."""
    by_lane: dict[int, list[tuple[str, int]]] = {}
    for kind, n in plan:
        by_lane.setdefault(n % lanes, []).append((kind, n))

    async def lane(steps: list[tuple[str, int]]) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as c:
            for kind, n in steps:
                sent = Sent(kind, n)
                done.append(sent)
                try:
                    r = await send(c, keys, kind, n)
                except httpx.TransportError:
                    return  # no answer: the server was killed
                sent.status = r.status_code
                sent.body = r.json() if r.content else {}
                if r.status_code >= 500:
                    return

    await asyncio.gather(*(lane(s) for s in by_lane.values()))


async def contactable(client: httpx.AsyncClient, keys: dict) -> tuple[set, set]:
    return (
        await walk_members(client, keys, "marketing", "email"),
        await walk_members(client, keys, "marketing", "sms"),
    )


async def test_serve_killed_under_writes_keeps_every_answered_opt_out_and_erasure(
    backend, sites, tmp_path
):
    for n in range(rounds(1)):
        r = rng("serve", backend, n)
        site = await sites(f"serve-{n}")
        async with site.opened() as (_, _, keys):
            pass  # migrated, the key store made, keys to send with
        port = free_port(r, 8300, 8400)
        base = f"http://127.0.0.1:{port}"
        customers = 40
        plan = stream_requests(r, customers)
        done: list[Sent] = []
        server = await serving(site, port)
        answers = r.randrange(10, len(plan) * 3 // 4)
        stream = asyncio.ensure_future(run_stream(base, keys, plan, 6, done))

        async def ready(done: list = done, answers: int = answers, stream: Any = stream) -> bool:
            return answered(done) >= answers or stream.done()

        await site.kill_when(server, ready, extra=r.random() * 0.05)
        await stream
        context = f"n={n}: killed after {answered(done)} answers"
        server = await serving(site, port)  # the restart
        try:
            await check_after_serve_crash(site, base, keys, done, context)
            # every request without its answer, sent again, converges
            again = [(s.kind, s.n) for s in done if s.status is None]
            again += [(k, c) for k, c in plan if all((k, c) != (s.kind, s.n) for s in done)]
            redo: list[Sent] = []
            await run_stream(base, keys, again, 6, redo)
            for s in redo:  # an erasure done meanwhile: "no customer has this identifier"
                ok = (200, 201, 202, 404) if s.kind == "erase" else (200, 201, 202)
                assert s.status in ok, f"{context}: {s} sent again"
            await check_after_serve_crash(site, base, keys, done + redo, context, final=True)
        finally:
            kill(server)


def answered(done: list[Sent]) -> int:
    return sum(s.status is not None for s in done)


async def check_after_serve_crash(
    site: Site, base: str, keys: dict, done: list[Sent], context: str, final: bool = False
) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        by_email, by_sms = await contactable(client, keys)
        answered_ok = {(s.kind, s.n) for s in done if s.status is not None and s.status < 300}
        for s in done:
            if s.status is not None and s.status >= 300 and (s.kind, s.status) != ("erase", 404):
                raise AssertionError(f"{context}: {s}")
        sent = {(s.kind, s.n) for s in done}
        for kind, n in sent:
            erased_answered = ("erase", n) in answered_ok
            if kind == "opt_out" and ((kind, n) in answered_ok or final):
                assert email(n) not in by_email and phone(n) not in by_sms, (
                    f"{context}: the opt-out of {n} was answered and is not in force"
                )
            if kind == "opt_out" and (kind, n) not in answered_ok:  # wholly in or wholly out
                assert (email(n) in by_email) == (phone(n) in by_sms), (
                    f"{context}: half an opt-out of {n}"
                )
            if kind == "erase" and (erased_answered or final):
                r = await client.get(
                    "/v1/profiles", params={"email": email(n)}, headers=keys["admin"]
                )
                assert r.status_code in (404, 410), f"{context}: erased {n} reads {r.status_code}"
                assert email(n) not in by_email and phone(n) not in by_sms, context
            if kind == "create" and ("erase", n) not in sent:
                r = await client.get(
                    "/v1/profiles", params={"email": email(n)}, headers=keys["admin"]
                )
                if (kind, n) in answered_ok or final:
                    assert r.status_code == 200, f"{context}: customer {n}: {r.status_code}"
                if r.status_code == 200:  # wholly in: both identifiers, the name readable
                    view = r.json()
                    values = {i["value"] for i in view["identities"]}
                    assert {email(n), phone(n)} <= values, f"{context}: {view}"
                    assert view["first_name"] == f"Клиент{n}", context
            if kind == "grant" and final and not {("opt_out", n), ("erase", n)} & sent:
                assert email(n) in by_email and phone(n) in by_sms, f"{context}: grant {n}"
    async with site.opened() as (p, client, keys2):
        found = await violations(p, client, keys2, erased_done=final)
        assert not found, f"{context}: " + "; ".join(found)
        if final:
            erased = {s.n for s in done if s.kind == "erase"}
            async with p.db.read() as conn:
                rows = await conn.execute(
                    select(dsr_requests.c.status, func.count()).group_by(dsr_requests.c.status)
                )
                statuses = dict(rows.all())
            assert set(statuses) <= {"completed"}, f"{context}: {statuses}"
            assert sum(statuses.values()) >= len(erased), statuses


# --------------------------------------------------------------------------- cdp dsr run


async def seed_customers(site: Site, count: int, tag: str) -> list[str]:
    """`count` customers with a name, email, phone, grants and a purchase; every third is
    two profiles merged. Their profile ids."""
    made = []
    async with site.opened() as (_, client, keys):
        records = []
        for n in range(count):
            records.append(
                {"source": "crm", "email": f"{tag}{n}@example.com", "first_name": f"Имя{tag}{n}"}
            )
            if n % 3 == 0:  # a second profile, then a record linking the two: a merge
                records.append({"source": "crm", "phone": f"+7918{n:07d}"})
            records.append(
                {"source": "crm", "email": f"{tag}{n}@example.com", "phone": f"+7918{n:07d}"}
            )
        for start in range(0, len(records), 500):
            r = await client.post(
                "/v1/profiles/batch",
                json={"records": records[start : start + 500]},
                headers=keys["ingest"],
            )
            assert r.status_code in (200, 201, 207), r.text
        for n in range(count):
            for channel, who in (
                ("email", {"email": f"{tag}{n}@example.com"}),
                ("sms", {"phone": f"+7918{n:07d}"}),
            ):
                body = grant_body(channel, who)
                r = await client.post("/v1/consents", json=body, headers=keys["ingest"])
                assert r.status_code == 201, r.text
            event = {
                "source": "shop",
                "event_id": f"ord-{tag}-{n}",
                "type": "purchase",
                "occurred_at": "2026-11-01T12:00:00Z",
                "amount": "10.00",
                "currency": "RUB",
                "category": "shoes",
                "email": f"{tag}{n}@example.com",
            }
            r = await client.post("/v1/events", json=event, headers=keys["ingest"])
            assert r.status_code == 201, r.text
            r = await client.get(
                "/v1/profiles", params={"email": f"{tag}{n}@example.com"}, headers=keys["admin"]
            )
            made.append(r.json()["profile_id"])
    return made


async def submit_erasures(site: Site, tag: str, which: list[int]) -> None:
    """Erasure requests for these customers, left for the worker (the API's answer would
    run them at once)."""
    from cdp.profiles.identifiers import parse_identifier
    from consent.dsr.requests import submit_erasure

    async with site.opened() as (p, _, _):
        for n in which:
            ident = parse_identifier(p.policy, p.keys.indexer, email=f"{tag}{n}@example.com")
            await submit_erasure(p, ident, requested_by="customer", actor="test")


async def check_erased(site: Site, tag: str, erased: list[int], count: int, context: str) -> None:
    async with site.opened() as (p, client, keys):
        found = await violations(p, client, keys)
        assert not found, f"{context}: " + "; ".join(found)
        by_email, by_sms = await contactable(client, keys)
        for n in range(count):
            r = await client.get(
                "/v1/profiles", params={"email": f"{tag}{n}@example.com"}, headers=keys["admin"]
            )
            addresses = (f"{tag}{n}@example.com" in by_email, f"+7918{n:07d}" in by_sms)
            if n in erased:
                assert r.status_code in (404, 410), f"{context}: erased {n}: {r.status_code}"
                assert addresses == (False, False), f"{context}: erased {n} contactable"
            else:
                assert r.status_code == 200, f"{context}: customer {n}: {r.status_code}"
                assert r.json()["first_name"] == f"Имя{tag}{n}", context
                assert addresses == (True, True), f"{context}: customer {n}: {addresses}"
        async with p.db.read() as conn:
            statuses = dict(
                (
                    await conn.execute(
                        select(dsr_requests.c.status, func.count()).group_by(dsr_requests.c.status)
                    )
                ).all()
            )
        assert statuses == ({"completed": len(erased)} if erased else {}), f"{context}: {statuses}"


async def test_the_erasure_worker_and_a_key_rotation_killed_anywhere_complete_when_run_again(
    backend, sites
):
    """`cdp dsr run` killed after some erasures, run again; then `cdp keys rotate-master`
    killed at a moment of its run, run again: every erasure complete, nothing of an erased
    customer readable, every other customer read under the new master key."""
    from cdp.crypto.master import MasterKey

    count = 24
    for n in range(rounds(1)):
        r = rng("dsr", backend, n)
        site = await sites(f"dsr-{n}")
        tag = f"dsr{n}-"
        await seed_customers(site, count, tag)
        erased = sorted(r.sample(range(count), count // 2))
        await submit_erasures(site, tag, erased)
        start = asyncio.get_running_loop().time()
        proc = site.spawn("dsr", "run")
        goal = r.randrange(0, len(erased))

        async def ready(site: Site = site, goal: int = goal) -> bool:
            return await site.count("dsr_requests", "WHERE status = 'completed'") >= goal

        killed = await site.kill_when(proc, ready, extra=r.random() * 0.2)
        took = asyncio.get_running_loop().time() - start  # at least a command's start
        context = f"n={n}: dsr run killed={killed} after {goal} completed"
        again = site.cli("dsr", "run")
        assert again.returncode == 0, f"{context}: {again.stdout} {again.stderr[-2000:]}"
        await check_erased(site, tag, erased, count, context)

        new = MasterKey.generate_base64()
        proc = site.spawn("keys", "rotate-master", CDP_NEW_MASTER_KEY=new)
        killed = await site.kill_when(proc, _always, extra=took * (0.5 + 0.7 * r.random()))
        context = f"n={n}: rotate-master killed={killed}"
        again = site.cli("keys", "rotate-master", CDP_NEW_MASTER_KEY=new)
        assert again.returncode == 0, f"{context}: {again.stderr[-2000:]}"
        site.extra_env["CDP_MASTER_KEY"] = new
        await check_erased(site, tag, erased, count, context)
