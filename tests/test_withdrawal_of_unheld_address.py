"""A withdrawal through POST /v1/consents that names an email or phone no customer holds.

It used to create a customer holding the address, to hang the withdrawal on: so a withdrawal
sent after an erasure stored the erased address again (encrypted, but held: a profile, an
identity, a GET by email answering 200), against DESIGN §1.4, and any stray withdrawal a CRM
synced made a customer of someone we know nothing else of. It is now recorded on the address
alone, as an opt-out of an unseen address is: in the ledger and the consent state, in force for
whoever takes the address later (an older grant never undoes it, a newer one does), and sent to
`include_address` subscribers with the address (sealed while it waits)."""

from __future__ import annotations

from cdp.db.tables import identities, profiles
from tests.helpers import contactable, count, holds_plaintext, raw_database_bytes
from tests.test_webhooks_delivery import PAYLOAD_KEYS, drain, subscribe

EV = {"wording_id": "nl-v1", "method": "checkbox"}
EMAIL = "stray.withdrawal@example.com"


async def withdraw(client, keys, at: str = "2026-06-01T00:00:00Z", **ident: str) -> dict:  # type: ignore[no-untyped-def]
    body = {"purpose": "marketing", "channel": "email", "status": "withdrawn", "source": "crm"}
    r = await client.post(
        "/v1/consents", json={**body, **ident, "occurred_at": at}, headers=keys["ingest"]
    )
    assert r.status_code == 201, r.text
    return r.json()


async def lookup(client, keys, email: str) -> int:  # type: ignore[no-untyped-def]
    r = await client.get("/v1/profiles", params={"email": email}, headers=keys["admin"])
    return r.status_code


async def take(client, keys, at: str) -> str:  # type: ignore[no-untyped-def]
    """A customer arrives with the address and a grant that occurred at `at`."""
    grant = {"purpose": "marketing", "channel": "email", "status": "granted", "evidence": EV}
    r = await client.post(
        "/v1/profiles",
        json={"source": "shop", "email": EMAIL, "consents": [{**grant, "occurred_at": at}]},
        headers=keys["ingest"],
    )
    assert r.status_code in (200, 201), r.text
    return r.json()["profile_id"]


async def test_it_creates_no_customer_and_holds_for_whoever_takes_the_address(
    client, keys, platform
):
    answer = await withdraw(client, keys, email=EMAIL)
    assert answer["effective"] is True
    assert await lookup(client, keys, EMAIL) == 404
    assert await count(platform, profiles) == 0 and await count(platform, identities) == 0

    pid = await take(client, keys, at="2026-01-01T00:00:00Z")  # a stale export's grant
    assert (await contactable(client, keys, pid))["marketing"]["email"] is False
    await take(client, keys, at="2026-07-01T00:00:00Z")  # asked again, after the withdrawal
    assert (await contactable(client, keys, pid))["marketing"]["email"] is True


async def test_after_an_erasure_it_does_not_store_the_address_again(client, keys, platform):
    await take(client, keys, at="2026-01-01T00:00:00Z")
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": EMAIL, "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    assert await lookup(client, keys, EMAIL) == 404

    await withdraw(client, keys, email=EMAIL)  # the mailing tool's sync, a day late
    assert await lookup(client, keys, EMAIL) == 404
    assert await count(platform, identities) == 0
    async with platform.db.read() as conn:
        statuses = (await conn.execute(profiles.select())).all()
    assert [row.status for row in statuses] == ["erased"]


async def test_a_phone_and_every_channel_are_recorded_on_the_address_too(client, keys, platform):
    r = await client.post(
        "/v1/consents",
        json={
            "phone": "+7 916 555-01-02",
            "purpose": "marketing",
            "channel": "*",
            "status": "withdrawn",
            "source": "call_centre",
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    assert await count(platform, profiles) == 0
    r = await client.get(
        "/v1/audit/consent-events", params={"status": "withdrawn"}, headers=keys["compliance"]
    )
    assert r.status_code == 200, r.text
    (entry,) = r.json()["items"]
    assert entry["profile_id"] is None and entry["channel"] == "*"


async def test_a_grant_of_an_unheld_address_still_creates_its_customer(client, keys):
    grant = {"purpose": "marketing", "channel": "email", "status": "granted", "evidence": EV}
    r = await client.post(
        "/v1/consents", json={**grant, "email": EMAIL, "source": "web"}, headers=keys["ingest"]
    )
    assert r.status_code == 201, r.text
    assert await lookup(client, keys, EMAIL) == 200


async def test_include_address_subscribers_get_the_address(client, keys, platform, receiver):
    await subscribe(client, keys, receiver, kinds=["consent.withdrawn"], include_address=True)
    await withdraw(client, keys, email=EMAIL)
    assert not holds_plaintext(await raw_database_bytes(platform), EMAIL)  # sealed as it waits
    await drain(platform)
    (got,) = [r.payload for r in receiver.accepted]
    assert got["kind"] == "consent.withdrawn" and got["profile_id"] is None
    assert set(got) == PAYLOAD_KEYS | {"address"} and got["address"] == EMAIL
