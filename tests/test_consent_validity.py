"""Consent validity periods: `[purposes.<purpose>] consent_valid_days` in a jurisdiction file.

A grant that occurred more days ago than the period is no longer in force: the customer is not
contactable for the purpose on its opt-in channels, exactly as if they had never granted (the
"no_consent" reason), until a newer grant renews it; a withdrawal stays a withdrawal. The
consent view still shows the grant (status and since), so an officer sees why. Checked on
every path that decides contactability, on both databases: the consent view, one address's
decision, segment members, stats, ad-hoc query, export and the preference centre.
"""

from __future__ import annotations

import json
import shutil
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cdp.profiles.identifiers import parse_identifier
from cdp.profiles.service import upsert_batch
from cdp.segments.members import Definition, members_page
from cdp.segments.rules import AllOf
from cdp.segments.service import definition_stats
from cdp.settings import DEFAULT_POLICY_DIR
from consent.policy import PolicyError, load_policy
from consent.schemas import ConsentIn, EvidenceIn
from consent.service import address_decision, consent_view, record_consent
from tests.test_policy_files import edit
from tests.test_preferences import RU_EN, choices_of, form_for
from tests.test_rule import with_validity

GRANT = {"wording_id": "newsletter-v3", "method": "double_opt_in"}
S = timedelta(seconds=1)
JURISDICTION_FILES = ("RU", "EU", "US", "US-CA")


# -- the setting, as the operator writes it ------------------------------------------------
@pytest.fixture
def policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, target)
    return target


def set_period(policies: Path, code: str, value: str, purpose: str = "marketing") -> None:
    edit(
        policies / f"jurisdictions/{code}.toml",
        r"^# \[purposes\.marketing\]\n# consent_valid_days = \d+",
        f"[purposes.{purpose}]\nconsent_valid_days = {value}",
    )


def refused(policies: Path) -> str:
    with pytest.raises(PolicyError) as err:
        load_policy(policies)
    return str(err.value)


def test_shipped_policies_set_no_period_and_offer_one_commented_out(policies):
    """As shipped, a grant stays in force until withdrawn; each file shows the setting."""
    policy = load_policy(policies)
    for code in JURISDICTION_FILES:
        for purpose in policy.purposes:
            assert policy.consent_valid_days(code, purpose) is None
        text = (policies / f"jurisdictions/{code}.toml").read_text(encoding="utf-8")
        assert "# [purposes.marketing]\n# consent_valid_days = " in text
    assert "152-FZ art. 9(4)" in (policies / "jurisdictions/RU.toml").read_text(encoding="utf-8")


def test_a_period_is_read_and_changes_the_policy_version(policies):
    shipped = load_policy(policies)
    set_period(policies, "RU", "1825")
    policy = load_policy(policies)
    assert policy.consent_valid_days("RU", "marketing") == 1825
    assert policy.consent_valid_days("EU", "marketing") is None
    assert policy.consent_valid_days("RU", "service") is None
    assert policy.version != shipped.version  # recorded on every decision from now on


@pytest.mark.parametrize("value", ["0", "-30", '"1825"', "18.25", "true", "100000"])
def test_a_bad_period_names_the_file_and_the_key(policies, value):
    set_period(policies, "EU", value)
    message = refused(policies)
    assert "EU.toml" in message and "purposes.marketing.consent_valid_days" in message


def test_a_misspelt_setting_or_an_unknown_purpose_is_refused(policies):
    set_period(policies, "RU", "365")
    edit(policies / "jurisdictions/RU.toml", r"^consent_valid_days = 365", "consent_valid_day = 1")
    message = refused(policies)
    assert "RU.toml" in message and "consent_valid_day" in message
    edit(policies / "jurisdictions/RU.toml", r"^consent_valid_day = 1", "consent_valid_days = 1")
    edit(policies / "jurisdictions/RU.toml", r"^\[purposes\.marketing\]", "[purposes.lottery]")
    message = refused(policies)
    assert "RU.toml" in message and "purposes.lottery" in message and "unknown purpose" in message


