"""Consent to advertising is given per advertiser (38-FZ art. 18; POLICIES.md): each advertiser
is a purpose of its own that names it, a grant's proof records whose advertising it allows, and
a grant naming another advertiser is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cdp.settings import DEFAULT_POLICY_DIR
from consent.policy import Policy, PolicyError, load_policy
from consent.tables import consent_ledger
from tests.helpers import count

SHOP, PARTNER = "ООО «Магазин»", "Partner Brands LLC"
ANNA = "anna@example.com"
PHONE = "+79161234567"


def policies_with_partner(tmp_path: Path) -> Path:
    """The shipped policies, the operator's own advertising naming its advertiser, and a
    partner's advertising as a purpose of its own, opt-in everywhere."""
    target = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, target)
    platform_file = target / "policy.toml"
    text = platform_file.read_text(encoding="utf-8")
    text = text.replace(
        "advertising = true\nevidence_required = true\n",
        f'advertising = true\nevidence_required = true\nadvertiser = "{SHOP}"\n',
        1,
    )
    text += (
        '\n[purposes.marketing_partner]\ndescription = "Advertising of our partner."\n'
        f'advertising = true\nevidence_required = true\nadvertiser = "{PARTNER}"\n'
    )
    platform_file.write_text(text, encoding="utf-8")
    for path in (target / "jurisdictions").glob("*.toml"):
        path.write_text(
            path.read_text(encoding="utf-8") + '\n[rules.marketing_partner]\ndefault = "opt_in"\n',
            encoding="utf-8",
        )
    return target


@pytest.fixture
def partner_policy(platform, tmp_path) -> Policy:
    platform.policy = load_policy(policies_with_partner(tmp_path))
    return platform.policy


def grant(purpose: str, channel: str = "email", **evidence: str) -> dict:
    return {
        "purpose": purpose,
        "channel": channel,
        "status": "granted",
        "source": "web_form",
        "evidence": {"wording_id": f"{purpose}-v1", "method": "checkbox", **evidence},
    }


async def refused_as_consent_and_in_a_record(  # type: ignore[no-untyped-def]
    client, keys, platform, as_consent: dict, in_a_record: dict
) -> None:
    """Anna exists; the grant `as_consent` (POST /v1/consents) and the grant `in_a_record`
    (a record's consents) are each a 400 on the evidence's advertiser, and the ledger keeps
    nothing of either."""
    h = keys["ingest"]
    await client.post("/v1/profiles", json={"source": "shop", "email": ANNA}, headers=h)
    before = await count(platform, consent_ledger)
    r = await client.post("/v1/consents", json={"email": ANNA, **as_consent}, headers=h)
    assert r.status_code == 400, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["evidence.advertiser"]
    record = {"source": "shop", "email": ANNA, "consents": [in_a_record]}
    r = await client.post("/v1/profiles", json=record, headers=h)
    assert r.status_code == 400, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["consents[0].evidence.advertiser"]
    assert await count(platform, consent_ledger) == before


async def reachable(client, keys, purpose: str, channel: str = "email") -> set[str]:
    r = await client.post(
        "/v1/segments/query",
        json={
            "purpose": purpose,
            "channel": channel,
            "rules": {"field": "jurisdiction", "op": "eq", "value": "RU"},
            "limit": 100,
        },
        headers=keys["marketing"],
    )
    assert r.status_code == 200, r.text
    return {m["address"] for m in r.json()["items"]}


async def test_consent_to_one_advertiser_does_not_reach_another(client, keys, partner_policy):
    h = keys["ingest"]
    r = await client.post(
        "/v1/profiles",
        json={"source": "shop", "email": ANNA, "phone": PHONE, "consents": [grant("marketing")]},
        headers=h,
    )
    assert r.status_code == 201, r.text
    assert await reachable(client, keys, "marketing") == {ANNA}
    assert await reachable(client, keys, "marketing_partner") == set()

    r = await client.post(
        "/v1/consents", json={"email": ANNA, **grant("marketing_partner")}, headers=h
    )
    assert r.status_code == 201, r.text
    assert await reachable(client, keys, "marketing_partner") == {ANNA}

    # an SMS stop reply stops every advertiser's advertising by sms
    for purpose in ("marketing", "marketing_partner"):
        r = await client.post(
            "/v1/consents", json={"phone": PHONE, **grant(purpose, "sms")}, headers=h
        )
        assert r.status_code == 201, r.text
        assert await reachable(client, keys, purpose, "sms") == {PHONE}
    r = await client.post("/v1/inbound/sms", json={"from": PHONE, "text": "СТОП"}, headers=h)
    assert r.status_code == 200, r.text
    for purpose in ("marketing", "marketing_partner"):
        assert await reachable(client, keys, purpose, "sms") == set()


