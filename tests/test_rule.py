"""The contactability rule: the Python and SQL forms give the same answer for any facts."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Boolean, String, literal, null, select

from cdp.db.types import UTCDateTime
from consent.policy import JurisdictionPurpose, Policy
from consent.rule import Facts, RuleColumns, decide, reason_sql, validity_params

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=30)  # the time of the answer, where it does not matter
# around the lapse of a 1-day period for grants at T0 + 0..3 minutes: exactly at a grant's
# boundary (still in force), a second after it (lapsed) and a second before it
BOUNDARY_NOWS = st.integers(-1, 4).flatmap(
    lambda m: st.sampled_from([-1, 0, 1]).map(
        lambda s: T0 + timedelta(days=1, minutes=m, seconds=s)
    )
)
times = st.one_of(st.none(), st.integers(0, 3).map(lambda m: T0 + timedelta(minutes=m)))
facts = st.builds(
    Facts,
    profile_status=st.sampled_from(["active", "merged", "erased"]),
    jurisdiction=st.sampled_from(["RU", "EU", "US", "US-CA", "XX"]),
    has_address=st.booleans(),
    state_status=st.sampled_from([None, "granted", "withdrawn"]),
    state_since=times,
    suppressed_at=times,
    is_customer=st.booleans(),
).filter(lambda f: (f.state_status is None) == (f.state_since is None))
# the facts a validity period decides on: a customer holding the address, with a grant
granted = st.builds(
    Facts,
    profile_status=st.just("active"),
    jurisdiction=st.sampled_from(["RU", "EU", "US", "US-CA"]),
    has_address=st.just(True),
    state_status=st.just("granted"),
    state_since=times.filter(lambda t: t is not None),
    suppressed_at=times,
    is_customer=st.booleans(),
)


def lit(value, type_):  # type: ignore[no-untyped-def]
    return null().cast(type_) if value is None else literal(value, type_)


def columns(f: Facts) -> RuleColumns:
    """The facts as SQL literals, for reason_sql."""
    return RuleColumns(
        profile_status=lit(f.profile_status, String()),
        jurisdiction=lit(f.jurisdiction, String()),
        has_address=literal(f.has_address, Boolean()),
        state_status=lit(f.state_status, String()),
        state_since=lit(f.state_since, UTCDateTime()),
        suppressed_at=lit(f.suppressed_at, UTCDateTime()),
        is_customer=literal(f.is_customer, Boolean()),
    )


def with_soft_opt_in(policy: Policy) -> Policy:
    """The policy with soft opt-in enabled for the EU, as an operator may choose."""
    eu = msgspec.structs.replace(policy.jurisdictions["EU"], soft_opt_in=True)
    return dataclasses.replace(policy, jurisdictions={**policy.jurisdictions, "EU": eu})


def with_validity(policy: Policy, days: int, purpose: str = "marketing", **only: int) -> Policy:
    """The policy with `[purposes.<purpose>] consent_valid_days` set in every jurisdiction
    where its basis is not the contract (or, given `only`, in those: US_CA for US-CA)."""
    periods = {code.replace("_", "-"): n for code, n in only.items()}
    out = {}
    for code, j in policy.jurisdictions.items():
        n = periods.get(code) if only else days
        if n is not None and j.rules.get(purpose, {}).get("default") != "contract":
            setting = JurisdictionPurpose(consent_valid_days=n)
            j = msgspec.structs.replace(j, purposes={**j.purposes, purpose: setting})
        out[code] = j
    return dataclasses.replace(policy, jurisdictions=out)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    f=st.one_of(facts, granted, granted),  # a grant, more often than by chance
    purpose=st.sampled_from(["service", "marketing", "sale_share"]),
    channel=st.sampled_from(["email", "sms", "phone", "push", "messenger"]),
    soft=st.booleans(),
    automated=st.booleans(),
    valid=st.booleans(),
    now=BOUNDARY_NOWS,
)
async def test_sql_rule_equals_python_rule(
    platform, f, purpose, channel, soft, automated, valid, now
):
    """`valid`: a 1-day validity period on the purpose, `now` around a grant's lapse."""
    policy = with_soft_opt_in(platform.policy) if soft else platform.policy
    policy = with_validity(policy, 1, purpose) if valid else policy
    cols = columns(f)
    async with platform.db.read() as conn:
        got = await conn.execute(
            select(reason_sql(policy, purpose, channel, cols, automated=automated)),
            validity_params(policy, purpose, channel, now),
        )
        sql_reason = got.scalar()
    assert sql_reason == decide(policy, purpose, channel, f, automated=automated, now=now)


