"""A profile read answers the customer's consents from what it has read of the profile already
(cdp.profiles.service.profile_view); `GET /v1/profiles/{id}/consents` reads them on its own.
Both must say the same for customers in every state the contactability rule looks at."""

from __future__ import annotations

import uuid

import pytest

from tests.test_rule import with_soft_opt_in

GRANT = {
    "purpose": "marketing",
    "channel": "email",
    "status": "granted",
    "evidence": {"wording_id": "newsletter-v3", "method": "checkbox"},
}


async def test_a_profile_read_and_its_consents_agree(platform, client, keys) -> None:
    platform.policy = with_soft_opt_in(platform.policy)  # a purchase counts in the EU
    ingest = keys["ingest"]
    records = [
        {"email": "buyer@example.de", "country": "DE"},  # soft opt-in: bought
        {"email": "browser@example.de", "country": "DE"},  # has not bought
        {"email": "objector@example.de", "country": "DE"},  # bought, then opted out
        {"email": "anna@example.ru", "phone": "+79161234567", "consents": [GRANT]},
        {"email": "ivan@example.ru", "external_id": "C-7", "consents": [GRANT]},
        {"phone": "+79161234567", "email": "anna.work@example.ru"},  # joins anna's profile
    ]
    for body in records:
        r = await client.post("/v1/profiles", json={"source": "shop", **body}, headers=ingest)
        assert r.status_code in (200, 201), r.text
    for i, email in enumerate(("buyer@example.de", "objector@example.de")):
        r = await client.post(
            "/v1/events",
            json={
                "source": "shop",
                "event_id": f"o-{i}",
                "type": "purchase",
                "email": email,
                "amount": "40.00",
                "currency": "EUR",
                "occurred_at": "2026-11-01T10:00:00Z",
            },
            headers=ingest,
        )
        assert r.status_code == 201, r.text
    opt_outs = [
        {"email": "objector@example.de"},
        {"phone": "+79161234567", "purpose": "marketing", "channel": "sms"},
        {"source": "shop", "external_id": "C-7", "purpose": "marketing", "channel": "*"},
    ]
    for body in opt_outs:
        r = await client.post("/v1/opt-outs", json={"source": "esp", **body}, headers=ingest)
        assert r.status_code == 200, r.text

    advertising = {  # email, sms: what the rule says of each customer
        "buyer@example.de": (True, False),  # soft opt-in: a customer who bought
        "browser@example.de": (False, False),
        "objector@example.de": (False, False),
        "anna@example.ru": (True, False),  # her phone opted out of sms
        "anna.work@example.ru": (True, False),
        "ivan@example.ru": (False, False),  # his customer number opted him out of all
    }
    for email, expected in advertising.items():
        contactable = await _compare(client, keys, email)
        assert (contactable["marketing"]["email"], contactable["marketing"]["sms"]) == expected
        assert contactable["service"]["email"] is True, email  # the contract is enough


async def _compare(client, keys, email: str) -> dict:  # type: ignore[no-untyped-def]
    read = await client.get("/v1/profiles", params={"email": email}, headers=keys["admin"])
    assert read.status_code == 200, read.text
    body = read.json()
    alone = await client.get(f"/v1/profiles/{body['profile_id']}/consents", headers=keys["admin"])
    assert alone.status_code == 200, alone.text
    expected = {k: alone.json()[k] for k in ("items", "contactable")}
    assert body["consents"] == expected, email
    return expected["contactable"]


@pytest.mark.parametrize("cached", [False, True])
async def test_a_read_that_meets_an_erasure_answers_410(platform, client, keys, cached) -> None:
    """An erasure destroys the customer's key in the key store once its database transaction
    has committed; a read whose snapshot still holds the profile's rows then finds the key
    gone. That read answers as for an erased profile, never with a server error, nor with the
    customer's data from a key this process still caches (the erasure ran in another process:
    `cdp dsr run`, another API server)."""
    r = await client.post(
        "/v1/profiles",
        json={"source": "shop", "email": "anna@example.ru", "first_name": "Анна"},
        headers=keys["ingest"],
    )
    pid = r.json()["profile_id"]
    if cached:  # a read before the erasure leaves the key in this process's cache
        assert (await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])).status_code == 200
    else:
        platform.keys.forget(uuid.UUID(pid))
    assert platform.keys.store is not None
    await platform.keys.store.destroy([uuid.UUID(pid)])  # by another process, after its commit
    paths = (
        f"/v1/profiles/{pid}",
        "/v1/profiles?email=anna@example.ru",
        f"/v1/profiles/{pid}/consents",
    )
    for path in paths:
        r = await client.get(path, headers=keys["admin"])
        assert r.status_code == 410, (path, r.status_code, r.text)
        assert "Анна" not in r.text and "anna@" not in r.text
    r = await client.post(
        "/v1/access-requests", json={"email": "anna@example.ru"}, headers=keys["compliance"]
    )
    assert r.status_code == 410, r.text
