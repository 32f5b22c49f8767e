"""A parsed condition as one SQLAlchemy boolean expression over `profiles`.

Stats fields read `profile_stats` (the query outer-joins it when `needs_stats`; a customer
without stats has 0 orders and 0 spent); `source` and `categories` are EXISTS subqueries.
`consent_days` reads the customer's consent for the segment's purpose and channel
(`ConsentScope`): the newest `since` of their granted consent_state rows on the channel's
addresses, a correlated subquery. "Days since" fields compare timestamps with cutoffs
computed here in Python: with d the whole days elapsed since the moment, `d >= N` is
`at <= now - N days`, `d <= N` is `at > now - (N + 1) days`, and so on. A moment after now
(an order dated by a client whose clock runs ahead, which cdp.ids.time_problem admits) is 0
days ago, never less. Every leaf is definite (never SQL NULL).

Each cutoff is a named bind parameter whose value is computed from `now`; `Compiled.params`
recomputes them for another moment, so a statement built once can be executed again later
(cdp.segments.members keeps the statements of recent definitions).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, exists, false, func, not_, or_, select, true
from sqlalchemy.sql.elements import BooleanClauseList, ColumnElement, Grouping

from cdp.db.tables import (
    identities,
    profile_categories,
    profile_sources,
    profile_stats,
    profiles,
)
from cdp.labels import city_key
from cdp.segments.rules import AllOf, AnyOf, Condition, Leaf, NotOf
from cdp.segments.subject_sql import profile_subject_is
from cdp.segments.traits import TraitSQL
from consent.tables import consent_state

_TEXT_COLUMNS = {  # and how a rule's value is put in the column's form
    "country": (profiles.c.country, str),
    "city": (profiles.c.city_key, city_key),  # a city in any case (cdp.labels)
    "jurisdiction": (profiles.c.jurisdiction, str),
}
_DAYS_COLUMNS = {
    "created_days": profiles.c.created_at,
    "last_order_days": profile_stats.c.last_order_at,
    "first_order_days": profile_stats.c.first_order_at,
}
_STATS_COLUMNS = {
    "orders_count": profile_stats.c.orders_count,
    "total_spent": profile_stats.c.total_spent,
}


class _Kept(Grouping):
    """A condition made of ANDs or ORs, in parentheses that SQLAlchemy does not open: it merges
    `a AND (b AND c)` into one chain `a AND b AND c`, and SQLite parses a chain of n terms as
    an expression n levels deep and refuses one deeper than 1,000. Each leaf of `country`,
    `city`, `jurisdiction` or a "days since" field is two or three terms, so an `all` of 499
    `country eq` conditions (or an `any` of 499 `city ne`), within the rules' bounds, was a
    segment SQLite could not read (a 503 at every read). Kept apart, a chain has at most as
    many terms as the rule has parts (500)."""

    inherit_cache = True
    operator = None  # what BooleanClauseList looks at to merge a clause into its chain


@dataclass(frozen=True, slots=True)
class ConsentScope:
    """The segment's purpose and channel, and the kind of address the channel reaches (email,
    phone, or the profile itself): what `consent_days` reads."""

    purpose: str
    channel: str
    kind: str


@dataclass(frozen=True, slots=True)
class Compiled:
    where: ColumnElement[bool]
    needs_stats: bool  # the query must LEFT OUTER JOIN profile_stats
    cutoffs: tuple[tuple[str, int], ...] = ()  # (bind parameter, days before now)

    def params(self, now: datetime) -> dict[str, datetime]:
        """The cutoffs' values at `now` (they were built with the `now` given to compile)."""
        return {key: now - timedelta(days=days) for key, days in self.cutoffs}


def compile_condition(
    cond: Condition, dialect: str, now: datetime, scope: ConsentScope | None = None
) -> Compiled:
    """`scope`: the segment's consent, required by a rule that reads `consent_days`."""
    c = _Compiler(dialect, now, scope)
    return Compiled(c.expr(cond), c.needs_stats, tuple(c.cutoffs))


def _compare(col: Any, op: str, value: Any) -> ColumnElement[bool]:
    return {
        "eq": col == value,
        "ne": col != value,
        "gt": col > value,
        "gte": col >= value,
        "lt": col < value,
        "lte": col <= value,
    }[op]


