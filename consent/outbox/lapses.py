"""Announcing consent lapses: one `consent.lapsed` event per grant that lapses.

Where a jurisdiction gives a purpose a validity period (`consent_valid_days`), a grant whose
time (its consent_state `since`) is more than N days old no longer allows contact on the
purpose's opt-in channels (`consent.rule.valid_from`). That happens by the clock, with no write;
`announce_lapses` writes the event, so that a tool mirroring consent from `consent.granted` and
`consent.withdrawn` learns of it too. The dispatcher runs it every `lapse_interval` (a minute).

**Finding them without reading every grant.** Per jurisdiction and purpose with a period, a
row of `lapse_watermarks` says which grants have been dealt with: those of the consent_state
rows set by a ledger entry up to `ledger_seq` whose key (since, subject, channel) is at most the
row's. A pass widens that rectangle along both sides, each step announcing exactly the grants
it adds, in a write transaction of its own:
- by time (`_step_by_time`): the granted rows set up to `ledger_seq` with a key after the
  watermark's and a since before the cut (now less the period), `batch` at a time, walking the
  index ix_consent_state_granted_since (purpose, since, subject, channel; granted rows only);
- by ledger (`_step_by_ledger`): grants recorded after `ledger_seq` whose key is at or before
  the watermark's, i.e. lapsed the moment they were recorded (an import dated years ago),
  walking the ledger's primary key, `LEDGER_STEP` entries at a time.
Each grant is thus announced once: when the cut passes its time, or when it is recorded if it
had lapsed by then, or when its customer moves (below). A pass reads what lapsed and what was
recorded since the last one, and the customers who moved.

**What is announced.** A grant still in effect when its step runs (the state row is the
grant): one renewed before it lapsed has a newer since (announced, if ever, when that one
lapses), one withdrawn is no longer granted. Not announced yet: `lapses_announced` holds the
ledger seq of every grant announced (a state row's `seq`: one per grant, which a merge's copy
of a push grant and an unmerge's restored one keep), written with its event, and a grant in
it is never announced again, under any jurisdiction or period. On a channel whose basis is
opt-in in the jurisdiction (an opt-out channel, US marketing email, never lapses), of an
address or profile held by an active customer of that jurisdiction: an erased customer's
addresses are gone and their profile is erased, so nothing is announced for them. The event
is ordered with the subject's others (`order_key`: the address, else the profile subject),
`occurred_at` and the payload's `lapsed_at` are since + N days.

**Policy changes.** A period first set (no watermark yet, also the first pass after migration
0025 where one was set before): the watermark starts at the ledger's head and before every
grant, so every grant lapsed by then is announced, `batch` per transaction. A period shortened:
likewise the grants between the old cut and the new. Lengthened: the watermark's key goes back
to the new cut; a grant announced under the old period, in force again under the new one, is
not announced again when it lapses again (no event says "in force again": a mirror keeps it
lapsed, the safe side, until the customer grants again, so a second lapse would tell it
nothing; until 0026 it was sent again). Removed: nothing is announced; the grants it brings
back in force send nothing either, and the watermark stays for when a period is set again.

**Customers who move.** A grant's rules are those of the customer holding it, which change
when a record gives them another jurisdiction, or when an address (or a push grant) changes
holder in a merge or an unmerge; the watermark of the rules they come under may have passed
the grant already, while it was held under other rules, and would never look at it again. So
the change notes the customer in `lapse_moves` in its own transaction (consent.outbox.moves:
one small insert, where the jurisdiction is written in cdp.profiles.ingest, and in
cdp.profiles.merge and cdp.profiles.unmerge; none where no jurisdiction has a period, as a
period first set announces from before every grant), and each pass ends with `_step_by_moves`: for
`MOVES_STEP` noted customers at a time, every grant they hold that has lapsed under their
jurisdiction's period now (since before its cut), opt-in there and not announced yet, is
announced, and the notes are deleted. `lapsed_at` is the grant's time plus that period, as for
a grant recorded already lapsed (it may be before the move: the grant was in force for the
customer until then, and is lapsed under the rules they are under now). What this makes of
moves: into rules under which the grant has lapsed, announced once; back and forth, nothing
more; out of rules that announced it into rules with the same or another period under which it
has lapsed too, nothing (a mirror has it lapsed already); into rules under which it is still in
force, nothing now, and if it was not announced before, announced by the time step when it
lapses there. A grant the time step reaches before the move's note is read is announced there
if the customer is already under the new rules (the note then finds it announced).

**Several workers.** Each step holds the ledger's append lock (`consent.ledger.LEDGER_LOCK`
on PostgreSQL; on SQLite the write transaction), as a consent write does: a renewal or a
withdrawal commits wholly before or after it, and the outbox has the events in the order of the
changes. Before it a try-lock, LAPSE_LOCK: one process announces at a time, others skip their
step. The watermark is read and moved, the notes of moves read and deleted, and
`lapses_announced` read and written in the step's transaction, so `cdp serve` and any number
of `cdp dispatch` processes announce a lapse once. A move committed after a moves step read
the notes is read by the next pass (a note is deleted by the seq the step read, never by a
range).

Grants announced before migration 0026 are not in `lapses_announced`: a move of their
customer into other rules with a period may announce such a grant once more.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from cdp.db.bulk import rows_where_in
from cdp.db.engine import xact_lock
from cdp.db.partial import equals
from cdp.db.tables import identities, profiles
from cdp.ids import EARLIEST, utcnow
from cdp.platform import Platform
from consent.ledger import LEDGER_LOCK
from consent.outbox.enqueue import LAPSED, event_row, write_rows
from consent.outbox.fanout import try_lock
from consent.outbox.tables import lapse_moves, lapse_watermarks, lapses_announced
from consent.policy import Policy
from consent.rule import valid_from
from consent.subjects import is_profile_subject, profile_subject, subject_profile_id
from consent.tables import consent_ledger, consent_state

LAPSE_LOCK = 5_147_010_004
BATCH = 200  # grants read per transaction (each holds the ledger's append lock)
LEDGER_STEP = 2000  # ledger entries read per transaction by the ledger step
MOVES_STEP = 100  # moved customers read per transaction by the moves step
SOURCE = "validity_period"
cs = consent_state.c
cl = consent_ledger.c
lw = lapse_watermarks.c
lm = lapse_moves.c
# before every grant's key: a grant's time is never before EARLIEST (cdp.ids.time_problem)
START = (EARLIEST, b"", "")


@dataclass(slots=True)
class Mark:
    """A watermark: grants set up to ledger entry `seq` with a key up to `key` are done."""

    seq: int
    key: tuple[datetime, bytes, str]


@dataclass(frozen=True, slots=True)
class Scope:
    jurisdiction: str
    purpose: str
    days: int
    cut: datetime  # a grant whose time is before it has lapsed (consent.rule.valid_from)

    @property
    def cut_key(self) -> tuple[datetime, bytes, str]:
        """The key before every grant at the cut or after it (those have not lapsed)."""
        return (self.cut, b"", "")


def scopes(policy: Policy, now: datetime) -> list[Scope]:
    """The jurisdictions and purposes with a validity period, and their cut at `now`."""
    out = []
    for code in sorted(policy.jurisdictions):
        for purpose in sorted(policy.purposes):
            days = policy.consent_valid_days(code, purpose)
            cut = valid_from(policy, code, purpose, now)
            if days is not None and cut is not None:
                out.append(Scope(code, purpose, days, cut))
    return out


async def announce_lapses(
    p: Platform, *, now: datetime | None = None, batch: int = BATCH, moves: int = MOVES_STEP
) -> int:
    """Announce every grant lapsed by `now` (default: the clock) and not announced yet, in
    steps of one short write transaction each (`batch` grants, or `moves` moved customers);
    returns how many events were written. Another process announcing at the same moment makes
    this one stop (its steps are skipped)."""
    now = now or utcnow()
    total = 0
    found = scopes(p.policy, now)
    for scope in found:
        for step in (_step_by_ledger, _step_by_time):
            while True:
                async with p.db.write() as conn:
                    if not await try_lock(conn, LAPSE_LOCK):
                        return total
                    await xact_lock(conn, LEDGER_LOCK)
                    mark = await _mark(conn, scope)
                    written, done = await step(conn, p.policy, scope, mark, batch)
                    await _save(conn, scope, mark)
                total += written
                if done:
                    break
    async with p.db.read() as conn:  # most passes: none (a write transaction costs more)
        if (await conn.execute(select(lm.seq).limit(1))).first() is None:
            return total
    while True:
        async with p.db.write() as conn:
            if not await try_lock(conn, LAPSE_LOCK):
                return total
            await xact_lock(conn, LEDGER_LOCK)
            written, done = await _step_by_moves(conn, p.policy, found, moves)
        total += written
        if done:
            return total


async def _mark(conn: AsyncConnection, scope: Scope) -> Mark:
    """The scope's watermark (a new one at the ledger's head and before every grant), its key
    taken back to the cut where the period has grown since it was moved."""
    row = (
        await conn.execute(
            select(lw.ledger_seq, lw.since, lw.subject, lw.channel).where(
                lw.jurisdiction == scope.jurisdiction, lw.purpose == scope.purpose
            )
        )
    ).first()
    if row is None:
        head = (await conn.execute(select(func.max(cl.seq)))).scalar() or 0
        await conn.execute(
            insert(lapse_watermarks).values(
                jurisdiction=scope.jurisdiction,
                purpose=scope.purpose,
                ledger_seq=head,
                since=START[0],
                subject=START[1],
                channel=START[2],
                updated_at=utcnow(),
            )
        )
        return Mark(head, START)
    mark = Mark(row.ledger_seq, (row.since, row.subject, row.channel))
    if mark.key > scope.cut_key:  # a longer period: those grants are in force again
        mark.key = scope.cut_key
    return mark


async def _save(conn: AsyncConnection, scope: Scope, mark: Mark) -> None:
    since, subject, channel = mark.key
    await conn.execute(
        update(lapse_watermarks)
        .where(lw.jurisdiction == scope.jurisdiction, lw.purpose == scope.purpose)
        .values(
            ledger_seq=mark.seq, since=since, subject=subject, channel=channel, updated_at=utcnow()
        )
    )


def by_time(scope: Scope, mark: Mark, batch: int) -> Select:
    """The next `batch` grants after the watermark's key and before the cut, set by ledger
    entries up to its seq, in key order (ix_consent_state_granted_since)."""
    since, subject, channel = mark.key
    return (
        select(cs.subject, cs.channel, cs.since, cs.seq)
        .where(
            cs.purpose == scope.purpose,
            equals(cs.status, "granted"),
            cs.since >= since,
            cs.since < scope.cut,
            or_(
                cs.since > since,
                cs.subject > subject,
                and_(cs.subject == subject, cs.channel > channel),
            ),
            cs.seq <= mark.seq,
        )
        .order_by(cs.since, cs.subject, cs.channel)
        .limit(batch)
    )


async def _step_by_time(
    conn: AsyncConnection, policy: Policy, scope: Scope, mark: Mark, batch: int
) -> tuple[int, bool]:
    """Announces the grants `by_time` reads; moves the key past them (to the cut once none is
    left)."""
    rows = (await conn.execute(by_time(scope, mark, batch))).all()
    grants = [(r.subject, r.channel, r.since, r.seq) for r in rows]
    written = await _announce(conn, policy, scope, grants)
    done = len(rows) < batch
    mark.key = scope.cut_key if done else (rows[-1].since, rows[-1].subject, rows[-1].channel)
    return written, done


async def _step_by_ledger(
    conn: AsyncConnection, policy: Policy, scope: Scope, mark: Mark, _batch: int
) -> tuple[int, bool]:
    """The grants of the next LEDGER_STEP ledger entries whose key is at or before the
    watermark's (lapsed when recorded) and still in effect; moves the seq past those entries."""
    head = (await conn.execute(select(func.max(cl.seq)))).scalar() or 0
    until = max(mark.seq, min(head, mark.seq + LEDGER_STEP))
    latest = mark.key[0]
    entries = (
        await conn.execute(
            select(cl.seq, cl.subject_kind, cl.address_bidx, cl.profile_id, cl.channel)
            .where(
                cl.seq > mark.seq,
                cl.seq <= until,
                cl.purpose == scope.purpose,
                cl.status == "granted",
                cl.effective.is_(True),
                # its time, min(occurred_at, recorded_at), at or before the watermark's
                or_(cl.occurred_at <= latest, cl.recorded_at <= latest),
            )
            .order_by(cl.seq)  # of two grants on one key in the step, the later is in effect
        )
    ).all()
    by_key = {
        (
            profile_subject(e.profile_id) if e.subject_kind == "profile" else e.address_bidx,
            e.channel,
        ): e.seq
        for e in entries
        if e.profile_id is not None or e.subject_kind != "profile"
    }
    found = [
        g
        for g in await _grants(conn, sorted({s for s, _ in by_key}), scope.purpose)
        if by_key.get(g[:2]) == g[3]  # still this entry's grant
        and (g[2], g[0], g[1]) <= mark.key
    ]
    mark.seq = until
    return await _announce(conn, policy, scope, found), until >= head


