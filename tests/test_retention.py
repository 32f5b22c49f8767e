"""Storage limitation: a customer with no activity for their jurisdiction's `[retention]
inactive_days` gets an erasure request (requested_by operator, actor retention) that the
ordinary worker completes; activity of any kind keeps them; a jurisdiction without a period is
never touched; a dry run changes nothing and a second run adds nothing. Times are passed in:
the data's clock-given times are set with SQL, orders and consents carry their own."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from sqlalchemy import func, or_, select, update

from cdp.db.tables import access_log, events, identities, profiles
from cdp.profiles.identifiers import parse_identifier
from cdp.settings import DEFAULT_POLICY_DIR
from consent.dsr.customer import customer_profile_ids
from consent.dsr.requests import submit_erasure
from consent.dsr.retention import Activity, cutoff, is_inactive, request_erasure, run_retention
from consent.dsr.worker import run_pending
from consent.dsr_tables import dsr_requests, dsr_transitions
from consent.policy import Policy, Retention
from consent.tables import consent_ledger, suppressions
from tests.helpers import count
from tests.test_cli_errors import assert_plain
from tests.test_erasure import iso
from tests.test_import import run_cli
from tests.test_policy_files import edit

DAYS = 365
NOW = datetime(2025, 6, 1, tzinfo=UTC)  # a period and more before today: the API refuses the future
OLD = datetime(2023, 9, 1, tzinfo=UTC)  # well before the cutoff (2024-06-01)
RECENT = NOW - timedelta(days=10)


def with_retention(policy: Policy, **days: int) -> Policy:
    """The policy with `[retention] inactive_days` set for these jurisdictions (US_CA: US-CA)."""
    periods = {code.replace("_", "-"): n for code, n in days.items()}
    return dataclasses.replace(
        policy,
        jurisdictions={
            code: msgspec.structs.replace(j, retention=Retention(inactive_days=periods[code]))
            if code in periods
            else j
            for code, j in policy.jurisdictions.items()
        },
    )


async def set_times(platform, pids, at: datetime) -> None:  # type: ignore[no-untyped-def]
    """The times the server's clock gave these profiles and their identifiers, set to `at`."""
    async with platform.db.write() as conn:
        await conn.execute(
            update(profiles).where(profiles.c.id.in_(pids)).values(created_at=at, updated_at=at)
        )
        await conn.execute(
            update(identities)
            .where(identities.c.profile_id.in_(pids))
            .values(created_at=at, last_seen_at=at)
        )


async def customer(  # type: ignore[no-untyped-def]
    client, keys, platform, n: int, *, jurisdiction: str = "RU", at: datetime = OLD
) -> uuid.UUID:
    """A customer with a name, an email, a marketing grant and an order, all at `at`."""
    email = f"retained.{n}@example.com"
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": email,
            "first_name": "Сохраняемая",
            "last_name": f"Клиентка{n}",
            "jurisdiction": jurisdiction,
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    pid = uuid.UUID(r.json()["profile_id"])
    await grant(client, keys, email, at)
    await order(client, keys, email, f"ord-{n}-{at:%Y%m%d}", at)
    await set_times(platform, [pid], at)
    return pid


async def grant(client, keys, email: str, at: datetime, status: str = "granted") -> None:  # type: ignore[no-untyped-def]
    body = {
        "email": email,
        "purpose": "marketing",
        "channel": "email",
        "status": status,
        "source": "web_form",
        "occurred_at": iso(at),
    }
    if status == "granted":
        body["evidence"] = {"wording_id": "newsletter-v3", "method": "double_opt_in"}
    r = await client.post("/v1/consents", json=body, headers=keys["ingest"])
    assert r.status_code == 201, r.text


