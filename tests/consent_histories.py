"""Concurrent histories of consent operations against a running `cdp serve`, and the
sequential model of the documented rules they are checked against (tests/linearizability.py).

A history has a few customers ("groups"), each with two email addresses (0 and 1), a phone (2)
and an external id that records use to link the addresses (and so merge the customers holding
them), and several clients, each with its own connection, sending one operation after another:

- grant / withdraw: POST /v1/consents naming the address, marketing by email (by sms for the
  phone), with evidence, at an occurred_at of a few minutes (so that the order of two events
  decides nothing: the times do, and ties are common);
- opt_out: POST /v1/opt-outs naming the address, of its channel or of every channel ("*");
- unsubscribe: POST /v1/unsubscribe/{token} with a token from an earlier members read (email
  or sms); stop: a "STOP" texted back from the phone (POST /v1/inbound/sms);
- record: POST /v1/profiles with the address, and maybe the group's external id (a link);
- unmerge: POST /v1/profiles/{id}/unmerge of a profile an earlier answer named (mostly one
  merged away; else a survivor, one never merged, one erased);
- erase: POST /v1/erasure-requests naming the address (one operation), then its processing
  (the erasure worker's `process`, in this process, until completed: another, timed from the
  request's invocation, as the server also starts it right after its answer);
- read_profile: GET /v1/profiles?email= (or phone=): its id, the addresses it holds, each
  one's state and whether an opt-out outranks it, and the `contactable` matrix for email and
  sms;
- read_members: the members of the history's customers for marketing by email or by sms, by a
  saved segment's members page, its NDJSON export, or an ad-hoc query. A page and a query are
  one statement, so every customer is as they were at one moment; an export reads ranges of
  profile ids each in its own transaction, so it is checked customer by customer.

The model (`ConsentModel`) is the rules of docs/design.md "Consent belongs to the address" and
DESIGN §1 in plain Python, per group: the latest event by occurred_at wins (a withdrawal wins a
tie); a suppression (opt-out, unsubscribe, stop reply, erasure) stops contact on its address until a
grant that occurred strictly after it; an opt-out of every channel reaches every address the
customer holds, phone included, and those they gain later; a record linking two customers
merges them into the older (the lower profile id: ids are time-ordered); an unmerge gives the
absorbed profile back what it brought and what was linked through it since, consent staying
with the addresses (what they were opted out of while merged they stay opted out of, and an
every-channel withdrawal of the merged customer binds both), and is refused while an erasure
request of the customer is open; an erasure request is recorded for the customer holding the
address, and its processing erases that customer (with whatever merged into them since) and
suppresses their addresses at the present (after every occurred_at a history uses: final); a
members read shows, of each customer, one contactable address of the channel and only such.
Profile ids are learned from the answers that name them (`_Work.named`).

Where the documents are silent, assumed: an erasure request joins the customer's open one; an
unmerge's answer lists the holder first, then the profiles it restored (in any order).
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

NOW = 10**9  # an unsubscribe's, a stop reply's or an erasure's time: after every occurred_at
ADDRS = (0, 1, 2)  # two emails and a phone
PHONE = 2
CHANNEL = ("email", "email", "sms")  # the marketing channel of each address
ON = {"email": (0, 1), "sms": (PHONE,)}  # the addresses of each channel
EVIDENCE = {"wording_id": "nl-v1", "method": "double_opt_in", "ip": "203.0.113.7"}


# ---------------------------------------------------------------------------------------------
# the sequential model, one group (two emails, a phone, one external id) per state
@dataclass(frozen=True)
class State:
    # per profile label: (status, merged into or -1, its profile id once an answer named it)
    profs: tuple[tuple[str, int, str | None], ...] = ()
    holder: tuple[tuple[Any, int], ...] = ()  # identity (0, 1, 2 or "x") -> profile label
    consent: tuple[tuple[int, tuple[int, str]], ...] = ()  # address -> (occurred, status)
    supp: tuple[tuple[tuple[int, str], tuple[int, str]], ...] = ()  # (addr, channel) -> (t, why)
    person_w: tuple[tuple[int, frozenset[int]], ...] = ()  # label -> every-channel withdrawals
    addr_w: tuple[tuple[int, frozenset[int]], ...] = ()  # address -> the same, on the address
    pending: tuple[tuple[str, int], ...] = ()  # open erasure request -> the profile it found
    finished: frozenset[str] = frozenset()  # erasure requests completed


class _Work:
    """A state being changed: plain dicts, frozen back into a State."""

    def __init__(self, s: State) -> None:
        self.profs = [list(p) for p in s.profs]
        self.holder = dict(s.holder)
        self.consent = dict(s.consent)
        self.supp = dict(s.supp)
        self.person_w = {k: set(v) for k, v in s.person_w}
        self.addr_w = {k: set(v) for k, v in s.addr_w}
        self.pending = dict(s.pending)
        self.finished = set(s.finished)

    def freeze(self) -> State:
        def items(d: dict) -> tuple:  # type: ignore[type-arg]
            return tuple(sorted(d.items(), key=lambda kv: str(kv[0])))

        return State(
            tuple((s, i, u) for s, i, u in self.profs),
            items(self.holder),
            items(self.consent),
            items(self.supp),
            items({k: frozenset(v) for k, v in self.person_w.items() if v}),
            items({k: frozenset(v) for k, v in self.addr_w.items() if v}),
            items(self.pending),
            frozenset(self.finished),
        )

    # -- who holds what ----------------------------------------------------------------------
    def root(self, label: int) -> int:
        while self.profs[label][1] != -1:
            label = self.profs[label][1]
        return label

    def holder_of(self, ident: Any) -> int | None:
        label = self.holder.get(ident)
        return None if label is None else self.root(label)

    def held_by(self, root: int, channel: str | None = None) -> list[int]:
        return sorted(a for a in ON.get(channel, ADDRS) if self.holder_of(a) == root)  # type: ignore[arg-type]

    def group(self, root: int) -> list[int]:
        return [i for i in range(len(self.profs)) if self.root(i) == root]

    def new_profile(self) -> int:
        self.profs.append(["active", -1, None])
        return len(self.profs) - 1

    def named(self, label: int | None, uid: str | None) -> bool:
        """Whether an answer naming profile `uid` (None: no profile) fits `label`: a label's
        profile id is learned from the first answer that names it."""
        if label is None or uid is None:
            return label is None and uid is None
        cur = self.profs[label][2]
        if cur is None and all(p[2] != uid for p in self.profs):
            self.profs[label][2] = cur = uid
        return cur == uid

    def label_of(self, uid: str) -> int | None:
        return next((i for i, p in enumerate(self.profs) if p[2] == uid), None)

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
        times = [self.supp[k][0] for k in ((a, CHANNEL[a]), (a, "*")) if k in self.supp]
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
    def record(self, a: int, ext: bool, uid: str | None) -> tuple[bool, int, list[int]]:
        """A record of address `a` (and the external id), answered naming profile `uid`:
        (created, its customer, the labels it merged into them)."""
        idents: list[Any] = [a, "x"] if ext else [a]
        hits = sorted({r for i in idents if (r := self.holder_of(i)) is not None})
        if not hits:
            root = self.new_profile()
            for i in idents:
                self.holder[i] = root
            return True, root, []
        if len(hits) == 2:  # into the older one
            hits = self.oldest_first(hits, uid)
            self.profs[hits[1]][:2] = ["merged", hits[0]]
        root = hits[0]
        gained = [i for i in idents if self.holder_of(i) is None]
        # linked through the identity the record matched: an unmerge gives it back with that
        # one (cdp.profiles.unmerge: identities.linked_via)
        via = next((self.holder[i] for i in idents if i not in gained), root)
        for i in gained:
            self.holder[i] = via
        self.carry(root, person=True, addresses=any(i != "x" for i in gained) or len(hits) == 2)
        return False, root, hits[1:]

    def oldest_first(self, hits: list[int], uid: str | None) -> list[int]:
        """Two profiles, the older first: the lower id (ids are time-ordered, and taken when
        the profile's transaction begins, so a profile committed later may be the older:
        cdp.profiles.resolution). Where an id is not known yet, the answer says which."""
        ids = [self.profs[h][2] for h in hits]
        if None not in ids:
            return sorted(hits, key=lambda h: self.profs[h][2])  # type: ignore[arg-type,return-value]
        if uid is not None and (ids[1] == uid or (ids[1] is None and ids[0] != uid)):
            return hits[::-1]
        return hits

    def unmerge(self, label: int) -> tuple:  # type: ignore[type-arg]
        """POST /v1/profiles/{id}/unmerge: a merged-away profile's merge is undone (409 while
        the profile that absorbed it is merged itself), a survivor's merges into it all are.
        The identities each absorbed profile brought (and those linked through them since) go
        back with it; consent stays with the addresses, so what they were opted out of while
        merged they stay opted out of; every-channel withdrawals of the merged customer stay
        with both (person_w is kept per label)."""
        status, into, _ = self.profs[label]
        if status == "erased":
            return ("gone",)
        if status == "merged":
            if self.profs[into][0] != "active":
                return ("conflict",)
            holder, undone = into, [label]
        else:
            holder = label
            undone = [i for i, p in enumerate(self.profs) if p[:2] == ["merged", label]]
            if not undone:
                return ("conflict",)
        if any(self.root(i) == holder for i in self.pending.values()):
            return ("conflict",)  # an open erasure erases the customer as it found them
        for i in undone:
            self.profs[i][:2] = ["active", -1]
        return ("ok", holder, undone)

    def erase(self, a: int) -> bool:
        root = self.holder_of(a)
        if root is None:
            return False
        self.erase_customer(root)
        return True

    def erase_customer(self, root: int) -> None:
        for b in self.held_by(root):
            self.suppress(b, "*", NOW, "erasure")
            self.consent.pop(b, None)
            self.addr_w.pop(b, None)
        for i in [i for i in self.holder if self.holder_of(i) == root]:
            del self.holder[i]
        for label in self.group(root):
            self.profs[label][0] = "erased"
            self.person_w.pop(label, None)

    def profile_view(self, a: int, uid: str | None) -> tuple | None:  # type: ignore[type-arg]
        root = self.holder_of(a)
        if root is None:
            return ("absent",)
        if not self.named(root, uid):
            return None
        held = self.held_by(root)
        each = tuple(self.contactable(b) for b in held)
        flags = tuple(any(self.contactable(b) for b in self.held_by(root, c)) for c in ON)
        return ("present", uid, tuple(held), flags, each)


class ConsentModel:
    """The sequential model for the checker: one group's state; `Op.args` as the workload
    writes them, `Op.result` as `observe` reduces the answers."""

    def init(self) -> State:
        return State()

    def step(self, state: State, op: Op) -> State | None:
        w = _Work(state)
        got, kind = op.result, op.kind
        if kind in ("read_members", "read_export"):
            return state if members_fit(w, op) else None
        if kind == "read_profile":
            (a,) = op.args
            uid = got[1] if got[0] == "present" else None
            return w.freeze() if got == w.profile_view(a, uid) else None
        fits = getattr(self, kind)(w, op.args, got)
        return w.freeze() if got is None or fits else None

    # each write: changes `w`, and says whether the answer `got` fits (not None)
    def grant(self, w: _Work, args: tuple, got: Any) -> bool:  # type: ignore[type-arg]
        a, t = args
        root = w.holder_of(a)
        if root is None:  # a grant of an unknown address makes its customer
            root = w.holder[a] = w.new_profile()
        w.event(a, t, "granted")
        return got is None or w.named(root, got[1])

    def withdraw(self, w: _Work, args: tuple, got: Any) -> bool:  # type: ignore[type-arg]
        a, t = args
        w.event(a, t, "withdrawn")
        return got is None or w.named(w.holder_of(a), got[1])

    def opt_out(self, w: _Work, args: tuple, got: Any) -> bool:  # type: ignore[type-arg]
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
        return got is None or w.named(root, got[1])

    def unsubscribe(self, w: _Work, args: tuple, got: Any) -> bool:  # type: ignore[type-arg]
        """A member's link (or a stop reply to a text): that address on its channel, now."""
        (a,) = args
        w.suppress(a, CHANNEL[a], NOW, "unsubscribe")
        w.event(a, NOW, "withdrawn")
        return True

    stop = unsubscribe

    def record(self, w: _Work, args: tuple, got: Any) -> bool:  # type: ignore[type-arg]
        a, ext, claim = args
        created, root, merged = w.record(a, ext, None if got is None else got[2])
        if claim is not None:  # a consent the record carries, for its own address
            status, t = claim
            w.event(a, t, status)
        if got is None:
            return True
        _, was_created, uid, absorbed = got
        return (
            was_created == created
            and len(absorbed) == len(merged)
            and w.named(root, uid)
            and all(w.named(m, u) for m, u in zip(merged, absorbed, strict=True))
        )

    def unmerge(self, w: _Work, args: tuple, got: Any) -> bool:  # type: ignore[type-arg]
        (uid,) = args
        label = w.label_of(uid)
        if label is None:  # the workload unmerges only profiles an answer named
            return False
        done = w.unmerge(label)
        if got is None or done[0] != got[0]:
            return got is None
        if done[0] != "ok":
            return True
        (_, holder, undone), (_, holder_id, undone_ids) = done, got
        if not w.named(holder, holder_id) or len(undone) != len(undone_ids):
            return False
        known = {w.profs[i][2] for i in undone} - {None}
        fresh = [u for u in undone_ids if u not in known]
        unnamed = [i for i in undone if w.profs[i][2] is None]
        return len(fresh) == len(unnamed) and all(  # at most one unnamed: a merge at a time
            w.named(i, u) for i, u in zip(unnamed, fresh, strict=True)
        )

    def erase_request(self, w: _Work, args: tuple, got: Any) -> bool:  # type: ignore[type-arg]
        """POST /v1/erasure-requests: recorded for the customer holding the address (joining
        their open one if any), erased when it is processed (`erase_done`)."""
        (a,) = args
        root = w.holder_of(a)
        if root is None or got is None:
            return got in (None, ("absent",))
        if got[0] != "ok":
            return False
        rid = got[1]
        joined = [r for r, label in w.pending.items() if w.root(label) == root]
        if joined:
            return rid in joined
        if rid in w.pending or rid in w.finished:
            return False
        w.pending[rid] = root
        return True

    def erase_done(self, w: _Work, args: tuple, got: Any) -> bool:  # type: ignore[type-arg]
        """The erasure worker's processing of a request: the customer its profile is part
        of now (a merge since adds to them), unless erased already."""
        _, rid = args
        if rid in w.pending:
            label = w.root(w.pending.pop(rid))
            if w.profs[label][0] != "erased":
                w.erase_customer(label)
            w.finished.add(rid)
            return True
        return rid in w.finished

    def erase(self, w: _Work, args: tuple, got: Any) -> bool:  # type: ignore[type-arg]
        """A request whose answer was lost: it may have erased the customer at any time."""
        (a,) = args
        gone = w.holder_of(a) is None and w.supp.get((a, "*"), (0, ""))[1] == "erasure"
        want = "ok" if w.erase(a) else "absent"
        # a request for a customer erased by one still open when it was received joins it
        # and completes with it
        return got in (want, "ok" if gone else want)


