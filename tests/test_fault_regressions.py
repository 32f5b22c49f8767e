"""Minimised cases that the fault-injection harness (tests/test_fault_injection.py) found, each
failing before its fix."""

from __future__ import annotations

import uuid

from cdp.profiles.identifiers import parse_identifier
from consent.dsr.requests import submit_erasure
from consent.dsr.worker import run_pending
from tests.faults import InjectedFault


async def test_an_erasure_whose_shares_were_not_destroyed_is_finished_by_the_next_worker_pass(
    client, keys, platform, monkeypatch
):
    """The erasure committed (the request reads "completed") but the key store refused to
    destroy the shares (down a moment, or the process lost its answer): the customer's data
    keys were still readable with a copy of the database, and no worker pass ever destroyed
    them (only the next erasure or a restart did)."""
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "shred@example.com", "first_name": "Shred"},
        headers=keys["ingest"],
    )
    pid = uuid.UUID(r.json()["profile_id"])
    store = platform.keys.store
    destroy = type(store).destroy

    async def refused(self, profile_ids):  # type: ignore[no-untyped-def]
        raise InjectedFault("the key store is down")

    monkeypatch.setattr(type(store), "destroy", refused)
    ident = parse_identifier(platform.policy, platform.keys.indexer, email="shred@example.com")
    submitted = await submit_erasure(platform, ident, requested_by="customer", actor="test")
    await run_pending(platform)
    r = await client.get(f"/v1/erasure-requests/{submitted.request_id}", headers=keys["admin"])
    assert r.json()["status"] == "completed"
    assert await store.get([pid])  # still there: the key store was down

    monkeypatch.setattr(type(store), "destroy", destroy)  # it is back
    await run_pending(platform)  # the worker's next pass
    assert await store.get([pid]) == {}
