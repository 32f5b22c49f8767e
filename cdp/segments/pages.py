"""The whole segment, page after page, as an export reads it.

The profile ids are cut into consecutive ranges (whatever the profiles' status or the rule),
their bounds read from the primary key a batch of ranges at a time. A range spans as many
profiles as should hold about a page of members, by the share of members among the profiles
read so far (a page's size at least, 32 pages' at most), so a segment of a tenth of the
customers is read in as few queries as the whole base. Each range is selected by the members
query (`members.select_rows` with the range's upper bound) in its own read transaction, exactly as
a members page is, so the export holds the same members in the same order as the members pages
a client walks with the cursor.

A keyset page's successor is known only once the page has returned; ranges are known ahead, so
the next ranges are selected while a page is decrypted: one ahead on SQLite (its reader thread
needs the GIL for every row it builds, so a second one would only wait), two on PostgreSQL,
whose server works on both at once. A range that holds more than a page of members (the share
changed, or profiles were stored into it after its bounds were read) is read on: its remainder
is selected next, before the ranges after it.

A range selected ahead holds each member's data key as it was when selected, so a customer
whose erasure completed while the page before was sent would still be decrypted and sent: just
before a page goes out, its members whose profile has been erased since are taken out of it
(`_without_erased`, one look-up by primary key per page, once any profile has been erased since
the export began: until then one count per page tells). An erased customer is never sent after
their erasure has completed.

In the same way, a range selected before a withdrawal or opt-out was recorded may be sent after
its answer (a slow client can keep a range selected ahead waiting for as long as it reads): the
ledger's head is read with each range, and when it has moved by the time the page goes out,
the page's members that a later ledger entry names (by address or by profile) are judged again
by the rule, and those no longer contactable are taken out, or sent with another of their
addresses that is contactable now (`_without_withdrawn`). No address is handed out by an
export after its opt-out has been answered, and no customer contactable throughout is left out.

Ranges selected at once, and a range's remainder selected after the ranges ahead of it, are not
selected in the order they are sent: a customer merged meanwhile could be sent twice, by the
absorbed profile from a range selected before the merge and by the survivor (the lower id, so
sent first) from one selected after it (the linearizability review found it). Each selection is
timed on the export's own clock, and the export keeps the ids it handed out in the pages selected
while a later page's range was, or after (a few pages: those still selected ahead); before that
page goes out, its members merged since into one of those are taken out (`_merged_into_recent`).
(A customer merged twice over in that time, into a profile then merged into another outside
those pages, is not caught.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Integer, Select, bindparam, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause

from cdp.db.tables import profiles
from cdp.ids import utcnow
from cdp.platform import Platform
from cdp.profiles.identifiers import profiles_in_status
from cdp.segments.audience import FIRST_ID, LAST_ID, Audience, judged_query, tune
from cdp.segments.exports import handed_params, handed_table, pack
from cdp.segments.members import Definition, Page, PageRows, render_for_export, select_rows
from consent.tables import consent_ledger

AHEAD = {"postgresql": 2}  # ranges selected ahead of the page being decrypted; else 1
BOUNDS_BATCH = 8  # ranges whose bounds one read of the primary key gives
MAX_SPAN = 32  # pages' worth of profiles a range may span
FILL = 0.9  # the share of a page a range aims to fill (a fuller one would often run over)


def _bounds_query() -> Select:
    """The next BOUNDS_BATCH range bounds after `after`, each the profile id `span` ids after
    the one before (bind parameters after and skip = span - 1): a recursive chain of
    index-ordered OFFSET look-ups on the primary key. (Numbering the next span * BOUNDS_BATCH
    ids with row_number() took 191 ms on SQLite for ranges of 26,000 profiles; this takes 15.)"""
    skip = bindparam("skip", type_=Integer)

    def next_bound(previous: ColumnElement, table: FromClause) -> ColumnElement:
        return (
            select(table.c.id)
            .where(table.c.id > previous)
            .order_by(table.c.id)
            .limit(1)
            .offset(skip)
            .scalar_subquery()
        )

    after = bindparam("after", type_=profiles.c.id.type)
    chain = select(next_bound(after, profiles).label("id"), literal_column("1").label("k")).cte(
        "bounds", recursive=True
    )
    later = profiles.alias("later")
    chain = chain.union_all(
        select(next_bound(chain.c.id, later), chain.c.k + literal_column("1")).where(
            chain.c.k < BOUNDS_BATCH, chain.c.id.is_not(None)
        )
    )
    return select(chain.c.id).where(chain.c.id.is_not(None)).order_by(chain.c.k)


_BOUNDS = _bounds_query()


class Ranges:
    """Consecutive ranges (after, until] of profile ids that cover every id; the last one
    ends at LAST_ID, so it also holds profiles created while the export runs. `span`, the
    number of profiles of the ranges whose bounds are read next, may be changed between
    reads."""

    def __init__(self, p: Platform, span: int) -> None:
        self.span = span
        self._p = p
        self._after = FIRST_ID
        self._bounds: deque[tuple[uuid.UUID, int | None]] = deque()
        self._last = False

    async def next(self) -> tuple[uuid.UUID, uuid.UUID, int | None] | None:
        """(after, until, profiles in the range; None for the last range), or None at the
        end."""
        if not self._bounds and not self._last:
            params = {"after": self._after, "skip": self.span - 1}
            async with self._p.db.read() as conn:
                found = list((await conn.execute(_BOUNDS, params)).scalars())
            self._bounds.extend((until, self.span) for until in found)
            if len(found) < BOUNDS_BATCH:
                self._last = True
                self._bounds.append((LAST_ID, None))
        if not self._bounds:
            return None
        after, (self._after, span) = self._after, self._bounds.popleft()
        return after, self._after, span


class _Share:
    """The share of members among the profiles of the ranges read so far, and the span that
    should fill a page at that share."""

    def __init__(self, page_size: int) -> None:
        self.page_size = page_size
        self.members = 0
        self.profiles = 0

    def count(self, members: int, profiles: int | None) -> None:
        """`profiles`: of the range (0 for the rest of a range already counted; None for the
        last range, whose size is unknown)."""
        if profiles is not None:
            self.members += members
            self.profiles += profiles

    def span(self) -> int:
        if not self.profiles:
            return self.page_size
        wanted = FILL * self.page_size * self.profiles / max(self.members, 1)
        return max(self.page_size, min(MAX_SPAN * self.page_size, round(wanted)))


@dataclass(slots=True)
class Selected:
    """Where and when a page's rows were selected: the range of profile ids (after, until],
    and the export's clock of selections when the selection was started and when it returned.
    `unsent_from`: when it is handed on, the earliest start of the selections not yet handed on
    (any selected later starts after it)."""

    after: uuid.UUID
    until: uuid.UUID
    began: int
    ended: int
    unsent_from: int = 0


async def range_rows(
    p: Platform,
    d: Definition,
    *,
    page_size: int,
    now: datetime | None = None,
    span: int | None = None,
    ahead: int | None = None,
) -> AsyncIterator[PageRows]:
    """The rows of every member of the segment in profile id order, at most `page_size` a
    time, per range (or part of a range) of profile ids, selected `ahead` ranges ahead of the
    caller (default: AHEAD for the dialect). `span` fixes the ranges' size instead of fitting
    it to the segment. A range without members gives no rows."""
    now = now or utcnow()
    ahead = ahead or AHEAD.get(p.db.engine.dialect.name, 1)
    share = _Share(page_size)
    bounds = Ranges(p, span or page_size)
    clock = itertools.count()
    # (when started, the selection)
    pending: deque[tuple[int, asyncio.Future[tuple[PageRows, uuid.UUID, int | None]]]] = deque()

    async def select_range(
        after: uuid.UUID, until: uuid.UUID, profiles_in: int | None, began: int
    ) -> tuple[PageRows, uuid.UUID, int | None]:
        async with p.db.read() as conn:
            # the ledger's head first: a withdrawal after it may or may not be in the rows
            seq = (await conn.execute(_LEDGER_HEAD)).scalar_one()
            got = await select_rows(conn, p, d, after=after, until=until, limit=page_size, now=now)
        got.ledger_seq = seq
        got.selected = Selected(after, until, began, next(clock))
        return got, until, profiles_in

    def start(
        after: uuid.UUID, until: uuid.UUID, profiles_in: int | None
    ) -> tuple[int, asyncio.Future[tuple[PageRows, uuid.UUID, int | None]]]:
        began = next(clock)
        return began, asyncio.ensure_future(select_range(after, until, profiles_in, began))

    async def fill() -> None:
        while len(pending) < ahead:
            bound = await bounds.next()
            if bound is None:
                return
            pending.append(start(*bound))

    try:
        await fill()
        while pending:
            got, until, profiles_in = await pending.popleft()[1]
            share.count(len(got.rows), profiles_in)
            if got.next_after is not None:  # more than a page: the rest of the range is next
                pending.appendleft(start(got.next_after, until, 0))
            else:
                await fill()
            if span is None:
                bounds.span = share.span()
            got.selected.unsent_from = min((b for b, _ in pending), default=next(clock))
            yield got
    finally:
        for _, task in pending:
            task.cancel()
        for _, task in pending:  # their outcome no longer matters
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def member_pages(
    p: Platform,
    d: Definition,
    *,
    page_size: int,
    now: datetime | None = None,
    span: int | None = None,
) -> AsyncIterator[Page]:
    """Every member of the segment in profile id order, in pages of at most `page_size`
    members (`range_rows`, rendered). A range without members gives an empty page. Just before
    a page goes out, what changed since its range was selected is checked (erasures,
    withdrawals and merges)."""
    now = now or utcnow()  # one moment for the whole export: its ranges and its rechecks
    rows = range_rows(p, d, page_size=page_size, now=now, span=span)
    async with p.db.read() as conn:
        _, erased_before = await _changes(conn)  # before the first range is selected
    recheck = False
    audience = Audience(p.policy, d.purpose, d.channel, p.db.engine.dialect.name, d.automated)
    # pages handed on that a page not yet handed on may have been selected before
    recent: list[_Handed] = []
    async with contextlib.aclosing(rows):
        async for got in rows:
            page = await render_for_export(p, d, got)
            if page.items:
                async with p.db.read() as conn:
                    seq, erased = await _changes(conn)
                    merged = await _merged_into_recent(conn, got.selected, page, recent)
                # an erasure completed since the export began: from now on every page's
                # members are looked up (a range may have been selected before it)
                recheck = recheck or erased != erased_before
                if recheck:
                    page = await _without_erased(p, page)
                if got.ledger_seq is not None and seq > got.ledger_seq:
                    page = await _without_withdrawn(p, d, audience, got, page, now)
                page = _dropping(page, merged)
            when = got.selected
            recent = [h for h in recent if h.ended > when.unsent_from]
            ids = {pid for pid, _ in page.handed}
            recent.append(_Handed(when.after, when.until, when.ended, ids))
            yield page


_LEDGER_HEAD = select(func.coalesce(func.max(consent_ledger.c.seq), 0))
_CHANGES = select(
    _LEDGER_HEAD.scalar_subquery(),
    select(func.count())
    .select_from(profiles)
    .where(profiles.c.status == "erased")
    .scalar_subquery(),
)


async def _changes(conn: AsyncConnection) -> tuple[int, int]:
    """(the consent ledger's head, how many profiles have been erased): one statement per
    page, two index look-ups. An erased profile keeps its row, so the count only grows; every
    withdrawal and opt-out is a ledger entry, so the head moves with each."""
    seq, erased = (await conn.execute(_CHANGES)).one()
    return int(seq), int(erased)


async def _without_erased(p: Platform, page: Page) -> Page:
    """The page without the members whose erasure completed after their range was selected."""
    async with p.db.read() as conn:
        erased = await profiles_in_status(conn, {pid for pid, _ in page.handed}, "erased")
    return _dropping(page, erased)


def _dropping(page: Page, profile_ids: set[uuid.UUID]) -> Page:
    """The page without the members of these profiles."""
    if not profile_ids:
        return page
    return _keeping(page, [i for i, (pid, _) in enumerate(page.handed) if pid not in profile_ids])


def _keeping(page: Page, kept: list[int]) -> Page:
    """The page with only its members at these positions."""
    return Page([page.items[i] for i in kept], page.next_after, [page.handed[i] for i in kept])


_led = consent_ledger.c
_LEDGER_SINCE = select(_led.address_bidx, _led.profile_id).where(_led.seq > bindparam("seq"))


async def _without_withdrawn(
    p: Platform, d: Definition, audience: Audience, got: PageRows, page: Page, now: datetime
) -> Page:
    """The page without the members a withdrawal or opt-out recorded after their range was
    selected has made uncontactable: an opt-out is honoured from its answer on, and a range
    selected ahead of a slow client may wait long before it is sent. Only the members whose
    address or profile one of those ledger entries names are judged again, by the same rule
    (`audience.judged_query`), in one statement. A customer whose address is no longer
    contactable is selected again (`_member_now`): they may be a member still, by another
    address (one item per customer: the one most recently confirmed, which was sent)."""
    async with p.db.read() as conn:
        touched: set = set()
        for bidx, pid in await conn.execute(_LEDGER_SINCE, {"seq": got.ledger_seq}):
            touched.add(bidx)
            touched.add(pid)
        touched.discard(None)
        # identity id -> address blind index (push and messenger members have no identity)
        bidx_of = {row[4]: row[2] for row in got.rows if row[4] is not None}
        named = [
            i
            for i, (pid, iid) in enumerate(page.handed)
            if pid in touched or bidx_of.get(iid) in touched
        ]
        if not named:
            return page
        dialect = conn.dialect.name
        await tune(conn)
        judged = await conn.execute(
            judged_query(audience, handed_table(dialect)),
            handed_params(dialect, pack([page.handed[i] for i in named])) | audience.params(now),
        )
        out = {pack([(pid, iid)]) for pid, iid, reason in judged if reason is not None}
        if not out:
            return page
        # a customer whose address sent is no longer contactable may still be a member by
        # another of their addresses: selected again, as a members read now selects them
        again = {
            i: await _member_now(conn, p, page.handed[i][0], d, now)
            for i in named
            if pack([page.handed[i]]) in out
        }
    items, handed = [], []
    for i, (item, who) in enumerate(zip(page.items, page.handed, strict=True)):
        now_page = again.get(i)
        items += [item] if now_page is None else now_page.items
        handed += [who] if now_page is None else now_page.handed
    return Page(items, page.next_after, handed)


@dataclass(slots=True)
class _Handed:
    """A page handed on: its range of profile ids (after, until], when its selection returned,
    and whom it handed out."""

    after: uuid.UUID
    until: uuid.UUID
    ended: int
    ids: set[uuid.UUID]


_pr = profiles.c
_MERGED_INTO = select(_pr.id, _pr.merged_into).where(
    _pr.merged_into.is_not(None),  # the partial index ix_profiles_merged_into's own term
    _pr.merged_into > bindparam("lo"),
    _pr.merged_into <= bindparam("hi"),
    _pr.id > bindparam("after"),
    _pr.id <= bindparam("until"),
)


async def _merged_into_recent(
    conn: AsyncConnection, when: Selected, page: Page, recent: list[_Handed]
) -> set[uuid.UUID]:
    """The page's members merged, since, into a customer that a page selected while this
    one's range was, or after, has handed out: the survivor has the lower id, so its page went
    first, and it may have been selected after the merge (holding the absorbed profile's
    addresses too) while this one was selected before. One look-up of the partial index of
    merged profiles, for the survivors in those pages' ranges, on the connection that reads
    the page's other changes."""
    later = [h for h in recent if h.ended > when.began]
    if not later or not page.handed:
        return set()
    params = {
        "lo": min(h.after for h in later),
        "hi": max(h.until for h in later),
        "after": when.after,
        "until": when.until,
    }
    sent = set().union(*(h.ids for h in later))
    members = {pid for pid, _ in page.handed}
    return {
        pid
        for pid, survivor in await conn.execute(_MERGED_INTO, params)
        if survivor in sent and pid in members
    }


async def _member_now(
    conn: AsyncConnection, p: Platform, pid: uuid.UUID, d: Definition, now: datetime
) -> Page:
    """The member the profile `pid` is now, as the members query selects it (empty: none)."""
    got = await select_rows(
        conn, p, d, after=uuid.UUID(int=pid.int - 1), until=pid, limit=1, now=now
    )
    return await render_for_export(p, d, got)
