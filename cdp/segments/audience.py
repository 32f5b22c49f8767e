"""Who a segment reaches, as SQL: the rule, the channel's addresses, their consent state and
the suppression list, fed to the one contactability rule (`consent.rule`).

Per customer (an active profile matching the rule) each address of the channel's kind gets
RuleColumns: the profile's status and jurisdiction, the address's consent_state row for the
purpose and channel, and the latest suppression of that address for the purpose on the channel
or on "*". Channels whose address is the profile (push, messenger) use the profile's own
consent subject ("p:" + profile id) and have no suppressions (as `consent.service`).

Members: one row per contactable customer, with the contactable address most recently
confirmed (then last seen, then created, then id: deterministic). The choice is a correlated
subquery per customer, so a page walks the profiles index in id order and stops after `limit`
rows on both backends. Stats: every matched customer once, with the reason of their best
address (a contactable one first, else the most recently confirmed), or NULL when contactable.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import (
    LargeBinary,
    Select,
    String,
    and_,
    case,
    func,
    literal,
    select,
    type_coerce,
)
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import FromClause

from cdp.db.tables import identities, profile_stats, profiles
from cdp.segments.conditions import Compiled
from consent.policy import Policy
from consent.rule import RuleColumns, contactable_sql, reason_sql
from consent.subjects import PROFILE_PREFIX
from consent.tables import consent_state, suppressions


@dataclass(frozen=True, slots=True)
class Audience:
    policy: Policy
    purpose: str
    channel: str
    dialect: str

    @property
    def kind(self) -> str:
        kind = self.policy.address_kind(self.channel)
        if kind is None:
            raise ValueError("the channel is not in the policy")
        return kind


def _base(compiled: Compiled) -> FromClause:
    if compiled.needs_stats:
        return profiles.outerjoin(profile_stats, profile_stats.c.profile_id == profiles.c.id)
    return profiles


def _matched(compiled: Compiled) -> ColumnElement[bool]:
    return and_(profiles.c.status == "active", compiled.where)


def address_order(i: FromClause) -> list:
    return [
        i.c.confirmed_at.desc().nulls_last(),
        i.c.last_seen_at.desc(),
        i.c.created_at.desc(),
        i.c.id.desc(),
    ]


@dataclass(frozen=True, slots=True)
class _AddressFacts:
    """An identity alias joined to its consent state, and the rule's columns over them."""

    identity: FromClause
    state: FromClause
    on_state: ColumnElement[bool]
    columns: RuleColumns


def _address_facts(a: Audience, name: str) -> _AddressFacts:
    i = identities.alias(name)
    cs = consent_state.alias(name + "_cs")
    s = suppressions.c
    latest_suppression = (
        select(func.max(s.at))
        .where(s.bidx == i.c.bidx, s.purpose == a.purpose, s.channel.in_((a.channel, "*")))
        .scalar_subquery()
    )
    return _AddressFacts(
        identity=i,
        state=cs,
        on_state=and_(
            cs.c.subject == i.c.bidx, cs.c.purpose == a.purpose, cs.c.channel == a.channel
        ),
        columns=RuleColumns(
            profile_status=profiles.c.status,
            jurisdiction=profiles.c.jurisdiction,
            has_address=i.c.id.is_not(None),
            state_status=cs.c.status,
            state_since=cs.c.since,
            suppressed_at=latest_suppression,
        ),
    )


@dataclass(frozen=True, slots=True)
class _ProfileFacts:
    state: FromClause
    on_state: ColumnElement[bool]
    columns: RuleColumns


