"""Who a segment reaches, as SQL: the rule, the channel's addresses, their consent state and
the suppression list, fed to the one contactability rule (`consent.rule`).

Per customer (an active profile matching the rule) each address of the channel's kind gets
RuleColumns: the profile's status and jurisdiction, the address's consent_state row for the
purpose and channel, and the latest suppression of that address for the purpose on the channel
or on "*". Channels whose address is the profile (push, messenger) use the profile's own
consent subject ("p:" + profile id) and the latest suppression of any address the profile
holds (as `consent.service`).

Members: one row per contactable customer, with the contactable address most recently
confirmed (then last seen, then created, then id: deterministic). The choice is a top-1
subquery per customer (LATERAL on PostgreSQL, correlated on SQLite), so a page walks the
profiles primary key in id order and stops after `limit` rows on both backends. Stats: every
matched customer once, with the reason of their best address (a contactable one first, else the
most recently confirmed), or NULL when contactable: one aggregate with a row_number() window.
Handed out: the members an export sent, judged again now by the same rule on the address each
was sent (`handed_out_query`, for the export's "opted out since" counts).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    LargeBinary,
    Select,
    String,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal,
    literal_column,
    select,
    text,
    true,
    type_coerce,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause

from cdp.db.tables import identities, profile_stats, profiles
from cdp.segments.conditions import Compiled, ConsentScope
from cdp.segments.subject_sql import profile_subject_is
from consent.policy import Policy
from consent.rule import RuleColumns, contactable_sql, reason_sql, validity_params
from consent.tables import consent_state, suppressions

FIRST_ID = uuid.UUID(int=0)  # sorts before every profile id, on both backends
LAST_ID = uuid.UUID(int=2**128 - 1)  # sorts after every profile id, on both backends
AFTER = "after"  # the bind parameter of a members page's keyset position
UNTIL = "until"  # the bind parameter of its upper bound (an export's range; else LAST_ID)


@dataclass(frozen=True, slots=True)
class Audience:
    policy: Policy
    purpose: str
    channel: str
    dialect: str
    automated: bool = False  # sent by automatic dialling or mailing (consent.rule)

    @property
    def kind(self) -> str:
        kind = self.policy.address_kind(self.channel)
        if kind is None:
            raise ValueError("the channel is not in the policy")
        return kind

    def reason(self, c: RuleColumns) -> ColumnElement:
        """The contactability rule's reason for these facts (NULL: contactable)."""
        return reason_sql(self.policy, self.purpose, self.channel, c, automated=self.automated)

    def contactable(self, c: RuleColumns) -> ColumnElement[bool]:
        return contactable_sql(self.policy, self.purpose, self.channel, c, automated=self.automated)

    def params(self, now: datetime) -> dict[str, datetime]:
        """The rule's bind parameters at `now` (when a grant made before them has lapsed):
        every statement built here is executed with them."""
        return validity_params(self.policy, self.purpose, self.channel, now)

    @property
    def scope(self) -> ConsentScope:
        """What a rule's `consent_days` reads: consent for this purpose on this channel."""
        return ConsentScope(self.purpose, self.channel, self.kind)