def members_fit(w: _Work, op: Op) -> bool:
    """Whether a members read of one channel shows, of each customer, one contactable
    address of the channel and only such (none where they have none)."""
    shown: frozenset[int] = op.result
    channel = op.args[2]
    if op.kind == "read_members":  # one statement: every customer at one moment
        roots = {r for a in ADDRS if (r := w.holder_of(a)) is not None}
    else:  # the customer holding args[3], at a moment of their own
        root = w.holder_of(op.args[3])
        if root is None:
            return op.args[3] not in shown
        roots = {root}
    if op.kind == "read_members" and any(not w.contactable(a) for a in shown):
        return False
    # addresses whose erasure began before the read ended (`erasures_during`)
    doomed: frozenset[int] = op.args[4] if len(op.args) > 4 else frozenset()
    for root in roots:
        mine = [a for a in w.held_by(root, channel) if a in shown]
        reach = any(w.contactable(b) for b in w.held_by(root, channel))
        if any(not w.contactable(a) for a in mine):
            return False
        if len(mine) == (1 if reach else 0):
            continue
        # left out: the read decrypts its rows after selecting them and drops a customer whose
        # data key an erasure destroyed meanwhile, also one that took an address of theirs away
        # first (an unmerge) while still holding one erased now
        if mine or not doomed & set(w.held_by(root)):
            return False
    return True


