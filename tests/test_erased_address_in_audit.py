"""An erased customer's consent history never shows their address again, even once someone
(a new holder of the address, or the same person signing up again) brings the address back.

API.md, erasure: "no segment, export or lookup returns them". An entry recorded up to its
address's last erasure is the erased customer's (`consent.dsr.customer.recorded_before_erasure`);
its address used to be decrypted from whoever held the blind index now, so the audit events, the
evidence bundle and the console tied the erased customer's consent history to the address as
soon as anyone posted it again. The one rule: `consent.audit.events.entry_addresses`."""

from __future__ import annotations

from consent.dsr.worker import run_pending
from tests.test_console import EN, signed_in

EMAIL = "erz@example.com"
PROOF = {"wording_id": "nl-v1", "method": "checkbox", "ip": "203.0.113.7"}


def grant(occurred_at: str) -> dict:
    return {
        "purpose": "marketing",
        "channel": "email",
        "status": "granted",
        "source": "crm",
        "occurred_at": occurred_at,
        "evidence": PROOF,
    }


async def erased_then_back(client, keys, platform) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(the erased customer's profile id, the new holder's): the first granted marketing by
    email and was erased; the address then came back with a grant of the second's."""
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": EMAIL, "consents": [grant("2026-11-01T09:00:00Z")]},
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    old = r.json()["profile_id"]
    r = await client.post(
        "/v1/erasure-requests",
        json={"profile_id": old, "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    await run_pending(platform)
    assert (await client.get(f"/v1/profiles/{old}", headers=keys["admin"])).status_code == 410
    r = await client.post(
        "/v1/profiles",
        json={"source": "shop", "email": EMAIL, "consents": [grant("2026-12-01T09:00:00Z")]},
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    return old, r.json()["profile_id"]


def addresses(body: dict, key: str = "items") -> list:
    return [e["subject"]["address"] for e in body[key]]


async def test_the_erased_customers_audit_shows_no_address_once_it_is_registered_again(
    client, keys, platform
):
    old, new = await erased_then_back(client, keys, platform)
    h = keys["compliance"]

    r = await client.get("/v1/audit/consent-events", params={"profile_id": old}, headers=h)
    assert r.status_code == 200, r.text
    assert addresses(r.json()) == [None]
    r = await client.get("/v1/audit/evidence-bundle", params={"profile_id": old}, headers=h)
    assert r.status_code == 200, r.text
    assert addresses(r.json(), "events") == [None]
    assert EMAIL not in r.text
    # the whole ledger: the erased customer's entry without the address, the new holder's with
    r = await client.get("/v1/audit/consent-events", headers=h)
    by_profile = {e["subject"]["profile_id"]: e["subject"]["address"] for e in r.json()["items"]}
    assert by_profile == {old: None, new: EMAIL}

    # the new holder's own history, as before: their entry, with their address
    r = await client.get("/v1/audit/consent-events", params={"email": EMAIL}, headers=h)
    assert [(e["subject"]["profile_id"], e["subject"]["address"]) for e in r.json()["items"]] == [
        (new, EMAIL)
    ]
    r = await client.post("/v1/access-requests", json={"email": EMAIL}, headers=h)
    assert r.status_code == 200, r.text
    history = r.json()["consent_history"]
    assert [(c["occurred_at"], c["address"]) for c in history] == [("2026-12-01T09:00:00Z", EMAIL)]


async def test_the_consoles_history_of_the_erased_customer_shows_no_address(client, keys, platform):
    old, _ = await erased_then_back(client, keys, platform)
    await signed_in(client, keys)
    page = await client.get(f"/console/customers/{old}", headers=EN)
    assert page.status_code == 200, page.text
    assert 'data-seq="1"' in page.text  # the erased customer's entry is there ...
    assert EMAIL not in page.text  # ... without the address someone else holds now


async def test_the_new_holders_opt_out_of_everything_leaves_the_erased_history_theirs(
    client, keys, platform
):
    """The erasure's suppression dated the erasure, and the new holder's opt-out of every
    channel overwrote it (a suppression keeps its latest time): the erased customer's grant
    then counted as the new holder's, in their access export with their address, and vanished
    from the erased customer's audit (found by review on 2026-12-07). When an address was
    erased is kept apart (address_erasures)."""
    old, _ = await erased_then_back(client, keys, platform)
    r = await client.post(
        "/v1/opt-outs",
        json={"email": EMAIL, "purpose": "marketing", "channel": "*", "source": "web"},
        headers=keys["ingest"],
    )
    assert r.status_code == 200, r.text
    h = keys["compliance"]
    r = await client.get("/v1/audit/consent-events", params={"profile_id": old}, headers=h)
    assert [(e["occurred_at"], e["subject"]["address"]) for e in r.json()["items"]] == [
        ("2026-11-01T09:00:00Z", None)
    ]
    r = await client.post("/v1/access-requests", json={"email": EMAIL}, headers=h)
    assert r.status_code == 200, r.text
    assert "2026-11-01T09:00:00" not in r.text  # the erased customer's grant is not theirs
    assert "2026-12-01T09:00:00" in r.text
    verify = (await client.get("/v1/audit/verify", headers=h)).json()
    assert verify["ok"] is True, verify