async def tune(conn: AsyncConnection) -> None:
    """Per transaction: no JIT on PostgreSQL. Compiling these plans costs up to seconds, and a
    selective rule pushes even a page of members over `jit_above_cost`."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SET LOCAL jit = off"))


def _base(compiled: Compiled) -> FromClause:
    if compiled.needs_stats:
        return profiles.outerjoin(profile_stats, profile_stats.c.profile_id == profiles.c.id)
    return profiles


def _matched(compiled: Compiled) -> ColumnElement[bool]:
    return and_(profiles.c.status == "active", compiled.where)


def _matched_in_id_order(compiled: Compiled, dialect: str) -> ColumnElement[bool]:
    """`_matched` for a page walked in profile id order. On SQLite the status test is written
    `+profiles.status`, which keeps the planner off the status index: with it, SQLite (without
    fresh ANALYZE statistics) filters the whole table by status and sorts it for every page
    (260 ms for a page at 20,000 profiles) instead of walking the id index and stopping after
    `limit` rows (5 ms)."""
    if dialect != "sqlite":
        return _matched(compiled)
    status = literal_column("+profiles.status", String())
    return and_(status == "active", compiled.where)


def address_order(i: FromClause) -> list:
    return [
        i.c.confirmed_at.desc().nulls_last(),
        i.c.last_seen_at.desc(),
        i.c.created_at.desc(),
        i.c.id.desc(),
    ]


@dataclass(frozen=True, slots=True)
class _AddressFacts:
    """An identity alias joined to its consent state (and, for a whole-segment aggregate, to
    its latest suppression), and the rule's columns over them."""

    identity: FromClause
    joins: list[tuple[FromClause, ColumnElement[bool]]]
    columns: RuleColumns

    def joined_to(self, left: FromClause) -> FromClause:
        for right, on in self.joins:
            left = left.outerjoin(right, on)
        return left


def _address_facts(a: Audience, name: str, *, aggregate: bool = False) -> _AddressFacts:
    """The latest applicable suppression of the address: a correlated primary-key lookup for a
    page of members, a grouped subquery joined once for a whole-segment aggregate (the same
    max over the same rows)."""
    i = identities.alias(name)
    cs = consent_state.alias(name + "_cs")
    s = suppressions.c
    applicable = (s.purpose == a.purpose, s.channel.in_((a.channel, "*")))
    joins: list[tuple[FromClause, ColumnElement[bool]]] = [
        (
            cs,
            and_(cs.c.subject == i.c.bidx, cs.c.purpose == a.purpose, cs.c.channel == a.channel),
        )
    ]
    if aggregate:
        latest = (
            select(s.bidx, func.max(s.at).label("at"))
            .where(*applicable)
            .group_by(s.bidx)
            .subquery(name + "_sup")
        )
        joins.append((latest, latest.c.bidx == i.c.bidx))
        suppressed_at: ColumnElement = latest.c.at
    else:
        suppressed_at = (
            select(func.max(s.at)).where(s.bidx == i.c.bidx, *applicable).scalar_subquery()
        )
    return _AddressFacts(
        identity=i,
        joins=joins,
        columns=RuleColumns(
            profile_status=profiles.c.status,
            jurisdiction=profiles.c.jurisdiction,
            has_address=i.c.id.is_not(None),
            state_status=cs.c.status,
            state_since=cs.c.since,
            suppressed_at=suppressed_at,
            is_customer=_is_customer(),
        ),
    )


@dataclass(frozen=True, slots=True)
class _ProfileFacts:
    state: FromClause
    on_state: ColumnElement[bool]
    columns: RuleColumns


def _profile_facts(a: Audience) -> _ProfileFacts:
    """Consent keyed by the profile itself: subject = b"p:" + the profile id's 16 bytes."""
    ps = consent_state.alias("pstate")
    exact = profile_subject_is(ps, a.dialect)
    return _ProfileFacts(
        state=ps,
        on_state=and_(exact, ps.c.purpose == a.purpose, ps.c.channel == a.channel),
        columns=RuleColumns(
            profile_status=profiles.c.status,
            jurisdiction=profiles.c.jurisdiction,
            has_address=literal(True),
            state_status=ps.c.status,
            state_since=ps.c.since,
            suppressed_at=_profile_suppressed_at(a),
            is_customer=_is_customer(),
        ),
    )