async def _grants(
    conn: AsyncConnection, subjects: list[bytes], purpose: str, *where: ColumnElement[bool]
) -> list[tuple[bytes, str, datetime, int]]:
    """(subject, channel, since, seq) of the purpose's granted states of these subjects."""
    out: list[tuple[bytes, str, datetime, int]] = []
    for start in range(0, len(subjects), 500):
        rows = await conn.execute(
            select(cs.subject, cs.channel, cs.since, cs.seq).where(
                cs.subject.in_(subjects[start : start + 500]),
                cs.purpose == purpose,
                cs.status == "granted",
                *where,
            )
        )
        out += [(r.subject, r.channel, r.since, r.seq) for r in rows]
    return out


@dataclass(frozen=True, slots=True)
class Holder:
    profile_id: uuid.UUID
    address_kind: str  # email | phone | profile


async def _holders(
    conn: AsyncConnection, policy: Policy, scope: Scope, grants: list[tuple[bytes, str]]
) -> dict[bytes, Holder]:
    """Subject -> its holder, for the subjects held by an active customer of the scope's
    jurisdiction (an address by the profile holding it; a profile subject by the profile)."""
    kinds = {subject: policy.address_kind(channel) for subject, channel in grants}
    addresses = sorted(s for s, k in kinds.items() if k in ("email", "phone"))
    owners: dict[bytes, tuple[uuid.UUID, str]] = {}
    for start in range(0, len(addresses), 500):
        rows = await conn.execute(
            select(identities.c.bidx, identities.c.profile_id, identities.c.kind).where(
                identities.c.bidx.in_(addresses[start : start + 500])
            )
        )
        owners.update({r.bidx: (r.profile_id, r.kind) for r in rows if r.kind == kinds[r.bidx]})
    for subject, kind in kinds.items():
        if kind == "profile" and is_profile_subject(subject):
            owners[subject] = (subject_profile_id(subject), "profile")
    pids = sorted({pid for pid, _ in owners.values()})
    active: set[uuid.UUID] = set()
    for start in range(0, len(pids), 500):
        # by id alone, the rest tested here: with `status = 'active'` in the statement SQLite
        # read the status index (every active profile) for 500 ids, 74 ms against a few
        rows = await conn.execute(
            select(profiles.c.id, profiles.c.status, profiles.c.jurisdiction).where(
                profiles.c.id.in_(pids[start : start + 500])
            )
        )
        active.update(
            r.id for r in rows if r.status == "active" and r.jurisdiction == scope.jurisdiction
        )
    return {s: Holder(pid, kind) for s, (pid, kind) in owners.items() if pid in active}


