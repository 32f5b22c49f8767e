"""The contactability rule: the one place that decides who may be contacted.

contactable(profile, address, purpose, channel) holds only when the profile is active, the
address is present, no suppression newer than the address's grant applies, and the policy of
the profile's jurisdiction is satisfied by the address's consent state:
  opt_in   - needs an effective grant in force (or, where the policy enables soft opt-in for
             the jurisdiction, advertising email to an existing customer: one who has bought);
             where the jurisdiction sets a validity period for the purpose
             (`consent_valid_days`), a grant whose time (the state's `since`) is before
             `valid_from` has lapsed and counts as no grant ("no_consent");
  opt_out  - allowed unless withdrawn;
  contract - allowed unless the customer refused the channel (withdrawn).
A purpose or channel the policy says nothing about is "no" (fail closed), and so is advertising
sent by automatic dialling or mailing (`automated`) on a channel where the jurisdiction forbids
it (38-FZ art. 18(2)).

`decide` is the rule in plain Python; `contactable_sql` and `reason_sql` are the same rule as
SQL expressions for segment queries. Tests check that the two always agree.

Time: `decide` is given `now`; the SQL compares `since` with bind parameters whose values
`validity_params(policy, purpose, channel, now)` computes in Python (never the database's own
clock, which SQLite and PostgreSQL read differently). Whoever runs a statement built from
`reason_sql` passes them; a missing one is an error, not a silent "in force".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, case, false, func, literal, not_, or_
from sqlalchemy.sql.elements import ColumnElement

from cdp.db.types import UTCDateTime
from consent.policy import Policy

REASONS = ("erased", "merged", "no_address", "not_allowed", "suppressed", "withdrawn", "no_consent")


@dataclass(frozen=True, slots=True)
class Facts:
    profile_status: str | None
    jurisdiction: str | None
    has_address: bool
    state_status: str | None  # granted | withdrawn | None (no event)
    state_since: datetime | None
    suppressed_at: datetime | None  # latest applicable suppression
    is_customer: bool = False  # has bought (orders_count > 0): soft opt-in's condition


def valid_from(policy: Policy, jurisdiction: str, purpose: str, now: datetime) -> datetime | None:
    """The earliest time a grant of `purpose` in force at `now` can have: `now` less the
    jurisdiction's `consent_valid_days`. A grant at exactly that time is still in force; one a
    moment earlier has lapsed. None: the jurisdiction sets no period (a grant stays in force
    until it is withdrawn)."""
    days = policy.consent_valid_days(jurisdiction, purpose)
    return None if days is None else now - timedelta(days=days)


def lapsed(policy: Policy, f: Facts, purpose: str, now: datetime) -> bool:
    """Whether the grant the facts hold is older than the period of its purpose."""
    start = valid_from(policy, f.jurisdiction or "", purpose, now)
    return (
        start is not None
        and f.state_status == "granted"
        and f.state_since is not None
        and f.state_since < start
    )


def decide(
    policy: Policy,
    purpose: str,
    channel: str,
    f: Facts,
    *,
    now: datetime,
    automated: bool = False,
) -> str | None:
    """None when contactable, else the reason it is not. `automated`: sent by automatic
    dialling or mailing, which a jurisdiction may forbid for advertising (not_allowed).
    `now`: the time the answer is for (a grant may have lapsed by then)."""
    if f.profile_status is None:
        return "no_address"  # nobody holds this address
    if f.profile_status == "erased":
        return "erased"
    if f.profile_status != "active":
        return "merged" if f.profile_status == "merged" else "erased"
    if not f.has_address:
        return "no_address"
    basis = policy.basis(f.jurisdiction or "", purpose, channel, automated=automated)
    if basis is None:
        return "not_allowed"
    if suppression_outranks(f.state_status, f.state_since, f.suppressed_at):
        return "suppressed"
    if f.state_status == "withdrawn":
        return "withdrawn"
    if basis == "opt_in" and (f.state_status != "granted" or lapsed(policy, f, purpose, now)):
        soft = f.is_customer and policy.soft_opt_in(f.jurisdiction or "", purpose, channel)
        return None if soft else "no_consent"
    return None


def suppression_outranks(
    status: str | None, since: datetime | None, suppressed_at: datetime | None
) -> bool:
    """A suppression stops contact until a grant that occurred strictly after it."""
    return suppressed_at is not None and not (
        status == "granted" and since is not None and since > suppressed_at
    )


def _jurisdictions_by_basis(
    policy: Policy, purpose: str, channel: str, automated: bool
) -> dict[str, list[str]]:
    """Jurisdiction codes by basis; "soft_opt_in" are the opt_in ones that take an existing
    customer without a grant (listed under "opt_in" too)."""
    groups: dict[str, list[str]] = {"opt_in": [], "opt_out": [], "contract": [], "soft_opt_in": []}
    for code in sorted(policy.jurisdictions):
        basis = policy.basis(code, purpose, channel, automated=automated)
        if basis is not None:
            groups[basis].append(code)
            if policy.soft_opt_in(code, purpose, channel):
                groups["soft_opt_in"].append(code)
    return groups


@dataclass(frozen=True, slots=True)
class RuleColumns:
    """SQL expressions the rule reads; the segment query supplies them from its joins."""

    profile_status: ColumnElement
    jurisdiction: ColumnElement
    has_address: ColumnElement[bool]
    state_status: ColumnElement
    state_since: ColumnElement
    suppressed_at: ColumnElement
    # whether the profile has bought; read only where a jurisdiction enables soft opt-in
    is_customer: ColumnElement[bool] | None = None


def _lapse_keys(policy: Policy, purpose: str, channel: str) -> dict[str, str]:
    """The bind parameter of each jurisdiction whose period can lapse a grant of `purpose`
    on `channel` (where a grant decides it: opt-in), by jurisdiction code. Automated sending
    changes no basis to opt-in, so these cover it too."""
    return {
        code: f"valid_from_{n}_{re.sub(r'[^A-Za-z0-9]', '_', code)}"
        for n, code in enumerate(sorted(policy.jurisdictions))
        if policy.consent_valid_days(code, purpose) is not None
        and policy.basis(code, purpose, channel) == "opt_in"
    }


def validity_params(
    policy: Policy, purpose: str, channel: str, now: datetime
) -> dict[str, datetime]:
    """The values of the bind parameters `reason_sql` reads at `now` (see the module's
    docstring): empty where no jurisdiction sets a period."""
    out: dict[str, datetime] = {}
    for code, key in _lapse_keys(policy, purpose, channel).items():
        start = valid_from(policy, code, purpose, now)
        assert start is not None
        out[key] = start
    return out


def _lapsed_sql(policy: Policy, purpose: str, channel: str, c: RuleColumns) -> ColumnElement:
    """`lapsed` as SQL: the state's since before its jurisdiction's bind parameter. Only read
    where the state is a grant (so since is set) in an opt-in jurisdiction."""
    keys = _lapse_keys(policy, purpose, channel)
    if not keys:
        return false()
    return or_(
        *(
            and_(
                c.jurisdiction == code,
                c.state_since < bindparam(key, type_=UTCDateTime(), required=True),
            )
            for code, key in keys.items()
        )
    )


def _conditions(policy: Policy, purpose: str, channel: str, c: RuleColumns, automated: bool):
    groups = _jurisdictions_by_basis(policy, purpose, channel, automated)
    allowed_j = groups["opt_in"] + groups["opt_out"] + groups["contract"]
    # NULL-safe throughout: a NULL comparison inside CASE would silently fall through.
    status = func.coalesce(c.state_status, "")
    granted_after = and_(status == "granted", c.state_since > c.suppressed_at)
    suppressed = and_(c.suppressed_at.is_not(None), not_(granted_after))
    withdrawn = status == "withdrawn"
    # no grant in force: none, or one older than its jurisdiction's period (`lapsed`)
    no_grant = or_(status != "granted", _lapsed_sql(policy, purpose, channel, c))
    strict = [j for j in groups["opt_in"] if j not in groups["soft_opt_in"]]
    needs_grant = and_(c.jurisdiction.in_(strict), no_grant) if strict else false()
    if groups["soft_opt_in"]:
        if c.is_customer is None:
            raise ValueError("soft opt-in is enabled: the rule needs is_customer")
        customer = func.coalesce(c.is_customer, False)
        soft = and_(c.jurisdiction.in_(groups["soft_opt_in"]), no_grant, not_(customer))
        needs_grant = or_(needs_grant, soft)
    not_allowed = not_(c.jurisdiction.in_(allowed_j)) if allowed_j else literal(True)
    return [
        (c.profile_status == "erased", "erased"),
        (c.profile_status != "active", "merged"),
        (not_(c.has_address), "no_address"),
        (or_(c.jurisdiction.is_(None), not_allowed), "not_allowed"),
        (suppressed, "suppressed"),
        (withdrawn, "withdrawn"),
        (needs_grant, "no_consent"),
    ]


def reason_sql(
    policy: Policy, purpose: str, channel: str, c: RuleColumns, *, automated: bool = False
) -> ColumnElement:
    """NULL when contactable, else the first reason that excludes the row (as `decide`)."""
    return case(*_conditions(policy, purpose, channel, c, automated), else_=None)


def contactable_sql(
    policy: Policy, purpose: str, channel: str, c: RuleColumns, *, automated: bool = False
) -> ColumnElement[bool]:
    return reason_sql(policy, purpose, channel, c, automated=automated).is_(None)
