"""Model-based property test: consent across merges, unmerges and erasures, and segments.

Random sequences of records that link addresses (and so merge profiles), grants and
withdrawals naming an address or the whole profile (email, sms, push), opt-outs (one channel,
push, every channel), one-click unsubscribes with links handed out earlier, unmerges and
erasures run through the domain functions, and after every step the platform is compared with
a small reference model of the documented rules (docs/design.md "Consent belongs to the address",
"Opt-out wins, at once", the unmerge and erasure sections; DESIGN §1):

- who holds which address: a record joins the profile its identifiers name, one linking two
  profiles merges them into the oldest (lowest id); an unmerge gives back what the absorbed
  profile brought and what was linked through it later; an erasure removes the customer;
- per address: the latest event by time wins (a withdrawal wins a tie); a suppression (an
  opt-out, an unsubscribe, an erasure) stops contact until a grant that occurred strictly
  after it; an undated grant never undoes a withdrawal or a suppression; a withdrawal or
  opt-out of every channel ("*") also reaches the addresses the person holds later (carried
  as an opt-out at its time);
- push is the profile's: a merge keeps the more restrictive state, an unmerge gives the
  absorbed customer their state from before it, a grant recorded while merged counts for
  neither and a withdrawal recorded while merged binds both; a suppression of any address the
  customer holds stops it;
- `address_decision` and `consent_view` (the Python rule) agree with the model, and segment
  members (the query members pages, exports and ad-hoc queries go through) hand out only
  customers the model and the rule call contactable, with an address they hold (of those, the
  latest confirmed), one item per customer, and every contactable customer; an export hands
  out the same;
- after each example `GET /v1/audit/verify`'s verification (chain, derived state,
  suppressions, erasure requests) is ok.

Examples share the test's database: each uses addresses and a record source of its own, and
its segments select that source.

The defects it found are mended, their minimised cases in
tests/test_unmerge_withdrawals_while_merged.py. An address grant that named the whole merged
profile is not asserted once that merge is undone: it counts for neither customer unless the
address's own entries grant it (consent.merged_consent), which this model does not follow.

CI runs a fixed, derandomized set; `CDP_MODEL_EXAMPLES=1000` hunts further with random seeds.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as _event
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from sqlalchemy import select

from cdp.db.tables import identities, profiles
from cdp.errors import Conflict, DomainError, Gone, InvalidInput, NotFound
from cdp.ids import utcnow
from cdp.matching.decisions import merge_reviewed
from cdp.platform import Platform
from cdp.profiles.identifiers import parse_identifier
from cdp.profiles.service import upsert_one
from cdp.profiles.unmerge import unmerge
from cdp.segments.members import members_page
from cdp.segments.pages import member_pages
from cdp.segments.service import build_definition
from consent.audit.verify import snapshot, verify_ledger
from consent.dsr.consistency import requests_report
from consent.dsr.erasure import process
from consent.dsr.requests import submit_erasure
from consent.dsr_tables import dsr_requests
from consent.optout import opt_out, sms_stop, unsubscribe
from consent.schemas import ConsentIn, EvidenceIn
from consent.service import address_decision, consent_view, record_consent

BASE = datetime(2026, 1, 1, tzinfo=UTC)
PEOPLE = 2  # emails 0..1, phones 2..3: few, so that records often link and merge them
ADDRESSES = 2 * PEOPLE
KIND = ["email"] * PEOPLE + ["phone"] * PEOPLE
CHANNEL = {"email": "email", "phone": "sms"}  # the marketing channel each address is checked on
EVIDENCE = EvidenceIn(wording_id="nl-v1", method="checkbox")
HUNT = int(os.environ.get("CDP_MODEL_EXAMPLES", "0"))
_ns = itertools.count(1)

YES, NO, EITHER = "yes", "no", "either"


def event(what: str) -> None:
    """What an example did, for `--hypothesis-show-statistics` (nothing outside hypothesis)."""
    with contextlib.suppress(InvalidArgument):
        _event(what)


# ---------------------------------------------------------------------------------------------
# operations: indexes only, so that hypothesis shrinks them to short, readable sequences
when = st.one_of(st.integers(0, 20), st.just("now"))  # BASE + minutes, or the present
person = st.integers(0, PEOPLE - 1)
address = st.integers(0, ADDRESSES - 1)
label = st.integers(0, 7)  # a profile of the model, modulo how many there are
# a grant a record carries (for its own address, or push): dated, or undated (None)
claiming = st.tuples(st.sampled_from(["email", "sms", "push"]), st.one_of(when, st.none()))
claim = st.one_of(st.none(), claiming)
status = st.sampled_from(["granted", "withdrawn"])
op = st.one_of(
    st.tuples(st.just("record"), person, st.none(), claim),  # an email alone
    st.tuples(st.just("record"), st.none(), person, claim),  # a phone alone
    st.tuples(st.just("record"), person, person, claim),  # both: links them (or merges)
    st.tuples(st.just("merge"), st.integers(0, 8), claim),  # a record linking two customers
    st.tuples(st.just("reviewed"), st.integers(0, 8)),  # an accepted match suggestion
    st.tuples(st.just("consent"), address, status, when),  # naming the address, its channel
    st.tuples(st.just("grant_profile"), label, st.sampled_from(["email", "sms"]), when),
    st.tuples(st.just("withdraw_profile"), label, when),  # every channel ("*")
    st.tuples(st.just("push"), address, status, when),  # push, naming an address
    st.tuples(st.just("push_profile"), label, status, when),  # push, naming the profile
    st.tuples(st.just("opt_out"), address, st.sampled_from(["own", "*", "push"]), when),
    st.tuples(st.just("unmerge"), st.integers(0, 3)),  # of a profile with a merge to undo
    st.tuples(st.just("unmerge"), st.integers(0, 3)),
    st.tuples(st.just("unmerge_any"), label),  # any profile (409, 410 where nothing to undo)
    st.tuples(st.just("erase"), st.integers(0, 5)),  # the customer holding the n-th address
    st.tuples(st.just("unsubscribe"), st.integers(0, 30)),  # a member's link, handed out before
    st.tuples(st.just("stop"), person),  # an SMS "STOP" from the person's phone
)
# customers first: records of an email, a phone or both, and grants that make their customer
setup = st.one_of(
    st.tuples(st.just("record"), person, st.none(), claim),
    st.tuples(st.just("record"), st.none(), person, claim),
    st.tuples(st.just("record"), person, person, claim),
    st.tuples(st.just("consent"), address, st.just("granted"), when),
    st.tuples(st.just("push"), address, st.just("granted"), when),
)
free = st.lists(op, min_size=5, max_size=14)
# a wrong merge, what is said while it stands, its undoing, and the records that follow
while_merged = st.one_of(
    st.tuples(st.just("withdraw_profile"), label, when),
    st.tuples(st.just("push_profile"), label, status, when),
    st.tuples(st.just("push"), address, status, when),
    st.tuples(st.just("consent"), address, status, when),
    st.tuples(st.just("grant_profile"), label, st.sampled_from(["email", "sms"]), when),
    st.tuples(st.just("opt_out"), address, st.sampled_from(["own", "*", "push"]), when),
    st.tuples(st.just("erase"), st.integers(0, 5)),
    op,
)
afterwards = st.one_of(
    st.tuples(st.just("erase"), st.integers(0, 5)),
    st.tuples(st.just("record"), person, person, claiming),
    st.tuples(st.just("record"), person, st.none(), claiming),
    st.tuples(st.just("record"), st.none(), person, claiming),
    op,
)
merged_for_a_while = st.tuples(
    st.one_of(
        st.tuples(st.just("merge"), st.integers(0, 8), claim),
        st.tuples(st.just("reviewed"), st.integers(0, 8)),
    ).map(lambda x: [x]),
    st.lists(while_merged, min_size=1, max_size=5),
    st.tuples(st.just("unmerge"), st.integers(0, 3)).map(lambda x: [x]),
    st.lists(afterwards, min_size=1, max_size=5),
).map(lambda parts: [o for part in parts for o in part])
then = st.integers(0, 3).flatmap(lambda i: free if i == 0 else merged_for_a_while)


# ---------------------------------------------------------------------------------------------
# the reference model
@dataclass
class Prof:
    pid: uuid.UUID
    status: str = "active"  # active | merged | erased
    into: int | None = None  # the profile it was merged into


@dataclass(frozen=True)
class State:
    at: datetime
    status: str
    seq: int = 0  # the model's ledger position of the entry that set it (push)
    merges: frozenset[int] = frozenset()  # an address grant naming the profile while these stood
    either: bool = False  # such a grant, after one of those merges was undone


@dataclass
class MergeRow:
    survivor: int
    absorbed: int
    idents: set[tuple[int, int]]  # the absorbed profile's identities: (address, generation)
    repointed: list[int]  # profiles merged into the absorbed one before, re-pointed
    seq: int  # the model's ledger head at the merge
    push_before: tuple[State | None, State | None]  # (absorbed, survivor) before the merge
    push_after: State | None  # the survivor's after it, where the merge changed it
    push_withdrawals: list[State] = field(default_factory=list)  # recorded while it stood
    undone: bool = False


def supersedes(new: State, cur: State | None) -> bool:
    if cur is None or new.at != cur.at:
        return cur is None or new.at > cur.at
    return new.status == "withdrawn" and cur.status != "withdrawn"


@dataclass
class Model:
    profs: list[Prof] = field(default_factory=list)
    merges: list[MergeRow] = field(default_factory=list)
    holder: dict[int, int] = field(default_factory=dict)  # address -> profile holding it
    gen: dict[int, int] = field(default_factory=dict)  # address -> identity generation
    via: dict[int, tuple[int, int] | None] = field(default_factory=dict)  # linked through
    state: dict[int, State] = field(default_factory=dict)  # address -> its channel's state
    push: dict[int, State] = field(default_factory=dict)  # profile -> its push state
    supp: dict[tuple[int, str], tuple[datetime, str]] = field(default_factory=dict)
    # withdrawals of every channel, carried to addresses learned later:
    person_w: dict[int, set[datetime]] = field(default_factory=dict)  # by profile
    addr_w: dict[int, set[datetime]] = field(default_factory=dict)  # by address (since erasure)
    confirmed: dict[int, datetime] = field(default_factory=dict)  # its latest effective grant
    seq: int = 0

    # -- who holds what -------------------------------------------------------------------
    def root(self, lab: int) -> int:
        while self.profs[lab].into is not None:
            lab = self.profs[lab].into  # type: ignore[assignment]
        return lab

    def group(self, root: int) -> list[int]:
        return [root] + [i for i, p in enumerate(self.profs) if p.into == root]

    def held_by(self, root: int) -> list[int]:
        return sorted(a for a, h in self.holder.items() if h == root)

    def standing(self, root: int) -> list[int]:
        return [
            i for i, m in enumerate(self.merges) if not m.undone and self.root(m.survivor) == root
        ]

    def new_profile(self, pid: uuid.UUID) -> int:
        self.profs.append(Prof(pid))
        self.person_w[len(self.profs) - 1] = set()
        return len(self.profs) - 1

    def attach(self, a: int, root: int, via: int | None) -> None:
        self.gen[a] = self.gen.get(a, 0) + 1
        self.holder[a] = root
        self.confirmed.pop(a, None)  # a new identity: confirmed by grants from now on
        self.via[a] = None if via is None else (via, self.gen[via])

    def merge(self, survivor: int, absorbed: int) -> None:
        repointed = [i for i, p in enumerate(self.profs) if p.into == absorbed]
        idents = {(a, self.gen[a]) for a in self.held_by(absorbed)}
        a_push, s_push = self.push.pop(absorbed, None), self.push.get(survivor)
        after = None  # consent.state.merge_profile_states: the more restrictive state wins
        if a_push is not None and s_push is None:
            after = a_push
        elif a_push is not None and s_push is not None and a_push.status != s_push.status:
            # the absorbed customer's withdrawal wins; the survivor's stays as it is
            after = (
                replace(a_push, at=max(a_push.at, s_push.at))
                if s_push.status == "granted"
                else None
            )
        if after is not None:
            self.push[survivor] = after
        self.merges.append(
            MergeRow(survivor, absorbed, idents, repointed, self.seq, (a_push, s_push), after)
        )
        for i in repointed:
            self.profs[i].into = survivor
        self.profs[absorbed].status, self.profs[absorbed].into = "merged", survivor
        for a in self.held_by(absorbed):
            self.holder[a] = survivor

    def unmerge_plan(self, lab: int) -> list[int] | type[DomainError]:
        """The merges an unmerge of this profile undoes (newest first), or the error."""
        p = self.profs[lab]
        if p.status == "erased":
            return Gone
        if p.status == "merged":
            m = next(i for i, m in enumerate(self.merges) if m.absorbed == lab and not m.undone)
            return [m] if self.profs[self.merges[m].survivor].status == "active" else Conflict
        todo = [i for i, m in enumerate(self.merges) if m.survivor == lab and not m.undone]
        return sorted(todo, reverse=True) or Conflict

    def undo(self, mi: int) -> None:
        m = self.merges[mi]
        s, a_lab = m.survivor, m.absorbed
        held = self.held_by(s)
        back = {a for a in held if (a, self.gen[a]) in m.idents}
        grew = True
        while grew:  # identities linked later through one that goes back follow it
            grew = False
            for a in held:
                if a not in back and self.via[a] in {(b, self.gen[b]) for b in back}:
                    back.add(a)
                    grew = True
        for a in back:
            self.holder[a] = a_lab
        self.profs[a_lab].status, self.profs[a_lab].into = "active", None
        for i in m.repointed:
            if self.profs[i].into == s:
                self.profs[i].into = a_lab
        m.undone = True
        for a, st_ in self.state.items():  # an address grant that named the merged profile
            if mi in st_.merges and st_.status == "granted":
                self.state[a] = replace(st_, either=True)
        # push: the absorbed customer's state from before the merge, bound by the withdrawals
        # recorded while merged; the survivor's goes back where nothing changed it since
        mine = self.push.get(s)
        theirs = m.push_before[0]
        for w in m.push_withdrawals:
            if supersedes(w, theirs):
                theirs = w
        self.push.pop(a_lab, None)
        if theirs is not None:
            self.push[a_lab] = theirs
        if m.push_after is not None and mine == m.push_after:
            if m.push_before[1] is None:
                self.push.pop(s, None)
            else:
                self.push[s] = m.push_before[1]
        cur = self.push.get(s)  # a grant recorded while merged counts for neither
        if cur is not None and cur.status == "granted" and cur.seq > m.seq:
            # the unmerge's own withdrawal, not the customer's: it binds no one
            self.push_event(s, utcnow(), "withdrawn", binds=False)

    # -- consent ---------------------------------------------------------------------------
    def event(self, a: int, at: datetime, status: str, merges: frozenset[int] = frozenset()):
        new = State(at, status, merges=merges)
        if supersedes(new, self.state.get(a)):
            self.state[a] = new
            if status == "granted" and a in self.holder:  # it confirms the address
                self.confirmed[a] = max(at, self.confirmed.get(a, at))

    def push_event(self, root: int, at: datetime, status: str, *, binds: bool = True) -> None:
        self.seq += 1
        new = State(at, status, self.seq)
        if supersedes(new, self.push.get(root)):
            self.push[root] = new
        if status == "withdrawn" and binds:
            for mi in self.standing(root):
                self.merges[mi].push_withdrawals.append(new)

    def undated_grant(self, a: int, at: datetime) -> None:
        if self.state.get(a) is not None or self.suppressed_at(a) is not None:
            return  # granted already, withdrawn, or suppressed: an undated grant says nothing
        self.event(a, at, "granted")

    def undated_push_grant(self, root: int, at: datetime) -> None:
        if self.push.get(root) is not None or self.push_suppressed_at(root) is not None:
            return
        self.push_event(root, at, "granted")

    def suppress(self, a: int, channel: str, at: datetime, reason: str) -> None:
        cur = self.supp.get((a, channel))
        if cur is None or at > cur[0]:
            self.supp[(a, channel)] = (at, reason)

    def suppressed_at(self, a: int, channel: str | None = None) -> datetime | None:
        keys = ((a, channel or CHANNEL[KIND[a]]), (a, "*"))
        times = [self.supp[k][0] for k in keys if k in self.supp]
        return max(times) if times else None

    def push_suppressed_at(self, root: int) -> datetime | None:
        times = [t for a in self.held_by(root) if (t := self.suppressed_at(a, "push"))]
        return max(times) if times else None

    def opt_out_all(self, a: int, at: datetime, *, carried: bool = False) -> None:
        """An opt-out of every channel written on this address (by the opt-out itself, or
        carried to an address learned later: then skipped where suppressed since)."""
        cur = self.supp.get((a, "*"))
        if carried and cur is not None and cur[0] >= at:
            return
        self.suppress(a, "*", at, "opt_out")
        self.event(a, at, "withdrawn")
        self.addr_w.setdefault(a, set()).add(at)

    def person_withdrew(self, root: int, at: datetime) -> None:
        """A withdrawal of every channel recorded on the (possibly merged) profile: it binds
        every customer merged into it, also after an unmerge (fail closed)."""
        for lab in self.group(root):
            self.person_w[lab].add(at)

    def carry(self, root: int, *, person: bool, addresses: bool) -> None:
        """consent.optout.carry_person_opt_outs after a record: the latest withdrawal of every
        channel of the person (and, where the profile gained an address or a merge, of every
        address it holds that was opted out of every channel) reaches all its addresses."""
        times: set[datetime] = set()
        if person:
            for lab in self.group(root):
                times |= self.person_w[lab]
        if addresses:
            for a in self.held_by(root):
                row = self.supp.get((a, "*"))
                if row is not None and row[1] != "erasure":
                    times |= self.addr_w.get(a, set())
        if times:
            at = max(times)
            for a in self.held_by(root):
                self.opt_out_all(a, at, carried=True)
            self.person_withdrew(root, at)

    def erase(self, root: int, at: datetime) -> None:
        for a in self.held_by(root):
            self.suppress(a, "*", at, "erasure")
            self.state.pop(a, None)
            self.addr_w[a] = set()
            del self.holder[a]
        for lab in self.group(root):
            self.profs[lab].status = "erased"
            self.push.pop(lab, None)

    # -- the rule ------------------------------------------------------------------------------
    def contactable(self, a: int) -> str:
        if a not in self.holder:
            return NO
        cur, sup = self.state.get(a), self.suppressed_at(a)
        if cur is None or cur.status != "granted" or (sup is not None and not cur.at > sup):
            return NO
        return EITHER if cur.either else YES

    def push_contactable(self, root: int) -> str:
        cur, sup = self.push.get(root), self.push_suppressed_at(root)
        if cur is None or cur.status != "granted" or (sup is not None and not cur.at > sup):
            return NO
        return YES


def agreed(answers: list[str]) -> str:
    """What both variants say, or EITHER where they differ (a known defect)."""
    return answers[0] if len(set(answers)) == 1 else EITHER


# ---------------------------------------------------------------------------------------------
# the platform side
@dataclass
class World:
    p: Platform
    ns: int
    models: list[Model] = field(default_factory=lambda: [Model()])
    # unsubscribe links handed out by members reads: (address or None for push, profile, token)
    links: list[tuple[int | None, int, str]] = field(default_factory=list)

    @property
    def m(self) -> Model:  # holders and profiles are the same in both variants
        return self.models[0]

    @property
    def source(self) -> str:  # of every record and consent of the example: its segment
        return f"s{self.ns}"

    def value(self, a: int) -> str:
        i = a % PEOPLE
        if KIND[a] == "email":
            return f"m{self.ns}.{i}@example.com"
        return f"+7916{self.ns % 100000:05d}{i}7"

    def ident(self, a: int):  # type: ignore[no-untyped-def]
        return parse_identifier(self.p.policy, self.p.keys.indexer, **{KIND[a]: self.value(a)})

    def profile_ident(self, lab: int):  # type: ignore[no-untyped-def]
        pid = str(self.m.profs[lab].pid)
        return parse_identifier(self.p.policy, self.p.keys.indexer, profile_id=pid)

    def bidx(self, a: int) -> bytes:
        idx = self.p.keys.indexer
        return idx.email(self.value(a)) if KIND[a] == "email" else idx.phone(self.value(a))

    def label(self, n: int) -> int | None:
        return n % len(self.m.profs) if self.m.profs else None

    def contactable(self, a: int) -> str:
        return agreed([m.contactable(a) for m in self.models])

    def push_contactable(self, root: int) -> str:
        return agreed([m.push_contactable(root) for m in self.models])

    def confirmed(self, a: int) -> datetime:
        """When the address's latest effective grant occurred (where the variants differ on
        whether a grant was effective, the variant in which it was: the address is
        contactable, so one was)."""
        return max(m.confirmed[a] for m in self.models if a in m.confirmed)

    def note_variants(self) -> None:
        """Whether a known defect made a difference in this example (statistics only)."""
        roots = {self.m.holder[a] for a in self.m.holder}
        if any(len({m.contactable(a) for m in self.models}) > 1 for a in range(ADDRESSES)) or any(
            len({m.push_contactable(r) for m in self.models}) > 1 for r in roots
        ):
            event("a known defect made a difference")


def at_of(w: int | str) -> datetime:
    return utcnow() if w == "now" else BASE + timedelta(minutes=w)  # type: ignore[operator]


async def consent(w: World, ident, channel: str, status: str, at: datetime):  # type: ignore[no-untyped-def]
    body = ConsentIn(
        purpose="marketing",
        channel=channel,
        status=status,
        source=w.source,
        occurred_at=at,
        evidence=EVIDENCE if status == "granted" else None,
    )
    return await record_consent(w.p, body, ident, "t")


async def record(w: World, e: int | None, f: int | None, claimed) -> None:  # type: ignore[no-untyped-def]
    """A record with an email and/or a phone, maybe carrying a grant for its own address."""
    addrs = [a for a in (e, None if f is None else PEOPLE + f) if a is not None]
    raw: dict = {"source": w.source}  # type: ignore[type-arg]
    for a in addrs:
        raw[KIND[a]] = w.value(a)
    grant = None  # (the address or "push", its time or None)
    if claimed is not None:
        channel, t = claimed
        mine = [a for a in addrs if CHANNEL[KIND[a]] == channel]
        if mine or channel == "push":
            grant = (mine[0] if mine else "push", None if t is None else at_of(t))
            c = {"purpose": "marketing", "channel": channel, "status": "granted"}
            c["evidence"] = {"wording_id": "nl-v1"}  # type: ignore[assignment]
            if grant[1] is not None:
                c["occurred_at"] = grant[1].isoformat()
            raw["consents"] = [c]
    out = await upsert_one(w.p, raw, "t")
    recorded = utcnow()  # an undated grant's time: when it was recorded
    m0 = w.m
    known = [a for a in addrs if a in m0.holder]
    hits = list(dict.fromkeys(m0.holder[a] for a in known))
    assert out.created == (not hits)
    if len(hits) == 2:
        survivor, absorbed = sorted(hits, key=lambda lab: m0.profs[lab].pid)
        assert out.merged_profile_ids == [m0.profs[absorbed].pid]
        event("merged")
    for m in w.models:
        if not hits:
            root = m.new_profile(out.profile_id)
            for a in addrs:
                m.attach(a, root, None)
            if len(addrs) >= 2:
                m.carry(root, person=False, addresses=True)
        else:
            if len(hits) == 2:
                m.merge(survivor, absorbed)
            root = m.root(hits[0])
            gained = [a for a in addrs if a not in m.holder]
            for a in gained:
                m.attach(a, root, known[0])
            m.carry(root, person=True, addresses=bool(gained) or len(hits) == 2)
        assert out.profile_id == m.profs[root].pid
        if grant is not None:
            target, at = grant
            if target == "push":
                if at is None:
                    m.undated_push_grant(root, recorded)
                else:
                    m.push_event(root, at, "granted")
            elif at is None:
                m.undated_grant(target, recorded)
            else:
                m.event(target, at, "granted")


async def apply(w: World, step: tuple) -> None:  # type: ignore[type-arg]
    """Run one operation on the platform and on both variants of the model."""
    p, m0 = w.p, w.m
    kind = step[0]
    if kind == "record":
        await record(w, step[1], step[2], step[3])
    elif kind == "merge":  # the n-th pair of an email and a phone held by two customers
        pairs = [
            (a, b)
            for a in range(PEOPLE)
            for b in range(PEOPLE, ADDRESSES)
            if a in m0.holder and b in m0.holder and m0.holder[a] != m0.holder[b]
        ]
        if pairs:
            a, b = pairs[step[1] % len(pairs)]
            await record(w, a, b - PEOPLE, step[2])
    elif kind == "reviewed":  # a reviewer merges the n-th pair of customers
        roots = sorted({m0.holder[a] for a in m0.holder})
        pairs = [(x, y) for x in roots for y in roots if x < y]
        if not pairs:
            return
        x, y = pairs[step[1] % len(pairs)]
        survivor, absorbed = sorted((x, y), key=lambda lab: m0.profs[lab].pid)
        async with p.db.write() as conn:
            done = await merge_reviewed(
                conn,
                p,
                [m0.profs[x].pid, m0.profs[y].pid],
                matched_on=["last_name"],
                source="review",
                actor="t",
            )
        assert done.merged_profile_ids == [m0.profs[absorbed].pid]
        for m in w.models:
            m.merge(survivor, absorbed)
            m.carry(survivor, person=True, addresses=True)  # "a stop all of either reaches both"
        event("merged")
    elif kind in ("consent", "push"):  # naming an address (a grant of an unknown one makes its
        _, a, status, t = step  # customer; a withdrawal is recorded on the address alone)
        at = at_of(t)
        channel = CHANNEL[KIND[a]] if kind == "consent" else "push"
        got = await consent(w, w.ident(a), channel, status, at)
        pid = got[0].profile_id
        if a not in m0.holder and status == "withdrawn":
            assert pid is None, "a withdrawal of an address no one holds made a customer"
            if kind == "consent":
                for m in w.models:
                    m.event(a, at, status)
            return  # push: no customer, so no push to withdraw
        for m in w.models:
            if a not in m.holder:
                m.attach(a, m.new_profile(pid), None)  # type: ignore[arg-type]
            if kind == "consent":
                m.event(a, at, status)
            else:
                m.push_event(m.holder[a], at, status)
    elif kind in ("grant_profile", "withdraw_profile", "push_profile"):
        lab = w.label(step[1])
        if lab is None:
            return
        at = at_of(step[-1])
        if m0.profs[lab].status == "erased":
            with pytest.raises(Gone):
                await consent(w, w.profile_ident(lab), "email", "withdrawn", at)
            return
        root = m0.root(lab)
        if kind == "withdraw_profile":
            await consent(w, w.profile_ident(lab), "*", "withdrawn", at)
            for m in w.models:
                for a in m.held_by(root):
                    m.event(a, at, "withdrawn")
                    m.addr_w.setdefault(a, set()).add(at)
                m.push_event(root, at, "withdrawn")
                m.person_withdrew(root, at)
        elif kind == "push_profile":
            await consent(w, w.profile_ident(lab), "push", step[2], at)
            for m in w.models:
                m.push_event(root, at, step[2])
        else:
            channel = step[2]
            targets = [a for a in m0.held_by(root) if CHANNEL[KIND[a]] == channel]
            if not targets:  # 400: the customer has no address on this channel
                with pytest.raises(InvalidInput):
                    await consent(w, w.profile_ident(lab), channel, "granted", at)
                return
            await consent(w, w.profile_ident(lab), channel, "granted", at)
            for m in w.models:
                for a in targets:
                    m.event(a, at, "granted", frozenset(m.standing(root)))
    elif kind == "opt_out":
        _, a, which, t = step
        at = at_of(t)
        channel = CHANNEL[KIND[a]] if which == "own" else which
        await opt_out(p, w.ident(a), channel=channel, source="t", actor="t", occurred_at=at)
        for m in w.models:
            held = m.holder.get(a)
            if channel == "*" and held is not None:  # the person: every address and channel
                for b in m.held_by(held):
                    m.opt_out_all(b, at)
                m.push_event(held, at, "withdrawn")
                m.person_withdrew(held, at)
            elif channel == "*":
                m.opt_out_all(a, at)
            else:
                m.suppress(a, channel, at, "opt_out")
                if channel != "push":
                    m.event(a, at, "withdrawn")
                elif held is not None:
                    m.push_event(held, at, "withdrawn")
    elif kind in ("unmerge", "unmerge_any"):
        if kind == "unmerge":
            undoable = [i for i in range(len(m0.profs)) if isinstance(m0.unmerge_plan(i), list)]
            lab = undoable[step[1] % len(undoable)] if undoable else None
        else:
            lab = w.label(step[1])
        if lab is None:
            return
        plan = m0.unmerge_plan(lab)
        if not isinstance(plan, list):
            with pytest.raises(plan):
                async with p.db.write() as conn:
                    await unmerge(conn, p, m0.profs[lab].pid, "t")
            return
        async with p.db.write() as conn:
            done = await unmerge(conn, p, m0.profs[lab].pid, "t")
        assert len(done.merge_ids) == len(plan)
        for m in w.models:
            for mi in plan:
                m.undo(mi)
        event("unmerged")
    elif kind == "erase":
        if not m0.holder:  # nobody: an erasure request for an unknown address is a 404
            with pytest.raises(NotFound):
                await submit_erasure(p, w.ident(0), requested_by="customer", actor="t")
            return
        a = sorted(m0.holder)[step[1] % len(m0.holder)]
        sub = await submit_erasure(p, w.ident(a), requested_by="customer", actor="t")
        assert await process(p, sub.request_id) == "completed"
        async with p.db.read() as conn:
            at = (
                await conn.execute(
                    select(dsr_requests.c.completed_at).where(dsr_requests.c.id == sub.request_id)
                )
            ).scalar_one()
        event("erased" + (" a merged customer" if len(m0.group(m0.holder[a])) > 1 else ""))
        for m in w.models:
            m.erase(m.holder[a], at)
    elif kind == "stop":
        a, now = PEOPLE + step[1], utcnow()
        await sms_stop(p, w.ident(a), "t")
        for m in w.models:
            m.suppress(a, "sms", now, "sms_stop")
            m.event(a, now, "withdrawn")
    elif kind == "unsubscribe":  # one-click, with a link a members read handed out earlier
        if not w.links:
            return
        a, lab, token = w.links[step[1] % len(w.links)]
        now = utcnow()
        if a is None and m0.profs[lab].status == "erased":
            with pytest.raises(Gone):
                await unsubscribe(p, token)
            return
        await unsubscribe(p, token)
        for m in w.models:
            if a is None:  # push: the profile the link names, or the one it was merged into
                m.push_event(m.root(lab), now, "withdrawn")
            else:  # the address, on its channel: whoever holds it now (or nobody)
                m.suppress(a, CHANNEL[KIND[a]], now, "unsubscribe")
                m.event(a, now, "withdrawn")
        event("unsubscribed")
    else:  # pragma: no cover
        raise AssertionError(step)


# ---------------------------------------------------------------------------------------------
# checks
def audience(source: str | None) -> dict:  # type: ignore[type-arg]
    """A segment of one example's customers (every record and consent names its source), or
    of the whole base."""
    return {"all": []} if source is None else {"field": "source", "op": "eq", "value": source}


async def members(p: Platform, channel: str, source: str | None = None) -> list:  # type: ignore[type-arg]
    """Every member of the segment for marketing on `channel`, page by page."""
    d = build_definition(p, "marketing", channel, audience(source))
    out, after = [], None
    async with p.db.read() as conn:
        while True:
            page = await members_page(conn, p, d, after=after, limit=1000)
            out.extend(page.items)
            if page.next_after is None:
                return out
            after = page.next_after


async def check(w: World, trail: list) -> None:  # type: ignore[type-arg]
    m, p = w.m, w.p
    roots = sorted({m.holder[a] for a in m.holder})
    decisions: dict[int, str | None] = {}
    views = {}
    async with p.db.read() as conn:
        ic, pc = identities.c, profiles.c
        bidxs = {w.bidx(a): a for a in range(ADDRESSES)}
        held = {
            (bidxs[b], k): pid
            for b, k, pid in await conn.execute(
                select(ic.bidx, ic.kind, ic.profile_id).where(ic.bidx.in_(list(bidxs)))
            )
        }
        want_held = {(a, KIND[a]): m.profs[r].pid for a, r in m.holder.items()}
        assert held == want_held, ("who holds which address", trail)
        ids = {prof.pid: i for i, prof in enumerate(m.profs)}
        rows = await conn.execute(
            select(pc.id, pc.status, pc.merged_into).where(pc.id.in_(list(ids)))
        )
        got_profs = {ids[pid]: (st_, ids.get(into)) for pid, st_, into in rows}
        want_profs = {i: (prof.status, prof.into) for i, prof in enumerate(m.profs)}
        assert got_profs == want_profs, ("profiles", trail)
        for a in range(ADDRESSES):  # the rule, address by address
            got = await address_decision(conn, p, KIND[a], w.bidx(a), "marketing", CHANNEL[KIND[a]])
            decisions[a] = got
            want = w.contactable(a)
            if want != EITHER:
                assert (got is None) == (want == YES), ("decision", a, want, got, trail)
        for root in roots:  # the consent view of each customer: the same rule
            views[root] = (await consent_view(conn, p, m.profs[root].pid)).contactable
            for channel in ("email", "sms"):
                mine = [a for a in m.held_by(root) if CHANNEL[KIND[a]] == channel]
                want_any = any(decisions[a] is None for a in mine)
                assert views[root]["marketing"][channel] == want_any, ("view", root, trail)
            want = w.push_contactable(root)
            if want != EITHER:
                got_push = views[root]["marketing"]["push"]
                assert got_push == (want == YES), ("push", root, want, trail)
    # the segments: only contactable customers, with an address they hold, one item each, all
    ours = {w.value(a): a for a in range(ADDRESSES)}
    pid_of = {str(prof.pid): i for i, prof in enumerate(m.profs)}
    for channel in ("email", "sms", "push"):
        items = await members(p, channel, w.source)
        pids = [i.profile_id for i in items]
        assert len(pids) == len(set(pids)), ("one item per customer", channel, trail)
        handed = set()
        for item in items:
            if channel == "push":
                root = pid_of.get(item.profile_id)
                if root is None:
                    continue  # another example's customer
                assert root in roots, ("push member not an active customer", root, trail)
                assert views[root]["marketing"]["push"], ("push member", root, trail)
                assert w.push_contactable(root) != NO, ("push member", root, trail)
                handed.add(root)
                w.links.append((None, root, item.unsubscribe_token))
                continue
            a = ours.get(item.address)
            if a is None:
                continue  # another example's customer
            assert CHANNEL[KIND[a]] == channel, ("channel", item, trail)
            assert a in m.holder and str(m.profs[m.holder[a]].pid) == item.profile_id, (
                "member's holder",
                a,
                trail,
            )
            assert decisions[a] is None, ("member the rule excludes", a, decisions[a], trail)
            assert w.contactable(a) != NO, ("member the model excludes", a, trail)
            root = m.holder[a]
            handed.add(root)
            w.links.append((a, root, item.unsubscribe_token))
            # one item per customer: of their contactable addresses, the latest confirmed
            mine = [
                b for b in m.held_by(root) if CHANNEL[KIND[b]] == channel and decisions[b] is None
            ]
            confirmed = {b: w.confirmed(b) for b in mine}
            assert confirmed[a] == max(confirmed.values()), ("not the latest confirmed", a, trail)
        for root in roots:
            assert (root in handed) == views[root]["marketing"][channel], (
                "members and the rule disagree",
                root,
                channel,
                trail,
            )


async def exports_agree(p: Platform, source: str, trail: list) -> None:  # type: ignore[type-arg]
    """An export (cdp.segments.pages, ranges read ahead) hands out what members pages do."""
    for channel in ("email", "sms", "push"):
        d = build_definition(p, "marketing", channel, audience(source))
        exported = [i async for page in member_pages(p, d, page_size=2) for i in page.items]
        paged = await members(p, channel, source)
        key = [(i.profile_id, i.address) for i in exported]
        assert key == [(i.profile_id, i.address) for i in paged], ("export", channel, trail)


async def verify(p: Platform, trail: list) -> None:  # type: ignore[type-arg]
    """`GET /v1/audit/verify`'s verification: chain, derived state, suppressions, requests."""
    async with snapshot(p.db) as conn:
        report = await verify_ledger(conn, [], policy=p.policy)
        dsr = await requests_report(conn)
    assert report.ok, (report.to_json(), trail)
    assert dsr["ok"], (dsr, trail)


async def run_ops(p: Platform, ops: list) -> World:  # type: ignore[type-arg]
    w = World(p, next(_ns))
    trail: list = []  # type: ignore[type-arg]
    for step in ops:
        trail.append(step)
        await apply(w, step)
        await check(w, trail)
    w.note_variants()
    await exports_agree(p, w.source, trail)
    await verify(p, trail)
    return w


@settings(
    max_examples=HUNT or 20,
    deadline=None,
    derandomize=not HUNT,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(first=st.lists(setup, min_size=3, max_size=5), then=then)
async def test_consent_across_merges_unmerges_and_erasures(platform, first, then):
    for o in then:
        event(o[0])
    await run_ops(platform, first + then)
