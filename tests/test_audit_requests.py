"""Verification checks the erasure requests that officers read (status, due date, extensions)
against their hash-chained transitions, and a completed erasure against the customer's profile:
a request marked completed, or given a later due date, by editing the table is caught."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from sqlalchemy import select, update

from cdp.db.tables import profiles
from consent.dsr.worker import run_pending
from consent.dsr_tables import dsr_requests
from tests.test_audit_checkpoints import cli
from tests.test_dsr_requests import held_request
from tests.test_erasure import create_anna


async def verified(client, keys):  # type: ignore[no-untyped-def]
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_request_rewritten_without_a_transition_is_caught(client, keys, platform):
    await create_anna(client, keys)
    open_id = await held_request(platform)
    body = await verified(client, keys)
    assert body["ok"] is True and body["dsr_transitions"]["requests_mismatched"] == 0

    # an overdue request hidden by moving its due date
    async with platform.db.write() as conn:
        due = (
            await conn.execute(select(dsr_requests.c.due_at).where(dsr_requests.c.id == open_id))
        ).scalar_one()
        await conn.execute(
            update(dsr_requests)
            .where(dsr_requests.c.id == open_id)
            .values(due_at=due + timedelta(days=30))
        )
    body = await verified(client, keys)
    assert body["ok"] is False
    assert body["dsr_transitions"]["requests_mismatched"] == 1
    assert body["dsr_transitions"]["mismatched_request_ids"] == [str(open_id)]
    failed = await asyncio.to_thread(cli, platform, "verify")
    assert failed.returncode == 1 and str(open_id) in failed.stdout


async def test_a_request_marked_completed_without_an_erasure_is_caught(client, keys, platform):
    ids = await create_anna(client, keys)
    open_id = await held_request(platform)
    async with platform.db.write() as conn:
        await conn.execute(
            update(dsr_requests).where(dsr_requests.c.id == open_id).values(status="completed")
        )
    body = await verified(client, keys)
    assert body["ok"] is False
    assert body["dsr_transitions"]["mismatched_request_ids"] == [str(open_id)]

    # honest: the erasure runs; then a rogue edit brings the profile back
    async with platform.db.write() as conn:
        await conn.execute(
            update(dsr_requests).where(dsr_requests.c.id == open_id).values(status="received")
        )
    await run_pending(platform)
    body = await verified(client, keys)
    assert body["ok"] is True and body["dsr_transitions"]["requests_mismatched"] == 0, body
    async with platform.db.write() as conn:
        await conn.execute(
            update(profiles)
            .where(profiles.c.id == uuid.UUID(ids["survivor"]))
            .values(status="active")
        )
    body = await verified(client, keys)
    assert body["ok"] is False
    assert body["dsr_transitions"]["mismatched_request_ids"] == [str(open_id)]


async def test_the_console_shows_what_the_api_reports_about_requests(client, keys, platform):
    """The officer's console said 'verifies' while GET /v1/audit/verify answered ok: false."""
    from tests.test_console import EN, signed_in

    await create_anna(client, keys)
    open_id = await held_request(platform)
    await signed_in(client, keys)
    page = await client.get("/console/verify", headers=EN)
    assert "does NOT verify" not in page.text
    assert "1 erasure requests agree with their recorded transitions" in page.text
    async with platform.db.write() as conn:
        await conn.execute(
            update(dsr_requests).where(dsr_requests.c.id == open_id).values(status="completed")
        )
    assert (await verified(client, keys))["ok"] is False
    page = await client.get("/console/verify", headers=EN)
    assert "does NOT verify" in page.text
    assert str(open_id) in page.text


async def test_every_honest_request_history_verifies(client, keys, platform):
    """Received, joined by a duplicate, extended, resumed by a worker, completed for a merged
    customer; another rejected: the API, the CLI and the console all say it verifies."""
    from consent.dsr.erasure import claim
    from tests.test_console import EN, signed_in

    await create_anna(client, keys)  # two profiles merged into one
    first = await held_request(platform, jurisdiction="US-CA")
    h = keys["compliance"]
    r = await client.post(
        f"/v1/erasure-requests/{first}/extend", json={"reason": "backups"}, headers=h
    )
    assert r.status_code == 200, r.text
    assert await claim(platform, first) == "in_progress"
    assert await claim(platform, first) == "in_progress"  # a worker resumed it
    r = await client.post(
        "/v1/erasure-requests",
        json={"phone": "+79161230042", "requested_by": "customer"},
        headers=h,
    )
    assert r.json()["joined_existing"] is True and r.json()["request_id"] == str(first)
    await run_pending(platform)
    done = (await client.get(f"/v1/erasure-requests/{first}", headers=h)).json()
    assert done["status"] == "completed"
    r = await client.post(
        "/v1/profiles", json={"source": "crm", "email": "kept@example.com"}, headers=keys["ingest"]
    )
    other = await client.post(
        "/v1/erasure-requests",
        json={"email": "kept@example.com", "requested_by": "operator"},
        headers=h,
    )
    # rejected before the background task runs (the ASGI client runs it after the answer)
    rid = other.json()["request_id"]
    row = (await client.get(f"/v1/erasure-requests/{rid}", headers=h)).json()
    if row["status"] == "received":
        r = await client.post(
            f"/v1/erasure-requests/{rid}/reject", json={"reason": "not proven"}, headers=h
        )
        assert r.status_code == 200
    body = await verified(client, keys)
    assert body["ok"] is True, body
    assert body["dsr_transitions"]["requests_checked"] == 2
    ok = await asyncio.to_thread(cli, platform, "verify")
    assert ok.returncode == 0, ok.stdout
    await signed_in(client, keys)
    page = await client.get("/console/verify", headers=EN)
    assert "does NOT verify" not in page.text
    assert "2 erasure requests agree with their recorded transitions" in page.text