def test_a_period_on_the_contract_basis_is_refused(policies):
    """Service messages need no consent (the contract): there is no grant to lapse."""
    set_period(policies, "US", "365", purpose="service")  # even where US service SMS is opt-in
    message = refused(policies)
    assert "US.toml" in message and "purposes.service.consent_valid_days" in message
    assert "contract" in message


def test_a_period_where_no_channel_is_opt_in_is_refused(policies):
    set_period(policies, "US-CA", "365", purpose="sale_share")  # CCPA: opt-out of sale
    message = refused(policies)
    assert "US-CA.toml" in message and "purposes.sale_share.consent_valid_days" in message


# -- the rule, at its boundary, on every path (times passed in) -----------------------------
T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
DAYS = 30


async def grant(p, email: str, at: datetime, status: str = "granted") -> None:  # type: ignore[no-untyped-def]
    ident = parse_identifier(p.policy, p.keys.indexer, email=email)
    body = ConsentIn(
        purpose="marketing",
        channel="email",
        status=status,
        source="web",
        occurred_at=at,
        evidence=EvidenceIn(wording_id="w1", method="checkbox"),
    )
    await record_consent(p, body, ident, "t")


async def answers(p, pid: uuid.UUID, email: str, now: datetime) -> dict:  # type: ignore[no-untyped-def]
    """What each path says of the customer at `now`."""
    d = Definition("marketing", "email", AllOf(()))
    bidx = p.keys.indexer.email(email)
    async with p.db.read() as conn:
        view = await consent_view(conn, p, pid, now=now)
        page = await members_page(conn, p, d, after=None, limit=10, now=now)
        decision = await address_decision(conn, p, "email", bidx, "marketing", "email", now=now)
    stats = await definition_stats(p, d, now=now)
    return {
        "view": view.contactable["marketing"]["email"],
        "member": str(pid) in {m.profile_id for m in page.items},
        "decision": decision,
        "stats": (stats.contactable, stats.excluded["no_consent"]),
        "items": [(i["status"], i["since"]) for i in view.items if i["purpose"] == "marketing"],
    }


async def test_a_grant_lapses_a_second_after_its_period_on_every_path(platform):
    records = [
        {"source": "crm", "email": email, "jurisdiction": "RU"}
        for email in ("lapse@example.com", "gone@example.com")
    ]
    pid, gone = [i.outcome.profile_id for i in await upsert_batch(platform, records, "t")]
    await grant(platform, "lapse@example.com", T0)
    await grant(platform, "gone@example.com", T0)
    await grant(platform, "gone@example.com", T0 + S, status="withdrawn")
    shipped = platform.policy
    platform.policy = with_validity(shipped, DAYS, RU=DAYS)
    boundary = T0 + timedelta(days=DAYS)
    in_force = {"view": True, "member": True, "decision": None, "stats": (1, 0)}
    lapsed = {"view": False, "member": False, "decision": "no_consent", "stats": (0, 1)}
    for now, want in ((boundary - S, in_force), (boundary, in_force), (boundary + S, lapsed)):
        got = await answers(platform, pid, "lapse@example.com", now)
        # the officer still sees the grant and when it was given
        assert got.pop("items") == [("granted", T0)], now
        assert got == want, now
        # a withdrawal stays a withdrawal, before and after the period
        still = await answers(platform, gone, "gone@example.com", now)
        assert (still["decision"], still["view"]) == ("withdrawn", False), now
        stats = await definition_stats(
            platform, Definition("marketing", "email", AllOf(())), now=now
        )
        assert stats.excluded["withdrawn"] == 1 and stats.matched == 2, now

    # a newer grant renews it, for another period from its own time
    await grant(platform, "lapse@example.com", boundary)
    got = await answers(platform, pid, "lapse@example.com", boundary + S)
    assert got["view"] is True and got["member"] is True and got["stats"] == (1, 0)
    got = await answers(platform, pid, "lapse@example.com", boundary + timedelta(days=DAYS) + S)
    assert got["view"] is False and got["decision"] == "no_consent"

    # only the jurisdiction that sets a period: EU sets none here
    platform.policy = with_validity(shipped, DAYS, EU=DAYS)
    got = await answers(platform, pid, "lapse@example.com", boundary + timedelta(days=999))
    assert got["view"] is True and got["member"] is True