async def order(client, keys, email: str, event_id: str, at: datetime) -> None:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/events",
        json={
            "source": "shop",
            "event_id": event_id,
            "type": "purchase",
            "occurred_at": iso(at),
            "email": email,
            "amount": "100.00",
            "currency": "RUB",
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text


async def requested(platform) -> set[uuid.UUID]:  # type: ignore[no-untyped-def]
    async with platform.db.read() as conn:
        return set((await conn.execute(select(dsr_requests.c.profile_id))).scalars())


async def activity_of(platform, survivor: uuid.UUID) -> Activity:  # type: ignore[no-untyped-def]
    """The customer's latest activity of each kind, read row by row for the rule in Python."""
    led, r, a = consent_ledger.c, dsr_requests.c, access_log.c
    async with platform.db.read() as conn:
        pids = await customer_profile_ids(conn, survivor)
        addresses = select(identities.c.bidx).where(
            identities.c.profile_id.in_(pids), identities.c.kind.in_(("email", "phone"))
        )

        async def latest(column, *where):  # type: ignore[no-untyped-def]
            return (await conn.execute(select(func.max(column)).where(*where))).scalar()

        return Activity(
            profile_updated=await latest(profiles.c.updated_at, profiles.c.id.in_(pids)),
            identifier_seen=await latest(
                identities.c.last_seen_at, identities.c.profile_id.in_(pids)
            ),
            event=await latest(events.c.occurred_at, events.c.profile_id.in_(pids)),
            consent=await latest(
                led.occurred_at, or_(led.profile_id.in_(pids), led.address_bidx.in_(addresses))
            ),
            request=await latest(r.updated_at, r.profile_id.in_(pids)),
            access_request=await latest(
                a.at, a.profile_id.in_(pids), a.action == "access_request.export"
            ),
        )


def by_code(outcomes):  # type: ignore[no-untyped-def]
    return {o.jurisdiction: o for o in outcomes}


# the rule in plain Python ---------------------------------------------------------------------
def test_the_rule_takes_the_latest_activity_of_any_kind():
    old = Activity(profile_updated=OLD, event=OLD, consent=OLD)
    assert is_inactive(old, NOW, DAYS)
    for kind in ("profile_updated", "identifier_seen", "event", "consent", "request"):
        assert not is_inactive(dataclasses.replace(old, **{kind: RECENT}), NOW, DAYS), kind
    assert not is_inactive(dataclasses.replace(old, access_request=RECENT), NOW, DAYS)
    assert Activity(event=OLD, consent=RECENT).latest() == RECENT


def test_the_boundary_day_is_inactive_a_second_later_is_not():
    edge = cutoff(NOW, DAYS)
    assert edge == datetime(2024, 6, 1, tzinfo=UTC)
    assert is_inactive(Activity(profile_updated=edge), NOW, DAYS)
    assert not is_inactive(Activity(profile_updated=edge + timedelta(seconds=1)), NOW, DAYS)
    assert not is_inactive(Activity(), NOW, DAYS)  # nothing known: no erasure without a fact


def test_a_standing_grant_is_activity_when_given_and_nothing_more():
    given = Activity(profile_updated=OLD, consent=OLD)  # granted, never withdrawn, never back
    assert is_inactive(given, NOW, DAYS)


# on the databases -----------------------------------------------------------------------------
async def test_an_inactive_customer_is_requested_then_erased(client, keys, platform):
    platform.policy = with_retention(platform.policy, RU=DAYS)
    pid = await customer(client, keys, platform, 1)
    outcomes = by_code(await run_retention(platform, NOW))
    assert (outcomes["RU"].inactive, outcomes["RU"].requested) == (1, 1)
    assert outcomes["EU"].inactive_days is None and outcomes["EU"].requested == 0

    async with platform.db.read() as conn:
        row = (await conn.execute(select(dsr_requests))).one()
    assert (row.profile_id, row.requested_by, row.actor) == (pid, "operator", "retention")
    r = await client.get(f"/v1/erasure-requests/{row.id}", headers=keys["compliance"])
    created = r.json()["transitions"][0]
    assert created["actor"] == "retention"
    assert created["reason"] == "retention policy: no activity for 365 days " + (
        "(RU [retention] inactive_days = 365)"
    )
    assert r.json()["note"] == created["reason"]

    assert (await run_pending(platform)).completed == 1
    r = await client.get(f"/v1/profiles/{pid}", headers=keys["compliance"])
    assert r.status_code == 410
    assert await count(platform, suppressions) >= 1  # marketing to her address stays stopped
    # erased: a later run finds nobody
    assert by_code(await run_retention(platform, NOW + timedelta(days=DAYS)))["RU"].inactive == 0
    assert await count(platform, dsr_requests) == 1


async def test_any_recent_activity_keeps_a_customer(client, keys, platform):
    platform.policy = with_retention(platform.policy, RU=DAYS)
    idle = await customer(client, keys, platform, 1)
    ordered = await customer(client, keys, platform, 2)
    await order(client, keys, "retained.2@example.com", "ord-recent", RECENT)
    withdrew = await customer(client, keys, platform, 3)
    await grant(client, keys, "retained.3@example.com", RECENT, status="withdrawn")
    regranted = await customer(client, keys, platform, 4)
    await grant(client, keys, "retained.4@example.com", RECENT)
    # a survivor idle since long, and the profile merged into it updated recently
    survivor = await customer(client, keys, platform, 5)
    r = await client.post(
        "/v1/profiles",
        json={"source": "shop", "phone": "+79161230555", "jurisdiction": "RU"},
        headers=keys["ingest"],
    )
    absorbed = uuid.UUID(r.json()["profile_id"])
    r = await client.post(
        "/v1/profiles",
        json={"source": "callcenter", "email": "retained.5@example.com", "phone": "+79161230555"},
        headers=keys["ingest"],
    )
    assert r.json()["merged_profile_ids"] == [str(absorbed)], r.text
    await set_times(platform, [survivor, absorbed], OLD)
    async with platform.db.write() as conn:
        await conn.execute(
            update(profiles).where(profiles.c.id == absorbed).values(updated_at=RECENT)
        )

    # the query finds only the idle one, and so does the look again before each request
    dry = by_code(await run_retention(platform, NOW, dry_run=True, with_ids=True, batch=2))
    assert dry["RU"].profile_ids == [idle]  # in windows of 2 profiles: one for each
    # the query and the rule in Python agree, on either side of the later activity's period
    customers = [idle, ordered, withdrew, regranted, survivor]
    for now in (NOW, RECENT + timedelta(days=DAYS, seconds=-1), RECENT + timedelta(days=DAYS)):
        found = by_code(await run_retention(platform, now, dry_run=True, with_ids=True))
        by_rule = [c for c in customers if is_inactive(await activity_of(platform, c), now, DAYS)]
        assert found["RU"].profile_ids == sorted(by_rule), now
    outcomes = by_code(await run_retention(platform, NOW, batch=1))
    assert outcomes["RU"].requested == 1
    assert await requested(platform) == {idle}
    assert {ordered, withdrew, regranted, survivor}.isdisjoint(await requested(platform))
    # the same customers, a period later: all idle now, the merged pair as one customer
    later = RECENT + timedelta(days=DAYS)
    dry = by_code(await run_retention(platform, later, dry_run=True, with_ids=True))
    assert set(dry["RU"].profile_ids) == {ordered, withdrew, regranted, survivor}
    # listed, then active again before their request: the look again under the lock refuses
    await order(client, keys, "retained.2@example.com", "ord-later", later - timedelta(days=1))
    assert not await request_erasure(platform, ordered, "RU", later, DAYS)
    assert not await request_erasure(platform, absorbed, "RU", later, DAYS)  # not a survivor
    assert not await request_erasure(platform, idle, "RU", later, DAYS)  # requested already
    assert await request_erasure(platform, survivor, "RU", later, DAYS)
    assert await requested(platform) == {idle, survivor}


async def test_a_jurisdiction_without_a_period_is_never_touched(client, keys, platform):
    platform.policy = with_retention(platform.policy, RU=DAYS)
    await customer(client, keys, platform, 1, jurisdiction="EU")
    await customer(client, keys, platform, 2, jurisdiction="US")
    for dry_run in (True, False):
        outcomes = await run_retention(platform, NOW + timedelta(days=10 * DAYS), dry_run=dry_run)
        assert all(o.inactive == 0 and o.requested == 0 for o in outcomes)
    assert await count(platform, dsr_requests) == 0


async def test_a_dry_run_changes_nothing_and_a_second_run_adds_nothing(client, keys, platform):
    platform.policy = with_retention(platform.policy, RU=DAYS, EU=DAYS)
    ru = await customer(client, keys, platform, 1)
    eu = await customer(client, keys, platform, 2, jurisdiction="EU")
    dry = by_code(await run_retention(platform, NOW, dry_run=True, with_ids=True))
    assert (dry["RU"].inactive, dry["EU"].inactive) == (1, 1)
    assert (dry["RU"].profile_ids, dry["EU"].profile_ids) == ([ru], [eu])
    assert await count(platform, dsr_requests) == 0 and await count(platform, dsr_transitions) == 0

    first = by_code(await run_retention(platform, NOW, limit=1))
    assert sum(o.requested for o in first.values()) == 1  # --limit
    second = by_code(await run_retention(platform, NOW))
    assert sum(o.requested for o in second.values()) == 1
    transitions = await count(platform, dsr_transitions)
    third = await run_retention(platform, NOW)
    assert sum(o.requested for o in third) == 0
    assert await count(platform, dsr_requests) == 2
    assert await count(platform, dsr_transitions) == transitions  # not even a "joined"
    assert await requested(platform) == {ru, eu}


async def test_a_customer_with_an_open_request_is_not_requested_again(client, keys, platform):
    platform.policy = with_retention(platform.policy, RU=DAYS)
    pid = await customer(client, keys, platform, 1)
    ident = parse_identifier(platform.policy, platform.keys.indexer, profile_id=str(pid))
    await submit_erasure(platform, ident, requested_by="customer", actor="test")
    async with platform.db.write() as conn:  # received long ago and never finished
        await conn.execute(update(dsr_requests).values(received_at=OLD, updated_at=OLD))
    transitions = await count(platform, dsr_transitions)
    assert by_code(await run_retention(platform, NOW))["RU"].requested == 0
    assert await count(platform, dsr_transitions) == transitions


async def test_the_boundary_day_on_the_database(client, keys, platform):
    platform.policy = with_retention(platform.policy, RU=DAYS)
    edge = cutoff(NOW, DAYS)
    on_edge = await customer(client, keys, platform, 1, at=edge)
    after_edge = await customer(client, keys, platform, 2, at=edge + timedelta(seconds=1))
    dry = by_code(await run_retention(platform, NOW, dry_run=True, with_ids=True))
    assert dry["RU"].profile_ids == [on_edge]
    assert after_edge not in dry["RU"].profile_ids


async def test_the_command_prints_counts_and_ids_never_personal_data(
    client, keys, platform, tmp_path
):
    """Through `cdp retention run`, on the wall clock: the customer's times are years back."""
    policies = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, policies)
    edit(
        policies / "jurisdictions/RU.toml",
        r"^# \[retention\]\n# inactive_days = 1095",
        ("[retention]\ninactive_days = 365"),
    )
    long_ago = datetime(2019, 3, 1, tzinfo=UTC)
    pid = await customer(client, keys, platform, 7, at=long_ago)
    url = platform.settings.database_url
    env = {"CDP_POLICY_DIR": str(policies)}
    personal = ("retained.7@example.com", "Сохраняемая", "Клиентка7")

    dry = run_cli(["retention", "run", "--dry-run"], url, tmp_path, **env)
    assert dry.returncode == 0, dry.stderr
    assert "RU: 1 inactive for 365 days or more" in dry.stdout
    assert "EU: no retention period set" in dry.stdout
    assert str(pid) not in dry.stdout  # counts by default
    listed = run_cli(["retention", "run", "--dry-run", "--ids"], url, tmp_path, **env)
    assert f"RU\t{pid}" in listed.stdout.splitlines()
    assert await count(platform, dsr_requests) == 0

    done = run_cli(["retention", "run"], url, tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert "RU: 1 erasure requests recorded" in done.stdout
    again = run_cli(["retention", "run"], url, tmp_path, **env)
    assert "RU: 0 erasure requests recorded" in again.stdout
    for result in (dry, listed, done, again):
        for value in personal:
            assert value not in result.stdout + result.stderr
    assert await requested(platform) == {pid}

    shipped = run_cli(["retention", "run", "--dry-run"], url, tmp_path)
    assert shipped.returncode == 0 and "no jurisdiction sets" in shipped.stderr
    assert_plain(run_cli(["retention", "run", "--limit", "0"], url, tmp_path), "--limit", code=2)
    assert_plain(run_cli(["retention", "run", "--ids"], url, tmp_path), "--dry-run", code=2)
    edit(policies / "jurisdictions/RU.toml", r"^inactive_days = 365", "inactive_days = 0")
    assert_plain(
        run_cli(["retention", "run"], url, tmp_path, **env), "RU.toml", "retention.inactive_days"
    )


@pytest.mark.parametrize("value", ["0", "-30", '"365"', "36.5", "true", "100000"])
def test_a_bad_period_refuses_to_start_naming_the_file_and_key(tmp_path, value):
    from consent.policy import PolicyError, load_policy

    policies = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, policies)
    assert all(load_policy(policies).inactive_days(c) is None for c in ("RU", "EU", "US", "US-CA"))
    edit(
        policies / "jurisdictions/EU.toml",
        r"^# \[retention\]\n# inactive_days = 1095",
        f"[retention]\ninactive_days = {value}",
    )
    with pytest.raises(PolicyError) as err:
        load_policy(policies)
    assert "EU.toml" in str(err.value) and "retention.inactive_days" in str(err.value)
    edit(policies / "jurisdictions/EU.toml", r"^inactive_days = .*", "inactive_days = 730")
    assert load_policy(policies).inactive_days("EU") == 730
    edit(policies / "jurisdictions/EU.toml", r"^inactive_days = 730", "inactive_day = 730")
    with pytest.raises(PolicyError) as err:
        load_policy(policies)
    assert "EU.toml" in str(err.value) and "inactive_day" in str(err.value)


async def test_the_service_runs_retention_only_where_a_period_is_set(platform):
    from api.background import background_services

    platform.settings = dataclasses.replace(
        platform.settings, checkpoint_interval=0, statistics_interval=0
    )
    for policy, runs in (
        (platform.policy, False),
        (with_retention(platform.policy, EU=DAYS), True),
    ):
        platform.policy = policy
        async with background_services(platform):
            names = {task.get_name() for task in asyncio.all_tasks()}
        assert ("retention" in names) is runs