class _Compiler:
    def __init__(self, dialect: str, now: datetime, scope: ConsentScope | None) -> None:
        self.dialect = dialect
        self.now = now
        self.scope = scope
        self.needs_stats = False
        self.cutoffs: list[tuple[str, int]] = []

    def expr(self, cond: Condition) -> ColumnElement[bool]:
        if isinstance(cond, AllOf):
            return and_(*(self.part(x) for x in cond.items)) if cond.items else true()
        if isinstance(cond, AnyOf):
            return or_(*(self.part(x) for x in cond.items)) if cond.items else false()
        if isinstance(cond, NotOf):
            return not_(self.expr(cond.item))
        return getattr(self, "_" + cond.spec.kind)(cond)

    def part(self, cond: Condition) -> ColumnElement[bool]:
        """A condition inside `all` or `any`, kept in its parentheses (`_Kept`)."""
        e = self.expr(cond)
        return _Kept(e) if isinstance(e, BooleanClauseList) else e

    def _text(self, leaf: Leaf) -> ColumnElement[bool]:
        col, form = _TEXT_COLUMNS[leaf.field]
        present = and_(col.is_not(None), col != "")
        if leaf.op == "exists":
            return present if leaf.value else not_(present)
        if leaf.op == "in":
            return and_(col.is_not(None), col.in_(sorted({form(v) for v in leaf.value})))
        if leaf.op == "ne":
            return or_(col.is_(None), col != form(leaf.value))
        return and_(col.is_not(None), col == form(leaf.value))

    def _source(self, leaf: Leaf) -> ColumnElement[bool]:
        ps = profile_sources.c
        values = leaf.value if leaf.op == "in" else (leaf.value,)
        found = exists(
            select(ps.profile_id).where(ps.profile_id == profiles.c.id, ps.source.in_(values))
        )
        return not_(found) if leaf.op == "ne" else found

    def _categories(self, leaf: Leaf) -> ColumnElement[bool]:
        pc = profile_categories.c
        query = select(pc.profile_id).where(pc.profile_id == profiles.c.id)
        if leaf.op == "exists":
            return exists(query) if leaf.value else not_(exists(query))
        values = leaf.value if leaf.op == "in" else (leaf.value,)
        return exists(query.where(pc.category.in_(values)))

    def _stat(self, leaf: Leaf) -> ColumnElement[bool]:
        self.needs_stats = True
        col = func.coalesce(_STATS_COLUMNS[leaf.field], 0)
        if leaf.op == "in":
            return col.in_(leaf.value)
        return _compare(col, leaf.op, leaf.value)

    _count = _stat
    _money = _stat

    def _granted_since(self) -> ColumnElement:
        """The newest `since` of the customer's grants in scope (NULL: none in force)."""
        if self.scope is None:
            raise ValueError("consent_days needs the segment's purpose and channel")
        scope = self.scope
        cs = consent_state.alias("consent_days_state")
        of_scope = and_(
            cs.c.purpose == scope.purpose,
            cs.c.channel == scope.channel,
            cs.c.status == "granted",
        )
        if scope.kind == "profile":
            query = select(func.max(cs.c.since)).where(
                profile_subject_is(cs, self.dialect), of_scope
            )
        else:
            i = identities.alias("consent_days_address")
            query = (
                select(func.max(cs.c.since))
                .select_from(i.join(cs, cs.c.subject == i.c.bidx))
                .where(i.c.profile_id == profiles.c.id, i.c.kind == scope.kind, of_scope)
            )
        return query.correlate(profiles).scalar_subquery()

    def _days(self, leaf: Leaf) -> ColumnElement[bool]:
        if leaf.field == "consent_days":
            col: Any = self._granted_since()
            col_type = consent_state.c.since.type
        else:
            col = _DAYS_COLUMNS[leaf.field]
            col_type = col.type
            if col.table is profile_stats:
                self.needs_stats = True
        if leaf.op == "exists":
            return col.is_not(None) if leaf.value else col.is_(None)

        def cutoff(days: int) -> ColumnElement:
            key = f"cutoff_{len(self.cutoffs)}"
            self.cutoffs.append((key, days))
            return bindparam(key, self.now - timedelta(days=days), type_=col_type)

        def at_least(days: int) -> ColumnElement[bool]:
            """d >= days; a moment after now (a client clock ahead) is 0 days ago."""
            return true() if days == 0 else col <= cutoff(days)

        n = leaf.value
        within = {  # the moment lies in the window that makes "days since <op> n" true
            "gte": at_least(n),
            "gt": at_least(n + 1),
            "lte": col > cutoff(n + 1),
            "lt": false() if n == 0 else col > cutoff(n),
            "eq": and_(col > cutoff(n + 1), at_least(n)),
            "ne": and_(col > cutoff(n + 1), at_least(n)),
        }[leaf.op]
        matched = and_(col.is_not(None), within)
        return not_(matched) if leaf.op == "ne" else matched

    def _trait(self, leaf: Leaf) -> ColumnElement[bool]:
        t = TraitSQL(self.dialect, leaf.trait)
        if leaf.op == "exists":
            return t.exists() if leaf.value else not_(t.exists())
        if leaf.op == "eq":
            return t.equals(leaf.value)
        if leaf.op == "ne":
            return t.differs(leaf.value)
        if leaf.op == "in":
            return t.one_of(leaf.value)
        if leaf.op == "contains":
            return t.contains(leaf.value)
        return t.compare(leaf.op, leaf.value)