def _profile_suppressed_at(a: Audience) -> ColumnElement:
    """The latest suppression of any address the profile holds, for the purpose on the channel
    or on "*" (as `consent.suppressions.latest_for_profile`): an opt-out of an address stops
    push and messenger to whoever holds it, unless they granted after it."""
    held = identities.alias("held")
    s = suppressions
    return (
        select(func.max(s.c.at))
        .select_from(held.join(s, s.c.bidx == held.c.bidx))
        .where(
            held.c.profile_id == profiles.c.id,
            s.c.purpose == a.purpose,
            s.c.channel.in_((a.channel, "*")),
        )
        .correlate_except(held, s)
        .scalar_subquery()
    )


def _is_customer() -> ColumnElement[bool]:
    """The profile has bought (soft opt-in's condition; the rule reads it only where a
    jurisdiction enables soft opt-in)."""
    st = profile_stats.alias("soft_stats")
    # correlated to the profile of whichever query embeds it, however deeply nested
    return (
        exists().where(st.c.profile_id == profiles.c.id, st.c.orders_count > 0).correlate_except(st)
    )


def _raw(identity_id: ColumnElement) -> ColumnElement:
    return type_coerce(identity_id, String()).label("identity_id")


def members_query(
    a: Audience, compiled: Compiled, *, after: uuid.UUID | None, limit: int
) -> Select:
    """Rows (profile_id, first_name ciphertext, address bidx, address ciphertext, identity id
    of the address or NULL for the profile channels), by profile id, after the keyset position
    (bind parameter AFTER) and up to UNTIL (an export's range of profile ids; LAST_ID unless
    given). The identity id comes as
    the driver returns it (SQLite: 32 hex digits; PostgreSQL: a UUID), unconverted: it is only
    packed into export records, and converting it cost about 9% of the query on SQLite."""
    base = _base(compiled)
    # A lower bound even on the first page: without it SQLite drives the join from a full scan
    # of identities and sorts; with it both planners walk the profiles index in id order.
    position = bindparam(AFTER, after or FIRST_ID, type_=profiles.c.id.type)
    until = bindparam(UNTIL, LAST_ID, type_=profiles.c.id.type)
    where = [
        _matched_in_id_order(compiled, a.dialect),
        profiles.c.id > position,
        profiles.c.id <= until,
    ]
    if a.kind == "profile":
        f = _profile_facts(a)
        ok = a.contactable(f.columns)
        columns = (
            profiles.c.id,
            profiles.c.first_name,
            literal(None, LargeBinary()).label("bidx"),
            literal(None, LargeBinary()).label("value"),
            literal(None, String()).label("identity_id"),
        )
        if a.dialect == "postgresql":  # as for addresses below: one row per customer, in order
            one = select(literal(1).label("one")).subquery("one")
            check = (
                select(one.c.one)
                .select_from(one.outerjoin(f.state, f.on_state))
                .where(ok)
                .limit(1)
                .lateral("ok")
            )
            source, where = base.join(check, true()), where
        else:
            source, where = base.outerjoin(f.state, f.on_state), [*where, ok]
        return (
            select(*columns).select_from(source).where(*where).order_by(profiles.c.id).limit(limit)
        )
    f = _address_facts(a, "i")
    i = f.identity
    best = (  # this customer's contactable address most recently confirmed
        select(i.c.id, i.c.bidx, i.c.value)
        .select_from(f.joined_to(i))
        .where(
            i.c.profile_id == profiles.c.id,
            i.c.kind == a.kind,
            a.contactable(f.columns),
        )
        .order_by(*address_order(i))
        .limit(1)
    )
    if a.dialect == "postgresql":
        # LATERAL: PostgreSQL estimates one row per customer and walks profiles in id order
        # (an `addr.id = (subquery)` join is misestimated there and hashed and sorted whole).
        top = best.lateral("best")
        return (
            select(profiles.c.id, profiles.c.first_name, top.c.bidx, top.c.value, _raw(top.c.id))
            .select_from(base.join(top, true()))
            .where(*where)
            .order_by(profiles.c.id)
            .limit(limit)
        )
    # SQLite has no LATERAL; it runs the correlated subquery per customer and looks the
    # chosen identity up by primary key.
    addr = identities.alias("addr")
    best_id = best.with_only_columns(i.c.id).correlate(profiles).scalar_subquery()
    return (
        select(profiles.c.id, profiles.c.first_name, addr.c.bidx, addr.c.value, _raw(addr.c.id))
        .select_from(
            base.join(addr, and_(addr.c.profile_id == profiles.c.id, addr.c.kind == a.kind))
        )
        .where(*where, addr.c.id == best_id)
        .order_by(profiles.c.id)
        .limit(limit)
    )