T1 = T0 + timedelta(minutes=1)
# (facts, soft opt-in enabled for the EU, the reason for marketing by email), at the edges that
# random facts reach only by luck: which of a grant and a suppression came later, a withdrawal
# after a suppression, an address nobody holds, an existing customer under soft opt-in
EDGES = [
    (Facts("active", "RU", True, "granted", T1, T0), False, None),  # a later grant lifts it
    (Facts("active", "RU", True, "granted", T0, T1), False, "suppressed"),  # an earlier one not
    (Facts("active", "RU", True, "withdrawn", T1, T0), False, "suppressed"),
    (Facts("active", "US", True, "withdrawn", T1, None), False, "withdrawn"),  # opt-out basis
    (Facts(None, None, False, None, None, None), False, "no_address"),  # nobody holds it
    (Facts("active", "EU", True, None, None, None, is_customer=True), True, None),
    (Facts("active", "EU", True, None, None, None, is_customer=False), True, "no_consent"),
    (Facts("active", "RU", True, None, None, None, is_customer=True), True, "no_consent"),
    (Facts("active", "EU", True, "withdrawn", T0, None, is_customer=True), True, "withdrawn"),
]


DAY = timedelta(days=1)
S = timedelta(seconds=1)
# (facts, soft opt-in for the EU, the reason for marketing by email at T1 + 1 day) under a
# 1-day validity period: the lapse a second either side of its boundary, and what it leaves
LAPSES = [
    (Facts("active", "RU", True, "granted", T1, None), False, None),  # exactly the period: in force
    (Facts("active", "RU", True, "granted", T1 + S, None), False, None),  # a second inside
    (Facts("active", "RU", True, "granted", T1 - S, None), False, "no_consent"),  # a second out
    (Facts("active", "RU", True, "granted", T1 - S, T0), False, "no_consent"),  # lifted, lapsed
    (Facts("active", "RU", True, "granted", T0, T1), False, "suppressed"),
    (Facts("active", "RU", True, "withdrawn", T0, None), False, "withdrawn"),  # stays withdrawn
    (Facts("active", "US", True, "granted", T0, None), False, None),  # US email is opt-out
    (Facts("active", "EU", True, "granted", T0, None, is_customer=True), True, None),  # soft
    (Facts("active", "EU", True, "granted", T0, None, is_customer=False), True, "no_consent"),
]


@pytest.mark.parametrize(("f", "soft", "reason"), LAPSES)
async def test_a_lapsed_grant_at_its_edges_in_python_and_sql(platform, f, soft, reason):
    policy = with_validity(with_soft_opt_in(platform.policy) if soft else platform.policy, 1)
    now = T1 + DAY
    assert decide(policy, "marketing", "email", f, now=now) == reason
    async with platform.db.read() as conn:
        got = await conn.execute(
            select(reason_sql(policy, "marketing", "email", columns(f))),
            validity_params(policy, "marketing", "email", now),
        )
        assert got.scalar() == reason


@pytest.mark.parametrize(("f", "soft", "reason"), EDGES)
async def test_the_rule_at_its_edges_in_python_and_sql(platform, f, soft, reason):
    policy = with_soft_opt_in(platform.policy) if soft else platform.policy
    assert decide(policy, "marketing", "email", f, now=NOW) == reason
    cols = columns(f)
    async with platform.db.read() as conn:
        got = await conn.execute(select(reason_sql(policy, "marketing", "email", cols)))
        assert got.scalar() == reason


async def test_a_purpose_no_jurisdiction_allows_is_not_allowed_in_python_and_sql(platform):
    """Fail closed where the policy says nothing in any jurisdiction, even with a grant."""
    rules = {
        code: msgspec.structs.replace(
            j, rules={k: v for k, v in j.rules.items() if k != "marketing"}
        )
        for code, j in platform.policy.jurisdictions.items()
    }
    policy = dataclasses.replace(platform.policy, jurisdictions=rules)
    f = Facts("active", "RU", True, "granted", T1, None)
    assert decide(platform.policy, "marketing", "email", f, now=NOW) is None
    assert decide(policy, "marketing", "email", f, now=NOW) == "not_allowed"
    async with platform.db.read() as conn:
        got = await conn.execute(select(reason_sql(policy, "marketing", "email", columns(f))))
        assert got.scalar() == "not_allowed"


