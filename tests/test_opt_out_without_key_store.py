"""An opt-out is honoured at once also while the key store (CDP_KEY_STORE_URL) is away or full:
it was refused with a 503 until the store came back, and the customer stayed contactable
meanwhile. An opt-out needs no data key (it carries no evidence), nor does a withdrawal that
carries none, and the address of one no customer holds waits for its webhook sealed under the
system key instead of a key of its own (consent.outbox.sealed). Records, which must store their
keys' shares, are still refused. SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import pytest

from cdp.db.availability import KeyStoreDown
from cdp.key_store import KEY_STORE_DOWN
from tests.helpers import contactable, holds_plaintext, raw_database_bytes
from tests.test_webhooks_delivery import add_profile, drain, opt_out, subscribe
from tests.test_webhooks_unseen_address import sealed


@pytest.fixture
def store_away(platform, monkeypatch):  # type: ignore[no-untyped-def]
    """The key store refuses every call, as api.errors hears it from a store that is down."""

    async def down(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyStoreDown(KEY_STORE_DOWN)

    def away() -> None:
        for name in ("get", "put", "keep_first"):
            monkeypatch.setattr(platform.keys.store, name, down)

    return away


GRANT = {
    "purpose": "marketing",
    "channel": "email",
    "status": "granted",
    "evidence": {"wording_id": "w-v1", "method": "checkbox"},
}


async def test_a_customer_opts_out_while_the_key_store_is_away(
    client, keys, platform, store_away, monkeypatch
):
    pid = await add_profile(client, keys, email="held@example.com", consents=[GRANT])
    assert (await contactable(client, keys, pid))["marketing"]["email"]
    platform.keys.forget(uuid.UUID(pid))  # not cached: a restarted process, or a busy one
    store_away()
    await opt_out(client, keys, email="held@example.com")  # 200
    r = await client.post(
        "/v1/profiles", json={"source": "crm", "email": "new@example.com"}, headers=keys["ingest"]
    )
    assert r.status_code == 503 and "key store" in r.json()["detail"]
    monkeypatch.undo()  # reading the customer needs their data key: once the store is back
    assert not (await contactable(client, keys, pid))["marketing"]["email"]


async def test_an_unseen_address_opted_out_while_the_key_store_is_away_still_reaches_the_tool(
    client, keys, platform, receiver, store_away, monkeypatch
):
    await subscribe(client, keys, receiver, kinds=["opt_out"], include_address=True)
    store_away()
    await opt_out(client, keys, email="Away.Store@Example.com")  # 200
    raw = await raw_database_bytes(platform)
    assert not holds_plaintext(raw, "away.store@example.com")  # sealed while it waits
    monkeypatch.undo()  # the store is back before the dispatcher runs
    await drain(platform)
    (got,) = [r.payload for r in receiver.accepted]
    assert got["address"] == "away.store@example.com"
    assert await sealed(platform) == [None]  # forgotten once delivered


async def test_a_withdrawal_without_evidence_is_recorded_while_the_key_store_is_away(
    client, keys, platform, store_away, monkeypatch
):
    pid = await add_profile(client, keys, email="wd@example.com", consents=[GRANT])
    platform.keys.forget(uuid.UUID(pid))
    store_away()
    body = {"email": "wd@example.com", "purpose": "marketing", "channel": "email"}
    r = await client.post(
        "/v1/consents", json=body | {"status": "withdrawn", "source": "crm"}, headers=keys["ingest"]
    )
    assert r.status_code in (200, 201), r.text
    monkeypatch.undo()
    assert not (await contactable(client, keys, pid))["marketing"]["email"]