def erasures_during(ops: list[Op]) -> dict[int, frozenset[tuple[Hashable, int]]]:
    """For each members read (by index), the (group, address) of the erasures processed that
    began before the read ended: their customer may be left out of it (`members_fit`)."""
    erasing = [o for o in ops if o.kind == "erase_done" and o.result != "absent"]
    return {
        r.index: frozenset((e.key, e.args[0]) for e in erasing if e.invoke < r.complete)
        for r in ops
        if r.kind == "read_members"
    }


def split(
    op: Op, erasing: dict[int, frozenset[tuple[Hashable, int]]] | None = None
) -> Iterable[tuple[Hashable, Op]]:
    """Each group's part of an operation: a members read shows every group's members; a
    batch carries at most one record of each group. `erasing`: `erasures_during`."""
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
        # an export reads each range of profile ids in a transaction of its own
        # (cdp.segments.pages), and a page or a query, one statement, decrypts its rows after
        # it and drops those whose data key is gone (cdp.segments.members: erased since): each
        # customer as they were at some moment of the read, two perhaps at different moments
        doomed = frozenset(a for h, a in (erasing or {}).get(op.index, ()) if h == g)
        for a in ON[op.args[2]]:
            args = (*op.args, a, doomed)
            yield g, replace(op, kind="read_export", key=g, args=args, result=part)