async def test_a_grant_naming_another_advertiser_is_refused_and_stores_nothing(
    client, keys, platform, partner_policy
):
    h = keys["ingest"]
    await refused_as_consent_and_in_a_record(
        client,
        keys,
        platform,
        grant("marketing_partner", advertiser=SHOP),
        grant("marketing", advertiser=PARTNER),
    )
    # the same advertiser, spelt in another case and spacing, is the same advertiser
    body = {"email": ANNA, **grant("marketing_partner", advertiser=" partner  brands llc")}
    r = await client.post("/v1/consents", json=body, headers=h)
    assert r.status_code == 201, r.text


async def test_the_proof_of_a_grant_names_the_advertiser(client, keys, partner_policy):
    h = keys["ingest"]
    r = await client.post(
        "/v1/profiles",
        json={"source": "shop", "email": ANNA, "consents": [grant("marketing")]},
        headers=h,
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/consents", json={"email": ANNA, **grant("marketing_partner")}, headers=h
    )
    assert r.status_code == 201, r.text
    r = await client.get(
        "/v1/audit/consent-events", params={"email": ANNA}, headers=keys["compliance"]
    )
    assert r.status_code == 200, r.text
    proof = {e["purpose"]: e["evidence"]["advertiser"] for e in r.json()["items"]}
    assert proof == {"marketing": SHOP, "marketing_partner": PARTNER}

    # the customer sees whose advertising each switch is about
    link = await client.post("/v1/preference-links", json={"email": ANNA}, headers=h)
    assert link.status_code == 201, link.text
    page = await client.get(f"/preferences/{link.json()['token']}", params={"lang": "en"})
    assert page.status_code == 200
    assert f"Advertiser: {PARTNER}." in page.text
    assert "Advertiser: ООО «Магазин»." in page.text


def test_an_advertiser_only_names_an_advertising_purpose(tmp_path):
    target = policies_with_partner(tmp_path)
    path = target / "policy.toml"
    text = path.read_text(encoding="utf-8").replace(
        "advertising = false\nevidence_required = false\n",
        'advertising = false\nevidence_required = false\nadvertiser = "Someone"\n',
        1,
    )
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError, match=r"purposes.service.advertiser"):
        load_policy(target)


async def test_a_partners_consent_is_not_taken_for_a_purpose_naming_no_advertiser(
    client, keys, platform, tmp_path
):
    """An operator who named the partner's purpose but not their own: a grant to the partner's
    advertising, sent under the operator's purpose, is a 400 naming evidence.advertiser,
    rather than a consent to the partner making the customer reachable for the operator's own
    advertising. Naming no advertiser, or one no purpose names, is accepted as before."""
    target = policies_with_partner(tmp_path)
    path = target / "policy.toml"
    path.write_text(
        path.read_text(encoding="utf-8").replace(f'advertiser = "{SHOP}"\n', "", 1),
        encoding="utf-8",
    )
    platform.policy = load_policy(target)
    assert platform.policy.purposes["marketing"].advertiser is None
    h = keys["ingest"]
    await refused_as_consent_and_in_a_record(
        client,
        keys,
        platform,
        grant("marketing", advertiser=" partner brands LLC "),
        grant("marketing", advertiser=PARTNER),
    )
    assert await reachable(client, keys, "marketing") == set()

    for advertiser in ({}, {"advertiser": SHOP}):
        r = await client.post(
            "/v1/consents", json={"email": ANNA, **grant("marketing", **advertiser)}, headers=h
        )
        assert r.status_code == 201, r.text
    assert await reachable(client, keys, "marketing") == {ANNA}