def _profile_facts(a: Audience) -> _ProfileFacts:
    """Consent keyed by the profile itself: subject = b"p:" + the profile id's 16 bytes."""
    cs = consent_state.c
    prefix = literal(PROFILE_PREFIX, LargeBinary())
    if a.dialect == "postgresql":
        state: FromClause = consent_state.alias("pstate")
        subject = prefix.op("||", return_type=LargeBinary())(func.uuid_send(profiles.c.id))
        on = and_(
            state.c.subject == subject,
            state.c.purpose == a.purpose,
            state.c.channel == a.channel,
        )
        status, since = state.c.status, state.c.since
    else:
        # SQLite stores UUIDs as 32 lower-case hex digits and (3.40) has no unhex(): compare
        # in hex, over the purpose's and channel's profile-keyed rows, materialised once.
        state = (
            select(
                func.lower(func.hex(func.substr(cs.subject, 3))).label("pid_hex"),
                cs.status,
                cs.since,
            )
            .where(
                cs.purpose == a.purpose,
                cs.channel == a.channel,
                func.length(cs.subject) == len(PROFILE_PREFIX) + 16,
                func.substr(cs.subject, 1, len(PROFILE_PREFIX)) == prefix,
            )
            .cte("pstate")
            .prefix_with("MATERIALIZED")
        )
        on = state.c.pid_hex == type_coerce(profiles.c.id, String())
        status, since = state.c.status, state.c.since
    none_at = literal(None, consent_state.c.since.type)
    return _ProfileFacts(
        state=state,
        on_state=on,
        columns=RuleColumns(
            profile_status=profiles.c.status,
            jurisdiction=profiles.c.jurisdiction,
            has_address=literal(True),
            state_status=status,
            state_since=since,
            suppressed_at=none_at,
        ),
    )


def members_query(
    a: Audience, compiled: Compiled, *, after: uuid.UUID | None, limit: int
) -> Select:
    """Rows (profile_id, first_name ciphertext, address bidx, address ciphertext), by id."""
    base = _base(compiled)
    where = [_matched(compiled)]
    if after is not None:
        where.append(profiles.c.id > after)
    if a.kind == "profile":
        f = _profile_facts(a)
        return (
            select(
                profiles.c.id,
                profiles.c.first_name,
                literal(None, LargeBinary()).label("bidx"),
                literal(None, LargeBinary()).label("value"),
            )
            .select_from(base.outerjoin(f.state, f.on_state))
            .where(*where, contactable_sql(a.policy, a.purpose, a.channel, f.columns))
            .order_by(profiles.c.id)
            .limit(limit)
        )
    best = _address_facts(a, "i")
    i = best.identity
    best_id = (
        select(i.c.id)
        .select_from(i.outerjoin(best.state, best.on_state))
        .where(
            i.c.profile_id == profiles.c.id,
            i.c.kind == a.kind,
            contactable_sql(a.policy, a.purpose, a.channel, best.columns),
        )
        .order_by(*address_order(i))
        .limit(1)
        .correlate(profiles)
        .scalar_subquery()
    )
    addr = identities.alias("addr")
    return (
        select(profiles.c.id, profiles.c.first_name, addr.c.bidx, addr.c.value)
        .select_from(
            base.join(addr, and_(addr.c.profile_id == profiles.c.id, addr.c.kind == a.kind))
        )
        .where(*where, addr.c.id == best_id)
        .order_by(profiles.c.id)
        .limit(limit)
    )


def stats_query(a: Audience, compiled: Compiled) -> Select:
    """Rows (reason, customers): reason NULL counts the contactable customers."""
    base = _base(compiled)
    if a.kind == "profile":
        f = _profile_facts(a)
        per_customer = (
            select(reason_sql(a.policy, a.purpose, a.channel, f.columns).label("reason"))
            .select_from(base.outerjoin(f.state, f.on_state))
            .where(_matched(compiled))
            .subquery("per_customer")
        )
        return select(per_customer.c.reason, func.count()).group_by(per_customer.c.reason)
    f = _address_facts(a, "i")
    i = f.identity
    rows = (
        select(
            profiles.c.id.label("pid"),
            reason_sql(a.policy, a.purpose, a.channel, f.columns).label("reason"),
            i.c.confirmed_at,
            i.c.last_seen_at,
            i.c.created_at,
            i.c.id,
        )
        .select_from(
            base.outerjoin(i, and_(i.c.profile_id == profiles.c.id, i.c.kind == a.kind)).outerjoin(
                f.state, f.on_state
            )
        )
        .where(_matched(compiled))
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