# ---------------------------------------------------------------------------------------------
# the real-time rule, checked directly: its message is plainer than a failed search's
def realtime_violations(ops: list[Op]) -> list[str]:
    """Reads that started after an opt-out, unsubscribe or erasure of an address was answered
    and still handed that address out as contactable, with no grant that occurred after the
    opt-out invoked before the read ended."""
    out = []
    stops = [
        o for o in ops if o.known and o.kind in ("opt_out", "unsubscribe", "stop", "erase_done")
    ]
    for r in ops:
        if not r.known or r.kind not in ("read_members", "read_profile"):
            continue
        for s in stops:
            if s.complete >= r.invoke:
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
    _, _, held, _, each = read.result
    return a in held and each[held.index(a)]


# ---------------------------------------------------------------------------------------------
# the workload
WEIGHTS = {
    "grant": 18,
    "withdraw": 6,
    "opt_out": 8,
    "unsubscribe": 2,
    "stop": 2,
    "record": 14,
    "batch": 3,
    "erase": 2,
    "unmerge": 6,
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
        self.segments: dict[str, str] = {}  # channel -> a saved segment of the history's source
        phones = random.Random(self.tag).sample(range(10**7), plan.groups)
        self.value = {
            (g, a): f"lin.{self.tag}.{g}.{a}@example.com"
            for g in range(plan.groups)
            for a in ON["email"]
        }
        self.value |= {(g, PHONE): f"+7916{phones[g]:07d}" for g in range(plan.groups)}
        self.address = {v: k for k, v in self.value.items()}
        self.pids: dict[int, set[str]] = {g: set() for g in range(plan.groups)}  # answers named
        self.absorbed: dict[int, set[str]] = {g: set() for g in range(plan.groups)}  # merged

    def ident(self, g: int, a: int) -> dict[str, str]:
        return {"phone" if a == PHONE else "email": self.value[(g, a)]}

    def learn(self, g: int, pid: str | None, absorbed: Iterable[str] = ()) -> None:
        if pid is not None:
            self.pids[g].add(pid)
        self.absorbed[g] |= set(absorbed)

    def at(self, t: int) -> str:
        return (self.base_time + timedelta(minutes=t)).isoformat().replace("+00:00", "Z")

    async def run(self) -> History:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=self.t.base, timeout=60) as c:
            for channel in ON:
                r = await c.post(
                    "/v1/segments",
                    json={
                        "name": f"lin {self.tag} {channel}",
                        "purpose": "marketing",
                        "channel": channel,
                        "rules": {"field": "source", "op": "eq", "value": self.source},
                    },
                    headers=self.t.keys["marketing"],
                )
                assert r.status_code == 201, r.text
                self.segments[channel] = r.json()["id"]
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
            g, a = rng.randrange(self.plan.groups), rng.choice(ADDRS)
            if kind == "unsubscribe" and not self.tokens:
                kind = "opt_out"
            if kind == "unmerge" and not self.absorbed[g] and rng.random() < 0.6:
                kind = "record"  # rather one that may merge
            if kind == "unmerge" and not self.pids[g]:
                kind = "read_profile"
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
        body: dict[str, Any] = {"source": self.source, **self.ident(g, a)}
        if ext:
            body["external_id"] = f"x{g}"
        if claim is not None:
            status, t = claim
            c = {"purpose": "marketing", "channel": CHANNEL[a], "status": status}
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
            **self.ident(g, a),
            "purpose": "marketing",
            "channel": CHANNEL[a],
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
            pid = r.json()["profile_id"]
            op.done(("ok", pid))
        self.learn(g, pid)

    async def opt_out(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        channel = rng.choice([CHANNEL[a], CHANNEL[a], "*"])
        body = {
            **self.ident(g, a),
            "purpose": "marketing",
            "channel": channel,
            "source": self.source,
            "occurred_at": self.at(t),
        }
        with self.history.op(i, "opt_out", g, (a, channel, t)) as op:
            r = await c.post("/v1/opt-outs", json=body, headers=self.t.keys["ingest"])
            ok(r, 200)
            pids = r.json()["profile_ids"]
            assert len(pids) <= 1, f"an opt-out reached {len(pids)} profiles"
            op.done(("ok", pids[0] if pids else None))

    async def unsubscribe(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        g, a, token = rng.choice(self.tokens)
        with self.history.op(i, "unsubscribe", g, (a,)) as op:
            r = await c.post(f"/v1/unsubscribe/{token}")
            ok(r, 200)
            op.done("ok")

    async def stop(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        """A "STOP" texted back from the group's phone."""
        body = {"from": self.value[(g, PHONE)], "text": rng.choice(["STOP", "стоп"])}
        with self.history.op(i, "stop", g, (PHONE,)) as op:
            r = await c.post("/v1/inbound/sms", json=body, headers=self.t.keys["ingest"])
            ok(r, 200)
            assert r.json()["stop"] is True, r.text
            op.done("ok")

    async def record(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        ext, claim = rng.random() < 0.7, self._claim(rng)
        body = self._record(g, a, ext, claim)
        with self.history.op(i, "record", g, (a, ext, claim)) as op:
            r = await c.post("/v1/profiles", json=body, headers=self.t.keys["ingest"])
            ok(r, 200, 201)
            out = r.json()
            op.done(("ok", out["created"], out["profile_id"], tuple(out["merged_profile_ids"])))
        self.learn(g, out["profile_id"], out["merged_profile_ids"])

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
            answers = [results[k] for k in at]
            merged = [tuple(x.get("merged_profile_ids", ())) for x in answers]
            op.done(
                tuple(
                    ("ok", x["created"], x["profile_id"], m)
                    for x, m in zip(answers, merged, strict=True)
                )
            )
        for (g, *_), x, m in zip(mine, answers, merged, strict=True):
            self.learn(g, x["profile_id"], m)

    async def unmerge(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        """POST /v1/profiles/{id}/unmerge of a profile an answer named: mostly one that was
        merged away, else any (a survivor, one never merged, one erased since)."""
        absorbed = sorted(self.absorbed[g])
        pid = rng.choice(absorbed if absorbed and rng.random() < 0.7 else sorted(self.pids[g]))
        with self.history.op(i, "unmerge", g, (pid,)) as op:
            r = await c.post(f"/v1/profiles/{pid}/unmerge", headers=self.t.keys["admin"])
            if r.status_code == 410:
                op.done(("gone",))
                return
            if r.status_code == 409 and "try again" not in r.json()["detail"]:
                op.done(("conflict",))
                return
            ok(r, 200)
            holder, *undone = r.json()["profile_ids"]
            op.done(("ok", holder, tuple(sorted(undone))))
        self.learn(g, holder, ())

    async def erase(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        """An erasure request (an operation of its own), then its processing (another, from
        the request's invocation on: the server starts it right after its answer)."""
        body = {**self.ident(g, a), "requested_by": "customer"}
        with self.history.op(i, "erase_request", g, (a,)) as asked:
            try:
                r = await c.post(
                    "/v1/erasure-requests", json=body, headers=self.t.keys["compliance"]
                )
                if r.status_code in (404, 410):
                    asked.done(("absent",))
                    return
                ok(r, 202)
            except BaseException:
                asked.kind = "erase"  # a request that may exist: erased at any time, or not
                raise
            rid = r.json()["request_id"]
            asked.done(("ok", rid))
        with self.history.op(i, "erase_done", g, (a, rid)) as op:
            op.invoke = asked.invoke
            status = await self.t.erase(uuid.UUID(rid))
            if status != "completed":
                raise Unknown(f"erasure ended {status}")
            op.done("ok")

    async def read_profile(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        with self.history.op(i, "read_profile", g, (a,)) as op:
            r = await c.get("/v1/profiles", params=self.ident(g, a), headers=self.t.keys["admin"])
            if r.status_code in (404, 410):
                op.done(("absent",))
                return
            ok(r, 200)
            op.done(self._profile_view(g, r.json()))
        self.learn(g, r.json()["profile_id"])

    def _profile_view(self, g: int, body: dict) -> tuple:  # type: ignore[type-arg]
        held = sorted(
            self.address[x["value"]][1]
            for x in body["identities"]
            if x["kind"] in ("email", "phone") and x["value"] in self.address
        )
        state = {
            self.address[x["address"]][1]: x
            for x in body["consents"]["items"]
            if x["purpose"] == "marketing"
            and x["address"] in self.address
            and x["channel"] == CHANNEL[self.address[x["address"]][1]]
        }
        each = tuple(
            b in state and state[b]["status"] == "granted" and not state[b]["suppressed"]
            for b in held
        )
        flags = tuple(body["consents"]["contactable"]["marketing"][channel] for channel in ON)
        return ("present", body["profile_id"], tuple(held), flags, each)

    async def read_members(self, i, c, rng, g, a, t) -> None:  # type: ignore[no-untyped-def]
        how = rng.choice(["page", "export", "query"])
        channel = rng.choice(["email", "email", "sms"])
        groups = tuple(range(self.plan.groups))
        keys = self.t.keys["marketing"]
        segment = self.segments[channel]
        with self.history.op(i, "read_members", "*", (how, groups, channel)) as op:
            if how == "page":
                r = await c.get(
                    f"/v1/segments/{segment}/members", params={"limit": 1000}, headers=keys
                )
                ok(r, 200)
                items = r.json()["items"]
                assert r.json()["next_cursor"] is None
            elif how == "export":
                r = await c.get(
                    f"/v1/segments/{segment}/export", params={"format": "ndjson"}, headers=keys
                )
                ok(r, 200)
                items = [json.loads(line) for line in r.text.splitlines() if line.strip()]
            else:
                r = await c.post(
                    "/v1/segments/query",
                    json={
                        "purpose": "marketing",
                        "channel": channel,
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
                if CHANNEL[where[1]] != channel:
                    raise AssertionError(f"a member by {channel} at an address of another kind")
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
            if op.kind in ("erase_request", "read_profile", "unmerge") and op.known:
                what += f":{op.result[0] if isinstance(op.result, tuple) else op.result}"
            if op.kind in ("record", "batch") and op.known:
                parts = [op.result] if op.kind == "record" else op.result
                merges = sum(len(part[3]) for part in parts)
                by["merges"] = by.get("merges", 0) + merges
            if op.kind == "read_members" and op.known:
                what += ":some" if op.result else ":none"
            by[what] = by.get(what, 0) + 1
            beside = [o for o in h.ops if o.invoke < op.complete and op.invoke < o.complete]
            widest = max(widest, len(beside))
            if op.kind == "opt_out" and sum(o.kind == "batch" for o in beside) >= 2:
                by["opt_out beside 2+ batches"] = by.get("opt_out beside 2+ batches", 0) + 1
    return {"histories": len(histories), "operations": sum(by.values()), "widest": widest, **by}
