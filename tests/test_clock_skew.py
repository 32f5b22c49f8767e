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
