"""An audit read holds up no writer. The evidence bundle verifies the whole ledger and a
consent-events filter may read through all of it; on SQLite they ran in a write transaction
(for their access-log entry), so an opt-out waited for the whole verification, seconds on a
large ledger, before it took effect. They read in a read transaction now, and their access-log
entry is committed through the shared access-log commit before the answer leaves."""

from __future__ import annotations

import asyncio

import pytest

from consent import evidence
from tests.helpers import until
from tests.test_audit_chain import ANNA, seed_ledger

READS = {
    "consent events": ("/v1/audit/consent-events", {"email": ANNA}, "audit.consent_events"),
    "evidence bundle": ("/v1/audit/evidence-bundle", {"email": ANNA}, "audit.evidence_bundle"),
    "console customer": ("/console/customers/{anna}", {}, "console.customer"),
    "console evidence bundle": (
        "/console/customers/{anna}/evidence-bundle",
        {},
        "console.evidence_bundle",
    ),
}


@pytest.mark.parametrize("read", list(READS))
async def test_an_opt_out_goes_through_while_an_audit_read_is_reading(
    backend, client, keys, platform, monkeypatch, read
):
    ids = await seed_ledger(client, keys)
    path, params, action = READS[read]
    reading, finish = asyncio.Event(), asyncio.Event()
    original = evidence.read

    async def held(*args):  # type: ignore[no-untyped-def]
        reading.set()
        await finish.wait()
        return await original(*args)

    monkeypatch.setattr(evidence, "read", held)
    task = asyncio.create_task(
        client.get(path.format(**ids), params=params, headers=keys["compliance"])
    )
    opting = None
    try:
        await asyncio.wait_for(reading.wait(), 30)
        opting = asyncio.create_task(
            client.post(
                "/v1/opt-outs",
                json={"email": "later@example.com", "source": "esp"},
                headers=keys["ingest"],
            )
        )
        lock = platform.db._write_lock  # SQLite's one writer; None on PostgreSQL
        queued = lambda: lock is not None and lock.waiting(urgent=True) > 0  # noqa: E731
        await until(lambda: opting.done() or queued(), "the opt-out answered or queued")
        assert opting.done(), f"the opt-out waited for the {read}"
        assert (await opting).status_code == 200
    finally:
        finish.set()
        r = await task
        if opting is not None:
            await opting
    assert r.status_code == 200, r.text
    log = await client.get(
        "/v1/audit/access-log", params={"actor": "compliance-key"}, headers=keys["admin"]
    )
    entries = [e for e in log.json()["items"] if e["action"] == action]
    assert [e["profile_id"] for e in entries] == [ids["anna"]]  # logged, before the answer