# -- through the API, on the wall clock (margins of an hour, never a boundary) ---------------
async def profile(client, keys, email: str, at: datetime, jurisdiction: str = "RU") -> str:  # type: ignore[no-untyped-def]
    consent = {
        "purpose": "marketing",
        "channel": "email",
        "status": "granted",
        "evidence": GRANT,
        "occurred_at": at.isoformat(),
    }
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": email, "jurisdiction": jurisdiction, "consents": [consent]},
        headers=keys["ingest"],
    )
    assert r.status_code in (200, 201), r.text
    return r.json()["profile_id"]


async def test_a_marketing_tool_an_officer_and_the_customer_see_the_lapse(client, keys, platform):
    platform.policy = with_validity(platform.policy, 365)
    now = datetime.now(UTC)
    old = await profile(client, keys, "old@example.com", now - timedelta(days=365, hours=1))
    fresh = await profile(client, keys, "fresh@example.com", now - timedelta(days=364, hours=23))
    # CAN-SPAM: US marketing email is opt-out, needs no grant, so an old one changes nothing
    us = await profile(client, keys, "us@example.com", now - timedelta(days=800), "US")

    # the officer: the grant is there, with its time; contactable says no
    r = await client.get(f"/v1/profiles/{old}/consents", headers=keys["admin"])
    assert r.status_code == 200
    [item] = [i for i in r.json()["items"] if i["purpose"] == "marketing"]
    assert item["status"] == "granted" and item["since"].startswith(
        (now - timedelta(days=365, hours=1)).date().isoformat()
    )
    assert r.json()["contactable"]["marketing"]["email"] is False
    assert r.json()["contactable"]["service"]["email"] is True  # the contract: unaffected
    for pid in (fresh, us):
        r = await client.get(f"/v1/profiles/{pid}/consents", headers=keys["admin"])
        assert r.json()["contactable"]["marketing"]["email"] is True

    # the marketing tool: members, ad-hoc query, stats and export leave the lapsed one out
    rules = {"all": []}
    query = {"purpose": "marketing", "channel": "email", "rules": rules}
    r = await client.post("/v1/segments/query", json=query, headers=keys["marketing"])
    assert r.status_code == 200, r.text
    assert {m["profile_id"] for m in r.json()["items"]} == {fresh, us}
    r = await client.post("/v1/segments", json=query | {"name": "all"}, headers=keys["marketing"])
    sid = r.json()["id"]
    r = await client.get(f"/v1/segments/{sid}/members", headers=keys["marketing"])
    assert {m["profile_id"] for m in r.json()["items"]} == {fresh, us}
    r = await client.get(f"/v1/segments/{sid}/stats", headers=keys["marketing"])
    stats = r.json()
    assert (stats["matched"], stats["contactable"], stats["excluded"]["no_consent"]) == (3, 2, 1)
    assert sum(stats["excluded"].values()) == stats["matched"] - stats["contactable"]
    r = await client.get(f"/v1/segments/{sid}/export?format=ndjson", headers=keys["marketing"])
    assert r.status_code == 200
    exported = {json.loads(line)["profile_id"] for line in r.text.splitlines() if line}
    assert exported == {fresh, us}

    # the customer: the switch is off, and turning it on renews the consent
    link = await client.post(
        "/v1/preference-links", json={"email": "old@example.com"}, headers=keys["ingest"]
    )
    token = link.json()["token"]
    page = await client.get(f"/preferences/{token}", headers=RU_EN)
    switches = choices_of(page.text)
    assert switches["marketing:email"] is False and switches["service:email"] is True
    allow = {k for k, on in switches.items() if on} | {"marketing:email"}
    r = await client.post(f"/preferences/{token}", data=form_for(page.text, allow))
    assert r.status_code == 303
    r = await client.get(f"/v1/profiles/{old}/consents", headers=keys["admin"])
    assert r.json()["contactable"]["marketing"]["email"] is True
    r = await client.post("/v1/segments/query", json=query, headers=keys["marketing"])
    assert {m["profile_id"] for m in r.json()["items"]} == {old, fresh, us}