async def _announced(conn: AsyncConnection, seqs: list[int]) -> set[int]:
    """Those of these grants (by ledger seq) whose lapse has been announced."""
    return {seq for (seq,) in await rows_where_in(conn, lapses_announced, ("seq",), "seq", seqs)}


async def _announce(
    conn: AsyncConnection,
    policy: Policy,
    scope: Scope,
    grants: list[tuple[bytes, str, datetime, int]],
) -> int:
    """A consent.lapsed event for each of these grants (subject, channel, since, seq) that
    lapses in the scope: opt-in there, held by an active customer of its jurisdiction, and not
    announced yet (under any jurisdiction: a move does not lapse a grant twice)."""
    opt_in = [
        g for g in grants if policy.basis(scope.jurisdiction, scope.purpose, g[1]) == "opt_in"
    ]
    if not opt_in:
        return 0
    done = await _announced(conn, sorted({g[3] for g in opt_in}))
    fresh = [g for g in opt_in if g[3] not in done]
    if not fresh:
        return 0
    holders = await _holders(conn, policy, scope, [(g[0], g[1]) for g in fresh])
    now = utcnow()
    period = timedelta(days=scope.days)
    rows: list[dict[str, Any]] = []
    seqs: set[int] = set()
    for subject, channel, since, seq in fresh:
        holder = holders.get(subject)
        if holder is None or seq in seqs:
            continue
        seqs.add(seq)
        profile = holder.address_kind == "profile"
        rows.append(
            event_row(
                LAPSED,
                occurred_at=since + period,
                profile_id=holder.profile_id,
                address_kind=holder.address_kind,
                address_bidx=None if profile else subject,
                subject=subject,
                purpose=scope.purpose,
                channel=channel,
                source=SOURCE,
                recorded_at=now,
            )
        )
    await write_rows(conn, rows)
    if seqs:
        await conn.execute(insert(lapses_announced), [{"seq": seq} for seq in sorted(seqs)])
    return len(rows)


