"""Concurrent histories of consent operations against a running `cdp serve`, and the
sequential model of the documented rules they are checked against (tests/linearizability.py).

A history has a few customers ("groups"), each with two email addresses (0 and 1) and an
external id that records use to link the addresses (and so merge the customers holding them),
and several clients, each with its own connection, sending one operation after another:

- grant / withdraw: POST /v1/consents naming the address, marketing by email, with evidence,
  at an occurred_at of a few minutes (so that the order of two events decides nothing: the
  times do, and ties are common);
- opt_out: POST /v1/opt-outs naming the address, of email or of every channel ("*");
- unsubscribe: POST /v1/unsubscribe/{token} with a token from an earlier members read;
- record: POST /v1/profiles with the address, and maybe the group's external id (a link);
- erase: POST /v1/erasure-requests naming the address, then processing it (the erasure
  worker's `process`, in this process) until completed;
- read_profile: GET /v1/profiles?email= (its `consents`: each address's state and whether an
  opt-out outranks it, and the `contactable` matrix, as GET /v1/profiles/{id}/consents);
- read_members: the members of the history's customers for marketing by email, by a saved
  segment's members page, its NDJSON export, or an ad-hoc query. A page and a query are one
  statement, so every customer is as they were at one moment; an export reads ranges of
  profile ids each in its own transaction, so it is checked customer by customer.

The model (`ConsentModel`) is the rules of README "Consent belongs to the address" and DESIGN
§1 in plain Python, per group: the latest event by occurred_at wins (a withdrawal wins a tie);
a suppression (opt-out, unsubscribe, erasure) stops contact until a grant that occurred
strictly after it; an opt-out of every channel reaches every address the customer holds, and
those they gain later; an erasure removes the customer and suppresses their addresses at the
present (after every occurred_at a history uses: final); a record linking two customers merges
them; a members read shows, of each customer, one contactable address and only such.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.linearizability import History, Op

NOW = 10**9  # an unsubscribe's or an erasure's time: after every occurred_at of a history
ADDRS = (0, 1)
EVIDENCE = {"wording_id": "nl-v1", "method": "double_opt_in", "ip": "203.0.113.7"}


# ---------------------------------------------------------------------------------------------
# the sequential model, one group (two addresses, one external id) per state
@dataclass(frozen=True)
class State:
    profs: tuple[tuple[str, int], ...] = ()  # per profile label: (status, merged into or -1)
    holder: tuple[tuple[Any, int], ...] = ()  # identity (0, 1 or "x") -> profile label
    consent: tuple[tuple[int, tuple[int, str]], ...] = ()  # address -> (occurred, status)
    supp: tuple[tuple[tuple[int, str], tuple[int, str]], ...] = ()  # (addr, channel) -> (t, why)
    person_w: tuple[tuple[int, frozenset[int]], ...] = ()  # label -> every-channel withdrawals
    addr_w: tuple[tuple[int, frozenset[int]], ...] = ()  # address -> the same, on the address


class _Work:
    """A state being changed: plain dicts, frozen back into a State."""

    def __init__(self, s: State) -> None:
        self.profs = [list(p) for p in s.profs]
        self.holder = dict(s.holder)
        self.consent = dict(s.consent)
        self.supp = dict(s.supp)
        self.person_w = {k: set(v) for k, v in s.person_w}
        self.addr_w = {k: set(v) for k, v in s.addr_w}

    def freeze(self) -> State:
        def items(d: dict) -> tuple:  # type: ignore[type-arg]
            return tuple(sorted(d.items(), key=lambda kv: str(kv[0])))

        return State(
            tuple((s, i) for s, i in self.profs),
            items(self.holder),
            items(self.consent),
            items(self.supp),
            items({k: frozenset(v) for k, v in self.person_w.items() if v}),
            items({k: frozenset(v) for k, v in self.addr_w.items() if v}),
        )

    # -- who holds what ----------------------------------------------------------------------
    def root(self, label: int) -> int:
        while self.profs[label][1] != -1:
            label = self.profs[label][1]
        return label

    def holder_of(self, ident: Any) -> int | None:
        label = self.holder.get(ident)
        return None if label is None else self.root(label)

    def held_by(self, root: int) -> list[int]:
        return sorted(a for a in ADDRS if self.holder_of(a) == root)

    def group(self, root: int) -> list[int]:
        return [i for i in range(len(self.profs)) if self.root(i) == root]

    def new_profile(self) -> int:
        self.profs.append(["active", -1])
        return len(self.profs) - 1

    # -- consent -----------------------------------------------------------------------------
    def event(self, a: int, t: int, status: str) -> None:
        cur = self.consent.get(a)
        if cur is None or t > cur[0] or (t == cur[0] and status == "withdrawn" != cur[1]):
            self.consent[a] = (t, status)

    def suppress(self, a: int, channel: str, t: int, why: str) -> None:
        cur = self.supp.get((a, channel))
        if cur is None or t > cur[0]:
            self.supp[(a, channel)] = (t, why)

    def suppressed_at(self, a: int) -> int | None:
        times = [self.supp[k][0] for k in ((a, "email"), (a, "*")) if k in self.supp]
        return max(times) if times else None

    def opt_out_all(self, a: int, t: int, *, carried: bool = False) -> None:
        cur = self.supp.get((a, "*"))
        if carried and cur is not None and cur[0] >= t:
            return
        self.suppress(a, "*", t, "opt_out")
        self.event(a, t, "withdrawn")
        self.addr_w.setdefault(a, set()).add(t)

    def carry(self, root: int, *, person: bool, addresses: bool) -> None:
        """An opt-out of every channel by the customer, or on one of their addresses, reaches
        every address they hold (consent.optout.carry_person_opt_outs)."""
        times: set[int] = set()
        if person:
            for label in self.group(root):
                times |= self.person_w.get(label, set())
        if addresses:
            for a in self.held_by(root):
                row = self.supp.get((a, "*"))
                if row is not None and row[1] != "erasure":
                    times |= self.addr_w.get(a, set())
        if times:
            t = max(times)
            for a in self.held_by(root):
                self.opt_out_all(a, t, carried=True)
            for label in self.group(root):
                self.person_w.setdefault(label, set()).add(t)

    def contactable(self, a: int) -> bool:
        if self.holder_of(a) is None:
            return False
        cur, sup = self.consent.get(a), self.suppressed_at(a)
        return cur is not None and cur[1] == "granted" and (sup is None or cur[0] > sup)

    # -- operations --------------------------------------------------------------------------
    def record(self, a: int, ext: bool) -> tuple[bool, int]:
        """A record of address `a` (and the external id): (created, how many merged)."""
        idents: list[Any] = [a, "x"] if ext else [a]
        hits = sorted({r for i in idents if (r := self.holder_of(i)) is not None})
        if not hits:
            root = self.new_profile()
            for i in idents:
                self.holder[i] = root
            return True, 0
        if len(hits) == 2:  # into the older one
            self.profs[hits[1]] = ["merged", hits[0]]
        root = hits[0]
        gained = [i for i in idents if self.holder_of(i) is None]
        for i in gained:
            self.holder[i] = root
        self.carry(root, person=True, addresses=any(i != "x" for i in gained) or len(hits) == 2)
        return False, len(hits) - 1

    def erase(self, a: int) -> bool:
        root = self.holder_of(a)
        if root is None:
            return False
        for b in self.held_by(root):
            self.suppress(b, "*", NOW, "erasure")
            self.consent.pop(b, None)
            self.addr_w.pop(b, None)
        for i in [i for i in self.holder if self.holder_of(i) == root]:
            del self.holder[i]
        for label in self.group(root):
            self.profs[label] = ["erased", self.profs[label][1]]
            self.person_w.pop(label, None)
        return True

    def profile_view(self, a: int) -> tuple:  # type: ignore[type-arg]
        root = self.holder_of(a)
        if root is None:
            return ("absent",)
        held = self.held_by(root)
        each = tuple(self.contactable(b) for b in held)
        return ("present", tuple(held), any(each), each)


class ConsentModel:
    """The sequential model for the checker: one group's state; `Op.args` as the workload
    writes them, `Op.result` as `observe` reduces the answers."""

    def init(self) -> State:
        return State()

    def step(self, state: State, op: Op) -> State | None:
        w = _Work(state)
        got = op.result
        kind, args = op.kind, op.args
        if kind in ("grant", "withdraw"):
            a, t = args
            held = w.holder_of(a) is not None
            if kind == "grant" and not held:  # a grant of an unknown address makes its customer
                w.holder[a] = w.new_profile()
            w.event(a, t, "granted" if kind == "grant" else "withdrawn")
            want: Any = ("ok", held or kind == "grant")
        elif kind == "opt_out":
            a, channel, t = args
            root = w.holder_of(a)
            if channel == "*" and root is not None:
                for b in w.held_by(root):
                    w.opt_out_all(b, t)
                for label in w.group(root):
                    w.person_w.setdefault(label, set()).add(t)
            elif channel == "*":
                w.opt_out_all(a, t)
            else:
                w.suppress(a, channel, t, "opt_out")
                w.event(a, t, "withdrawn")
            want = ("ok", root is not None)
        elif kind == "unsubscribe":
            (a,) = args
            w.suppress(a, "email", NOW, "unsubscribe")
            w.event(a, NOW, "withdrawn")
            want = "ok"
        elif kind == "record":
            a, ext, claim = args
            created, merged = w.record(a, ext)
            if claim is not None:  # a consent the record carries, for its own address
                status, t = claim
                w.event(a, t, status)
            want = ("ok", created, merged)
        elif kind == "erase":
            (a,) = args
            gone = w.holder_of(a) is None and w.supp.get((a, "*"), (0, ""))[1] == "erasure"
            want = "ok" if w.erase(a) else "absent"
            if gone and got == "ok":  # it joined the request that erased them (still open
                want = "ok"  # when this one was received) and completed with it
        elif kind == "read_profile":
            (a,) = args
            return state if got == w.profile_view(a) else None
        elif kind in ("read_members", "read_export"):
            shown: frozenset[int] = got
            if kind == "read_members":  # one statement: every customer at one moment
                roots = {r for a in ADDRS if (r := w.holder_of(a)) is not None}
                if any(not w.contactable(a) for a in shown):
                    return None
            else:  # the customer holding args[0], at a moment of their own
                root = w.holder_of(args[0])
                if root is None:
                    return None if args[0] in shown else state
                roots = {root}
            for root in roots:
                mine = [a for a in w.held_by(root) if a in shown]
                if any(not w.contactable(a) for a in mine):
                    return None
                if len(mine) != (1 if any(w.contactable(b) for b in w.held_by(root)) else 0):
                    return None
            return state
        else:
            raise AssertionError(f"unknown operation {kind}")
        if got is not None and got != want:
            return None
        return w.freeze()


def split(op: Op) -> Iterable[tuple[Hashable, Op]]:
    """Each group's part of an operation: a members read shows every group's members; a
    batch carries at most one record of each group."""
    if op.kind == "batch":
        for n, (g, *record) in enumerate(op.args):
            part = None if op.result is None else op.result[n]
            yield g, replace(op, kind="record", key=g, args=tuple(record), result=part)
        return
    if op.kind != "read_members":
        yield op.key, op
        return
    for g in op.args[1]:
        part = None if op.result is None else frozenset(a for h, a in op.result if h == g)
        if op.args[0] != "export":
            yield g, replace(op, key=g, result=part)
            continue
        # an export reads each range of profile ids in a transaction of its own
        # (cdp.segments.pages): each customer as they were at some moment of it, two
        # customers perhaps at different moments
        for a in ADDRS:
            yield g, replace(op, kind="read_export", key=g, args=(a,), result=part)


# ---------------------------------------------------------------------------------------------
# the real-time rule, checked directly: its message is plainer than a failed search's
def realtime_violations(ops: list[Op]) -> list[str]:
    """Reads that started after an opt-out, unsubscribe or erasure of an address was answered
    and still handed that address out as contactable, with no grant that occurred after the
    opt-out invoked before the read ended."""
    out = []
    stops = [o for o in ops if o.known and o.kind in ("opt_out", "unsubscribe", "erase")]
    for r in ops:
        if not r.known or r.kind not in ("read_members", "read_profile"):
            continue
        for s in stops:
            if s.complete >= r.invoke or (s.kind == "erase" and s.result != "ok"):
                continue
            g, a = s.key, s.args[0]
            if not _shows(r, g, a):
                continue
            t = s.args[2] if s.kind == "opt_out" else NOW
            lifted = any(
                when > t and o.invoke < r.complete for o, when in grants(ops, g, a)
            )  # fmt: skip
            if not lifted:
                out.append(f"{r} shows address {g}.{a} after {s}")
    return out


def grants(ops: list[Op], g: Hashable, a: int) -> Iterable[tuple[Op, int]]:
    """The operations that may have granted address `a` of group `g`, with the grant's time:
    grants, and records (alone or in a batch) carrying one."""
    for o in ops:
        if o.kind == "grant" and (o.key, o.args[0]) == (g, a):
            yield o, o.args[1]
        parts = [(o.key, *o.args)] if o.kind == "record" else o.args if o.kind == "batch" else []
        for h, b, _, claim in parts:
            if (h, b) == (g, a) and claim is not None and claim[0] == "granted":
                yield o, claim[1]


def _shows(read: Op, g: Hashable, a: int) -> bool:
    if read.kind == "read_members":
        return (g, a) in read.result
    if read.key != g or read.result[0] != "present":
        return False
    _, held, _, each = read.result
    return a in held and each[held.index(a)]


# ---------------------------------------------------------------------------------------------
# the workload
WEIGHTS = {
    "grant": 18,
    "withdraw": 6,
    "opt_out": 8,
    "unsubscribe": 2,
    "record": 12,
    "batch": 3,
    "erase": 2,
    "read_profile": 12,
    "read_members": 12,
}


@dataclass
class Target:
    """A running service and what the workload needs of it: its base URL, a key of each role,
    and the erasure step (`erase(request_id) -> status`, the worker's processing)."""

    base: str
    keys: dict[str, dict[str, str]]
    erase: Any
    conflicts: list[Any] = field(default_factory=list)  # erasures that lost a deadlock


@dataclass
class Plan:
    groups: int = 2
    clients: int = 4
    ops_per_client: int = 8
    minutes: int = 8  # occurred_at: BASE + 0..minutes
    batchers: int = 1  # clients that send only batches (of new customers, and some records
    # of the history's), so that opt-outs arrive while batches are queued
    batches: int = 3  # each
    filler: tuple[int, int] = (100, 300)  # new customers in a batch beside the history's


class Run:
    def __init__(self, target: Target, seed: str, plan: Plan) -> None:
        self.t = target
        self.plan = plan
        self.seed = seed
        self.tag = uuid.uuid4().hex[:10]
        self.source = f"lin{self.tag}"
        self.base_time = (datetime.now(UTC) - timedelta(days=1)).replace(second=0, microsecond=0)
        self.history = History()
        self.tokens: list[tuple[int, int, str]] = []
        self.segment: str | None = None
        self.address = {
            f"lin.{self.tag}.{g}.{a}@example.com": (g, a) for g in range(plan.groups) for a in ADDRS
        }
        self.email = {v: k for k, v in self.address.items()}

    def at(self, t: int) -> str:
        return (self.base_time + timedelta(minutes=t)).isoformat().replace("+00:00", "Z")

    async def run(self) -> History:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=self.t.base, timeout=60) as c:
            r = await c.post(
                "/v1/segments",
                json={
                    "name": f"lin {self.tag}",
                    "purpose": "marketing",
                    "channel": "email",
                    "rules": {"field": "source", "op": "eq", "value": self.source},
                },
                headers=self.t.keys["marketing"],
            )
            assert r.status_code == 201, r.text
            self.segment = r.json()["id"]
        clients = [
            httpx.AsyncClient(base_url=self.t.base, timeout=60, limits=limits)
            for _ in range(self.plan.clients)
        ]
        batchers = [
            httpx.AsyncClient(base_url=self.t.base, timeout=120, limits=limits)
            for _ in range(self.plan.batchers)
        ]
        try:
            await asyncio.gather(
                *(self.client(i, c) for i, c in enumerate(clients)),
                *(self.batcher(len(clients) + i, c) for i, c in enumerate(batchers)),
            )
        finally:
            for c in clients + batchers:
                await c.aclose()
        return self.history

    async def client(self, i: int, c: httpx.AsyncClient) -> None:
        rng = random.Random(f"{self.seed}/{i}")
        kinds = list(WEIGHTS)
        for _ in range(self.plan.ops_per_client):
            kind = rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
            if kind == "unsubscribe" and not self.tokens:
                kind = "opt_out"
            g, a = rng.randrange(self.plan.groups), rng.choice(ADDRS)
            t = rng.randint(0, self.plan.minutes)
            with contextlib.suppress(httpx.TransportError, Unknown):  # its outcome: unknown
                await getattr(self, kind)(i, c, rng, g, a, t)

    async def batcher(self, i: int, c: httpx.AsyncClient) -> None:
        rng = random.Random(f"{self.seed}/{i}")
        for _ in range(self.plan.batches):
            with contextlib.suppress(httpx.TransportError, Unknown):
                await self.batch(i, c, rng, 0, 0, 0)

    def _claim(self, rng: random.Random) -> tuple[str, int] | None:
        x = rng.random()
        if x < 0.45:
            return None
        return ("granted" if x < 0.85 else "withdrawn", rng.randint(0, self.plan.minutes))

    def _record(self, g: int, a: int, ext: bool, claim: tuple[str, int] | None) -> dict:
        body: dict[str, Any] = {"source": self.source, "email": self.email[(g, a)]}
        if ext:
            body["external_id"] = f"x{g}"
        if claim is not None:
            status, t = claim
            c = {"purpose": "marketing", "channel": "email", "status": status}
            c["occurred_at"] = self.at(t)
            if status == "granted":
                c["evidence"] = EVIDENCE  # type: ignore[assignment]
            body["consents"] = [c]
        return body

    # -- operations: each records its invocation, answer and completion ----------------------
    async def grant(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        await self._consent(i, c, g, a, t, "granted")

    async def withdraw(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        await self._consent(i, c, g, a, t, "withdrawn")

    async def _consent(self, i, c, g, a, t, status) -> None:  # type: ignore[no-untyped-def]
        body = {
            "email": self.email[(g, a)],
            "purpose": "marketing",
            "channel": "email",
            "status": status,
            "source": self.source,
            "occurred_at": self.at(t),
        }
        if status == "granted":
            body["evidence"] = EVIDENCE
        kind = "grant" if status == "granted" else "withdraw"
        with self.history.op(i, kind, g, (a, t)) as op:
            r = await c.post("/v1/consents", json=body, headers=self.t.keys["ingest"])
            ok(r, 201)
            op.done(("ok", r.json()["profile_id"] is not None))

    async def opt_out(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        channel = rng.choice(["email", "email", "*"])
        body = {
            "email": self.email[(g, a)],
            "purpose": "marketing",
            "channel": channel,
            "source": self.source,
            "occurred_at": self.at(t),
        }
        with self.history.op(i, "opt_out", g, (a, channel, t)) as op:
            r = await c.post("/v1/opt-outs", json=body, headers=self.t.keys["ingest"])
            ok(r, 200)
            op.done(("ok", bool(r.json()["profile_ids"])))

    async def unsubscribe(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        g, a, token = rng.choice(self.tokens)
        with self.history.op(i, "unsubscribe", g, (a,)) as op:
            r = await c.post(f"/v1/unsubscribe/{token}")
            ok(r, 200)
            op.done("ok")

    async def record(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        ext, claim = rng.random() < 0.6, self._claim(rng)
        body = self._record(g, a, ext, claim)
        with self.history.op(i, "record", g, (a, ext, claim)) as op:
            r = await c.post("/v1/profiles", json=body, headers=self.t.keys["ingest"])
            ok(r, 200, 201)
            out = r.json()
            op.done(("ok", out["created"], len(out["merged_profile_ids"])))

    async def batch(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        """A batch of new customers (another source, so in no segment of the history), and
        at most one record of each of some groups of the history, at random places."""
        mine = [
            (g, rng.choice(ADDRS), rng.random() < 0.6, self._claim(rng))
            for g in range(self.plan.groups)
            if rng.random() < 0.6
        ]
        n = rng.randint(*self.plan.filler)
        records = [
            {"source": f"filler{self.tag}", "email": f"f.{self.tag}.{i}.{rng.random()}@example.com"}
            for _ in range(n)
        ]
        at = sorted(rng.sample(range(n + len(mine)), len(mine)))
        for k, entry in zip(at, mine, strict=True):
            records.insert(k, self._record(*entry))
        with self.history.op(i, "batch", "*", tuple(mine)) as op:
            r = await c.post(
                "/v1/profiles/batch", json={"records": records}, headers=self.t.keys["ingest"]
            )
            ok(r, 200)
            results = r.json()["results"]
            for res in results:
                if "error" in res:
                    raise AssertionError(f"a batch record was refused: {res['error']}")
            op.done(
                tuple(
                    ("ok", results[k]["created"], len(results[k]["merged_profile_ids"])) for k in at
                )
            )

    async def erase(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        body = {"email": self.email[(g, a)], "requested_by": "customer"}
        with self.history.op(i, "erase", g, (a,)) as op:
            r = await c.post("/v1/erasure-requests", json=body, headers=self.t.keys["compliance"])
            if r.status_code in (404, 410):
                op.done("absent")
                return
            ok(r, 202)
            status = await self.t.erase(uuid.UUID(r.json()["request_id"]))
            if status != "completed":
                raise Unknown(f"erasure ended {status}")
            op.done("ok")

    async def read_profile(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        with self.history.op(i, "read_profile", g, (a,)) as op:
            r = await c.get(
                "/v1/profiles", params={"email": self.email[(g, a)]}, headers=self.t.keys["admin"]
            )
            if r.status_code in (404, 410):
                op.done(("absent",))
                return
            ok(r, 200)
            op.done(self._profile_view(g, r.json()))

    def _profile_view(self, g: int, body: dict) -> tuple:  # type: ignore[type-arg]
        held = sorted(
            self.address[x["value"]][1]
            for x in body["identities"]
            if x["kind"] == "email" and x["value"] in self.address
        )
        state = {
            self.address[x["address"]][1]: x
            for x in body["consents"]["items"]
            if x["purpose"] == "marketing" and x["channel"] == "email" and x["address"]
        }
        each = tuple(
            b in state and state[b]["status"] == "granted" and not state[b]["suppressed"]
            for b in held
        )
        flag = body["consents"]["contactable"]["marketing"]["email"]
        return ("present", tuple(held), flag, each)

    async def read_members(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        how = rng.choice(["page", "export", "query"])
        groups = tuple(range(self.plan.groups))
        keys = self.t.keys["marketing"]
        with self.history.op(i, "read_members", "*", (how, groups)) as op:
            if how == "page":
                r = await c.get(
                    f"/v1/segments/{self.segment}/members", params={"limit": 1000}, headers=keys
                )
                ok(r, 200)
                items = r.json()["items"]
                assert r.json()["next_cursor"] is None
            elif how == "export":
                r = await c.get(
                    f"/v1/segments/{self.segment}/export", params={"format": "ndjson"}, headers=keys
                )
                ok(r, 200)
                items = [json.loads(line) for line in r.text.splitlines() if line.strip()]
            else:
                r = await c.post(
                    "/v1/segments/query",
                    json={
                        "purpose": "marketing",
                        "channel": "email",
                        "rules": {"field": "source", "op": "eq", "value": self.source},
                        "limit": 1000,
                    },
                    headers=keys,
                )
                ok(r, 200)
                items = r.json()["items"]
                assert r.json()["next_cursor"] is None
            shown = []
            for m in items:
                where = self.address.get(m["address"])
                if where is None:
                    raise AssertionError(f"a member of another history: {m['profile_id']}")
                shown.append(where)
                if m.get("unsubscribe_token"):
                    self.tokens.append((*where, m["unsubscribe_token"]))
            if len(shown) != len(set(shown)):
                who = [m["profile_id"] for m in items]
                raise AssertionError(f"{how}: an address listed twice: {shown}, profiles {who}")
            op.done(frozenset(shown))


class Unknown(Exception):
    """An answer that does not say whether the operation took effect."""


def ok(r: httpx.Response, *codes: int) -> None:
    if r.status_code in codes:
        return
    if r.status_code >= 500 or r.status_code in (408, 409, 429):
        raise Unknown(f"{r.status_code}")
    raise AssertionError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")


def summary(histories: list[History]) -> dict[str, Any]:
    """Figures of histories: operations by kind and answer, and how many ran at once."""
    by: dict[str, int] = {}
    widest = 0
    for h in histories:
        for op in h.ops:
            what = op.kind if op.known else f"{op.kind}:unknown"
            if op.kind in ("erase", "read_profile") and op.known:
                what += f":{op.result[0] if isinstance(op.result, tuple) else op.result}"
            if op.kind == "read_members" and op.known:
                what += ":some" if op.result else ":none"
            by[what] = by.get(what, 0) + 1
            beside = [o for o in h.ops if o.invoke < op.complete and op.invoke < o.complete]
            widest = max(widest, len(beside))
            if op.kind == "opt_out" and sum(o.kind == "batch" for o in beside) >= 2:
                by["opt_out beside 2+ batches"] = by.get("opt_out beside 2+ batches", 0) + 1
    return {"histories": len(histories), "operations": sum(by.values()), "widest": widest, **by}
