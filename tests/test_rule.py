"""The contactability rule: the Python and SQL forms give the same answer for any facts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Boolean, String, literal, null, select

from cdp.db.types import UTCDateTime
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
).filter(lambda f: (f.state_status is None) == (f.state_since is None))


def lit(value, type_):  # type: ignore[no-untyped-def]
    return null().cast(type_) if value is None else literal(value, type_)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    f=facts,
    purpose=st.sampled_from(["service", "marketing", "sale_share"]),
    channel=st.sampled_from(["email", "sms", "phone", "push", "messenger"]),
)
async def test_sql_rule_equals_python_rule(platform, f, purpose, channel):
    cols = RuleColumns(
        profile_status=lit(f.profile_status, String()),
        jurisdiction=lit(f.jurisdiction, String()),
        has_address=literal(f.has_address, Boolean()),
        state_status=lit(f.state_status, String()),
        state_since=lit(f.state_since, UTCDateTime()),
        suppressed_at=lit(f.suppressed_at, UTCDateTime()),
    )
    async with platform.db.read() as conn:
        got = await conn.execute(select(reason_sql(platform.policy, purpose, channel, cols)))
        sql_reason = got.scalar()
    assert sql_reason == decide(platform.policy, purpose, channel, f)


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
