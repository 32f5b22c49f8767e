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
from consent.policy import Policy
from consent.rule import Facts, RuleColumns, decide, reason_sql

T0 = datetime(2026, 1, 1, tzinfo=UTC)
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


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    f=facts,
    purpose=st.sampled_from(["service", "marketing", "sale_share"]),
    channel=st.sampled_from(["email", "sms", "phone", "push", "messenger"]),
    soft=st.booleans(),
    automated=st.booleans(),
)
async def test_sql_rule_equals_python_rule(platform, f, purpose, channel, soft, automated):
    policy = with_soft_opt_in(platform.policy) if soft else platform.policy
    cols = columns(f)
    async with platform.db.read() as conn:
        got = await conn.execute(
            select(reason_sql(policy, purpose, channel, cols, automated=automated))
        )
        sql_reason = got.scalar()
    assert sql_reason == decide(policy, purpose, channel, f, automated=automated)


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


@pytest.mark.parametrize(("f", "soft", "reason"), EDGES)
async def test_the_rule_at_its_edges_in_python_and_sql(platform, f, soft, reason):
    policy = with_soft_opt_in(platform.policy) if soft else platform.policy
    assert decide(policy, "marketing", "email", f) == reason
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
    assert decide(platform.policy, "marketing", "email", f) is None
    assert decide(policy, "marketing", "email", f) == "not_allowed"
    async with platform.db.read() as conn:
        got = await conn.execute(select(reason_sql(policy, "marketing", "email", columns(f))))
        assert got.scalar() == "not_allowed"


def test_soft_opt_in_takes_existing_customers_for_advertising_email_only():
    from pathlib import Path

    from consent.policy import load_policy

    policy = load_policy(Path(__file__).resolve().parent.parent / "policies")
    buyer = Facts("active", "EU", True, None, None, None, is_customer=True)
    assert decide(policy, "marketing", "email", buyer) == "no_consent"  # off by default
    soft = with_soft_opt_in(policy)
    assert decide(soft, "marketing", "email", buyer) is None
    assert decide(soft, "marketing", "sms", buyer) == "no_consent"
    assert decide(soft, "sale_share", "email", buyer) == "no_consent"  # not advertising
    assert decide(soft, "marketing", "email", dataclasses.replace(buyer, is_customer=False)) == (
        "no_consent"
    )
    assert decide(soft, "marketing", "email", Facts("active", "RU", True, None, None, None, True))
    opted_out = Facts("active", "EU", True, "withdrawn", T0, T0, is_customer=True)
    assert decide(soft, "marketing", "email", opted_out) == "suppressed"
    withdrew = Facts("active", "EU", True, "withdrawn", T0, None, is_customer=True)
    assert decide(soft, "marketing", "email", withdrew) == "withdrawn"


def test_fail_closed_cases():  # plain Python: no database needed
    from pathlib import Path

    from consent.policy import load_policy

    policy = load_policy(Path(__file__).resolve().parent.parent / "policies")
    ok = Facts("active", "RU", True, "granted", T0, None)
    assert decide(policy, "marketing", "email", ok) is None
    assert decide(policy, "marketing", "fax", ok) == "not_allowed"
    assert decide(policy, "lottery", "email", ok) == "not_allowed"
    assert (
        decide(policy, "marketing", "email", Facts("active", "ZZ", True, "granted", T0, None))
        == "not_allowed"
    )
    assert (
        decide(policy, "marketing", "email", Facts("active", "RU", False, "granted", T0, None))
        == "no_address"
    )
    # a suppression at the very time of the grant wins: only a strictly later grant lifts it
    assert (
        decide(policy, "marketing", "email", Facts("active", "RU", True, "granted", T0, T0))
        == "suppressed"
    )
    assert decide(policy, "service", "sms", Facts("active", "RU", True, None, None, None)) is None
    assert (
        decide(policy, "marketing", "email", Facts("active", "US", True, None, None, None)) is None
    )
    assert (
        decide(policy, "marketing", "sms", Facts("active", "US", True, None, None, None))
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
        assert decide(policy, "marketing", channel, ru) is None  # a person dialling
        assert decide(policy, "marketing", channel, ru, automated=True) == "not_allowed"
        # order messages are not advertising; another jurisdiction asks for consent only
        assert decide(policy, "service", channel, ru, automated=True) is None
        eu = dataclasses.replace(ru, jurisdiction="EU")
        assert decide(policy, "marketing", channel, eu, automated=True) is None
    assert decide(policy, "marketing", "email", ru, automated=True) is None