def judged_query(a: Audience, handed: FromClause) -> Select:
    """Rows (pid, iid, reason) for members an export handed out, judged now by the same rule:
    `handed` has columns (pid, iid), the profile id and the id of the identity whose address
    was sent. The identity is followed wherever merges moved it (and is gone once its customer
    was erased); for push and messenger, a merged-away profile is judged as its survivor.
    reason NULL: still contactable.

    The reason is a correlated subquery per handed row, so both planners look each member up
    by primary keys (a join lets PostgreSQL hash whole tables for a page of ids)."""
    sent = profiles.alias("sent")
    if a.kind == "profile":
        pf = _profile_facts(a)
        source = sent.join(
            profiles, profiles.c.id == func.coalesce(sent.c.merged_into, sent.c.id)
        ).outerjoin(pf.state, pf.on_state)
        columns = pf.columns
    else:
        af = _address_facts(a, "i")
        i = af.identity
        holder = func.coalesce(i.c.profile_id, sent.c.merged_into, sent.c.id)
        source = af.joined_to(sent.outerjoin(i, i.c.id == handed.c.iid)).join(
            profiles, profiles.c.id == holder
        )
        columns = af.columns
    reason = (
        select(a.reason(columns))
        .select_from(source)
        .where(sent.c.id == handed.c.pid)
        .correlate(handed)
        .scalar_subquery()
    )
    return select(handed.c.pid, handed.c.iid, reason.label("reason")).select_from(handed)


def handed_out_query(a: Audience, handed: FromClause) -> Select:
    """Rows (reason, members) of `judged_query`: reason NULL counts the members still
    contactable."""
    per_member = judged_query(a, handed).subquery("per_member")
    return select(per_member.c.reason, func.count()).group_by(per_member.c.reason)


def stats_query(a: Audience, compiled: Compiled) -> Select:
    """Rows (reason, customers): reason NULL counts the contactable customers."""
    base = _base(compiled)
    if a.kind == "profile":
        f = _profile_facts(a)
        per_customer = (
            select(a.reason(f.columns).label("reason"))
            .select_from(base.outerjoin(f.state, f.on_state))
            .where(_matched(compiled))
            .subquery("per_customer")
        )
        return select(per_customer.c.reason, func.count()).group_by(per_customer.c.reason)
    f = _address_facts(a, "i", aggregate=True)
    i = f.identity
    rows = (
        select(
            profiles.c.id.label("pid"),
            a.reason(f.columns).label("reason"),
            i.c.confirmed_at,
            i.c.last_seen_at,
            i.c.created_at,
            i.c.id,
        )
        .select_from(
            f.joined_to(
                base.outerjoin(i, and_(i.c.profile_id == profiles.c.id, i.c.kind == a.kind))
            )
        )
        .where(_matched(compiled))
        .offset(0)  # a fence: PostgreSQL would otherwise evaluate the reason twice
        .subquery("address_rows")
    )
    ranked = select(
        rows.c.reason,
        func.row_number()
        .over(
            partition_by=rows.c.pid,
            order_by=[case((rows.c.reason.is_(None), 0), else_=1), *address_order(rows)],
        )
        .label("rn"),
    ).subquery("ranked")
    return select(ranked.c.reason, func.count()).where(ranked.c.rn == 1).group_by(ranked.c.reason)
