"""Servers whose clocks disagree (several API processes behind a load balancer, or one clock
stepped back by NTP): a withdrawal that gives no time of its own counts from when the ledger
records it, and the ledger's recording time never goes back, so an opt-out outranks every
entry recorded before it (DESIGN 1.2) whatever the clock of the process that recorded that
entry said. The clocks are set explicitly, never read during the test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from consent import ledger, optout, service
from tests.test_consent import GRANT, consent, contactable

EMAIL = "skew@example.com"
GRANTED = {"email": EMAIL, "purpose": "marketing", "channel": "email", "status": "granted"}


def clock(monkeypatch: pytest.MonkeyPatch, at: datetime) -> None:
    """The clock of the process handling the next request."""
    for module in (ledger, optout, service):
        monkeypatch.setattr(module, "utcnow", lambda: at)


@pytest.mark.parametrize("how", ["opt-out", "withdrawal"])
async def test_a_withdrawal_outranks_a_grant_recorded_before_it_on_a_clock_ahead(
    client, keys, monkeypatch, how
):
    await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": EMAIL, "country": "RU"},
        headers=keys["ingest"],
    )
    t = datetime.now(UTC)  # read once: a recent time, so no check finds it in the future
    clock(monkeypatch, t + timedelta(seconds=2))  # this process's clock is 2 s ahead
    await consent(client, keys, evidence=GRANT, **GRANTED)
    assert (await contactable(client, keys, email=EMAIL))["marketing"]["email"] is True
    clock(monkeypatch, t + timedelta(seconds=1))  # a second later, on a right clock
    if how == "opt-out":
        r = await client.post(
            "/v1/opt-outs", json={"email": EMAIL, "source": "esp"}, headers=keys["ingest"]
        )
        assert r.status_code == 200, r.text
    else:
        await consent(client, keys, **{**GRANTED, "status": "withdrawn"})
    assert (await contactable(client, keys, email=EMAIL))["marketing"]["email"] is False
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    assert r.json()["ok"] is True, r.text


async def test_a_clock_that_once_ran_far_ahead_does_not_date_every_later_withdrawal(
    client, keys, monkeypatch
):
    """The recording time follows the last entry's by at most the clock-skew allowance: after
    an entry recorded a day ahead (another customer's), an opt-out is dated 5 minutes ahead at
    most, so a grant the customer makes ten minutes later counts (dated a day ahead, no grant
    could outrank it for a day; dated 2099, ever)."""
    for email in (EMAIL, "other@example.com"):
        await client.post(
            "/v1/profiles",
            json={"source": "crm", "email": email, "country": "RU"},
            headers=keys["ingest"],
        )
    t = datetime.now(UTC)
    clock(monkeypatch, t)
    await consent(client, keys, evidence=GRANT, **GRANTED)
    clock(monkeypatch, t + timedelta(days=1))  # a clock wrong for a moment
    await consent(client, keys, evidence=GRANT, **{**GRANTED, "email": "other@example.com"})
    clock(monkeypatch, t + timedelta(seconds=1))
    r = await client.post(
        "/v1/opt-outs", json={"email": EMAIL, "source": "esp"}, headers=keys["ingest"]
    )
    assert r.status_code == 200, r.text
    assert (await contactable(client, keys, email=EMAIL))["marketing"]["email"] is False
    clock(monkeypatch, t + timedelta(minutes=10))
    await consent(client, keys, evidence=GRANT, **GRANTED)  # the customer changes their mind
    assert (await contactable(client, keys, email=EMAIL))["marketing"]["email"] is True
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    assert r.json()["ok"] is True, r.text


async def test_an_unmerge_withdraws_a_doubtful_grant_recorded_on_a_clock_ahead(
    client, keys, monkeypatch
):
    """A grant naming a wrongly merged customer reached the other customer's phone; the unmerge
    withdraws it there (consent.merged_consent.withdraw_doubtful). Dated by the unmerging
    process's clock, a second behind the one that recorded the grant, the withdrawal lost to
    it and the phone stayed contactable for advertising on a grant that may have been Anna's
    (and Anna by push on one that may have been the other customer's)."""
    from cdp.profiles import unmerge
    from tests.test_unmerge import ANNA, OTHER, WRONG_LINK, post

    phone = "+79161234567"
    anna = (await post(client, keys, "/v1/profiles", ANNA))["profile_id"]
    await post(client, keys, "/v1/profiles", OTHER)
    await post(client, keys, "/v1/profiles", WRONG_LINK)
    t = datetime.now(UTC)
    clock(monkeypatch, t + timedelta(seconds=2))
    sms = {"purpose": "marketing", "channel": "sms", "status": "granted", "evidence": GRANT}
    push = {**sms, "channel": "push"}
    for grant in (sms, push):
        await post(client, keys, "/v1/consents", {"source": "crm", "external_id": "C-1", **grant})
    assert (await contactable(client, keys, phone=phone))["marketing"]["sms"] is True
    assert (await contactable(client, keys, phone=phone))["marketing"]["push"] is True
    clock(monkeypatch, t + timedelta(seconds=1))
    monkeypatch.setattr(unmerge, "utcnow", lambda: t + timedelta(seconds=1))
    r = await client.post(f"/v1/profiles/{anna}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    assert (await contactable(client, keys, phone=phone))["marketing"]["sms"] is False
    # a push grant while merged counts for neither (cdp.profiles.unmerge)
    assert (await contactable(client, keys, email=ANNA["email"]))["marketing"]["push"] is False
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    assert r.json()["ok"] is True, r.text


@pytest.mark.parametrize(
    ("grant_at", "withdrawal_at", "granted"),
    [
        ("2026-11-05T12:00:00+03:00", "2026-11-05T09:00:00Z", False),  # one instant, two zones
        ("2026-11-05T09:00:00.0000004Z", "2026-11-05T04:00:00-05:00", False),  # rounds to it
        ("2026-11-05T09:00:00.0000006+00:00", "2026-11-05T09:00:00Z", True),  # 1 µs later
        ("2026-11-05T08:59:59.999999Z", "2026-11-05T09:00:00+00:00", False),
    ],
)
@pytest.mark.parametrize("grant_first", [True, False])
async def test_one_instant_in_two_zones_is_a_tie_that_a_withdrawal_wins(
    client, keys, grant_at, withdrawal_at, granted, grant_first
):
    """Times are compared as instants on both databases (SQLite keeps UTC text): the same
    instant written in two zones, or with digits beyond the microsecond, is a tie, which a
    withdrawal wins whichever came first; a microsecond later is later."""
    await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": EMAIL, "country": "RU"},
        headers=keys["ingest"],
    )
    grant = {**GRANTED, "evidence": GRANT, "occurred_at": grant_at}
    withdrawal = {**GRANTED, "status": "withdrawn", "occurred_at": withdrawal_at}
    for body in (grant, withdrawal) if grant_first else (withdrawal, grant):
        await consent(client, keys, **body)
    assert (await contactable(client, keys, email=EMAIL))["marketing"]["email"] is granted
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    assert r.json()["ok"] is True, r.text