async def _step_by_moves(
    conn: AsyncConnection, policy: Policy, found: list[Scope], batch: int
) -> tuple[int, bool]:
    """The next `batch` customers noted as moved (consent.outbox.moves): every grant they
    hold that has lapsed under their jurisdiction's rules and is not announced yet (the
    watermark may have passed it while another customer, or other rules, held it) is
    announced; the notes are deleted."""
    moves = (await conn.execute(select(lm.seq, lm.profile_id).order_by(lm.seq).limit(batch))).all()
    if not moves:
        return 0, True
    by_code: dict[str, list[Scope]] = {}
    for scope in found:
        by_code.setdefault(scope.jurisdiction, []).append(scope)
    pids = sorted({m.profile_id for m in moves})
    codes = {
        r.id: r.jurisdiction
        for r in await conn.execute(
            select(profiles.c.id, profiles.c.status, profiles.c.jurisdiction).where(
                profiles.c.id.in_(pids)
            )
        )
        if r.status == "active" and r.jurisdiction in by_code
    }
    subjects: dict[str, set[bytes]] = {}
    for pid, code in codes.items():
        subjects.setdefault(code, set()).add(profile_subject(pid))
    if codes:
        ic = identities.c
        for pid, bidx, kind in await conn.execute(
            select(ic.profile_id, ic.bidx, ic.kind).where(ic.profile_id.in_(sorted(codes)))
        ):
            if kind in ("email", "phone"):
                subjects[codes[pid]].add(bidx)
    written = 0
    for code, held in subjects.items():
        ordered = sorted(held)
        for scope in by_code[code]:
            grants = await _grants(conn, ordered, scope.purpose, cs.since < scope.cut)
            written += await _announce(conn, policy, scope, grants)
    await conn.execute(delete(lapse_moves).where(lm.seq.in_([m.seq for m in moves])))
    return written, len(moves) < batch