def test_soft_opt_in_takes_existing_customers_for_advertising_email_only():
    from pathlib import Path

    from consent.policy import load_policy

    policy = load_policy(Path(__file__).resolve().parent.parent / "policies")
    buyer = Facts("active", "EU", True, None, None, None, is_customer=True)
    assert decide(policy, "marketing", "email", buyer, now=NOW) == "no_consent"  # off by default
    soft = with_soft_opt_in(policy)
    assert decide(soft, "marketing", "email", buyer, now=NOW) is None
    assert decide(soft, "marketing", "sms", buyer, now=NOW) == "no_consent"
    assert decide(soft, "sale_share", "email", buyer, now=NOW) == "no_consent"  # not advertising
    assert decide(
        soft, "marketing", "email", dataclasses.replace(buyer, is_customer=False), now=NOW
    ) == ("no_consent")
    assert decide(
        soft, "marketing", "email", Facts("active", "RU", True, None, None, None, True), now=NOW
    )
    opted_out = Facts("active", "EU", True, "withdrawn", T0, T0, is_customer=True)
    assert decide(soft, "marketing", "email", opted_out, now=NOW) == "suppressed"
    withdrew = Facts("active", "EU", True, "withdrawn", T0, None, is_customer=True)
    assert decide(soft, "marketing", "email", withdrew, now=NOW) == "withdrawn"


def test_fail_closed_cases():  # plain Python: no database needed
    from pathlib import Path

    from consent.policy import load_policy

    policy = load_policy(Path(__file__).resolve().parent.parent / "policies")
    ok = Facts("active", "RU", True, "granted", T0, None)
    assert decide(policy, "marketing", "email", ok, now=NOW) is None
    assert decide(policy, "marketing", "fax", ok, now=NOW) == "not_allowed"
    assert decide(policy, "lottery", "email", ok, now=NOW) == "not_allowed"
    assert (
        decide(
            policy, "marketing", "email", Facts("active", "ZZ", True, "granted", T0, None), now=NOW
        )
        == "not_allowed"
    )
    assert (
        decide(
            policy, "marketing", "email", Facts("active", "RU", False, "granted", T0, None), now=NOW
        )
        == "no_address"
    )
    # a suppression at the very time of the grant wins: only a strictly later grant lifts it
    assert (
        decide(
            policy, "marketing", "email", Facts("active", "RU", True, "granted", T0, T0), now=NOW
        )
        == "suppressed"
    )
    assert (
        decide(policy, "service", "sms", Facts("active", "RU", True, None, None, None), now=NOW)
        is None
    )
    assert (
        decide(policy, "marketing", "email", Facts("active", "US", True, None, None, None), now=NOW)
        is None
    )
    assert (
        decide(policy, "marketing", "sms", Facts("active", "US", True, None, None, None), now=NOW)
        == "no_consent"
    )


def test_advertising_by_automatic_dialling_or_mailing_is_not_allowed_in_russia():
    """38-FZ art. 18(2), as RU.toml encodes it: a grant does not make a Russian customer
    contactable for advertising sent by automatic dialling or mailing on phone or sms."""
    from pathlib import Path

    from consent.policy import load_policy

    policy = load_policy(Path(__file__).resolve().parent.parent / "policies")
    ru = Facts("active", "RU", True, "granted", T0, None)
    for channel in ("phone", "sms"):
        assert decide(policy, "marketing", channel, ru, now=NOW) is None  # a person dialling
        assert decide(policy, "marketing", channel, ru, automated=True, now=NOW) == "not_allowed"
        # order messages are not advertising; another jurisdiction asks for consent only
        assert decide(policy, "service", channel, ru, automated=True, now=NOW) is None
        eu = dataclasses.replace(ru, jurisdiction="EU")
        assert decide(policy, "marketing", channel, eu, automated=True, now=NOW) is None
    assert decide(policy, "marketing", "email", ru, automated=True, now=NOW) is None
