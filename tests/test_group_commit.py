"""Opt-outs arriving together share a transaction, and each still answers for itself."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import func, select

from cdp.db.group_commit import GroupCommit
from cdp.errors import Gone, NotFound
from cdp.profiles.identifiers import Identifier
from consent.optout import opt_out
from consent.outbox.tables import outbox_events
from consent.tables import consent_ledger, suppressions
from tests.helpers import count


async def _ingest(client, keys, n):  # type: ignore[no-untyped-def]
    records = [{"source": "crm", "email": f"g{i}@example.com"} for i in range(n)]
    r = await client.post("/v1/profiles/batch", json={"records": records}, headers=keys["ingest"])
    assert r.status_code == 200, r.text
    return [item["profile_id"] for item in r.json()["results"]]


async def test_concurrent_opt_outs_share_transactions_and_all_take_effect(client, keys, platform):
    n = 60
    await _ingest(client, keys, n + 1)
    r = await client.post(  # the first opt-out of the process sets up its queue
        "/v1/opt-outs", json={"email": f"g{n}@example.com", "source": "esp"}, headers=keys["ingest"]
    )
    assert r.status_code == 200
    group = platform.db.group_commit("opt-outs", apply=None)  # type: ignore[arg-type]
    before = group.batches

    async def one(i):  # type: ignore[no-untyped-def]
        r = await client.post(
            "/v1/opt-outs",
            json={"email": f"g{i}@example.com", "source": "esp"},
            headers=keys["ingest"],
        )
        assert r.status_code == 200, r.text
        return r.json()

    answers = await asyncio.gather(*(one(i) for i in range(n)))
    assert all(a["suppressed"] for a in answers)
    assert group.batches - before < n  # they were grouped
    assert await count(platform, suppressions) == n + 1
    async with platform.db.read() as conn:
        kinds = dict(
            (
                await conn.execute(
                    select(outbox_events.c.kind, func.count()).group_by(outbox_events.c.kind)
                )
            ).all()
        )
        withdrawals = (
            await conn.execute(
                select(func.count())
                .select_from(consent_ledger)
                .where(consent_ledger.c.status == "withdrawn")
            )
        ).scalar_one()
    # each stops every channel: the address, and the profile's own channels (push, messenger)
    assert kinds["opt_out"] == 2 * (n + 1) and kinds["suppression.added"] == n + 1
    assert withdrawals == 2 * (n + 1)
    for i in (0, n // 2, n - 1):
        r = await client.get(f"/v1/profiles?email=g{i}@example.com", headers=keys["admin"])
        pid = r.json()["profile_id"]
        c = await client.get(f"/v1/profiles/{pid}/consents", headers=keys["admin"])
        assert c.json()["contactable"]["marketing"]["email"] is False


async def test_a_bad_opt_out_in_a_group_fails_alone(client, keys, platform):
    ids = await _ingest(client, keys, 10)
    unknown = Identifier("profile_id", profile_id=uuid.uuid4())
    good = [Identifier("profile_id", profile_id=uuid.UUID(pid)) for pid in ids]
    results = await asyncio.gather(
        *(opt_out(platform, ident, source="esp", actor="t") for ident in [*good[:5], unknown]),
        *(opt_out(platform, ident, source="esp", actor="t") for ident in good[5:]),
        return_exceptions=True,
    )
    assert isinstance(results[5], NotFound)
    answered = [r for i, r in enumerate(results) if i != 5]
    assert all(not isinstance(r, Exception) and r.suppressed for r in answered)
    assert {str(r.profile_ids[0]) for r in answered} == set(ids)


async def test_opt_out_of_an_erased_profile_is_gone(client, keys, platform):
    (pid,) = await _ingest(client, keys, 1)
    r = await client.post(
        "/v1/erasure-requests",
        json={"profile_id": pid, "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    r = await client.get(f"/v1/erasure-requests/{r.json()['request_id']}", headers=keys["admin"])
    assert r.json()["status"] == "completed"
    ident = Identifier("profile_id", profile_id=uuid.UUID(pid))
    with pytest.raises(Gone):
        await opt_out(platform, ident, source="x", actor="t")
    r = await client.post(
        "/v1/opt-outs", json={"profile_id": pid, "source": "esp"}, headers=keys["ingest"]
    )
    assert r.status_code == 410


async def test_a_failing_transaction_is_retried_item_by_item(platform):
    applied: list[list[str]] = []

    async def apply(conn, items):  # type: ignore[no-untyped-def]
        applied.append(list(items))
        if "bad" in items:
            raise RuntimeError("boom")
        await asyncio.sleep(0)
        return [f"ok:{i}" for i in items]

    group: GroupCommit[str, str] = GroupCommit(platform.db, apply, name="test")
    results = await asyncio.gather(
        *(group.submit(x) for x in ["a", "b", "bad", "c"]), return_exceptions=True
    )
    assert results[:2] == ["ok:a", "ok:b"] and results[3] == "ok:c"
    assert isinstance(results[2], RuntimeError)
    assert ["a", "b", "bad", "c"] in applied  # first tried together
    assert ["bad"] in applied and ["a"] in applied  # then one by one


async def test_planner_statistics_refresh_on_both_databases(client, keys, platform):
    await _ingest(client, keys, 5)
    await platform.db.refresh_statistics()
    async with platform.db.read() as conn:
        if platform.db.is_sqlite:
            rows = (await conn.exec_driver_sql("SELECT tbl FROM sqlite_stat1")).all()
        else:
            rows = (
                await conn.exec_driver_sql(
                    "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL"
                )
            ).all()
    assert "profiles" in {r[0] for r in rows}


async def test_concurrent_single_ingests_resolve_as_if_one_after_another(client, keys, platform):
    async def post(body):  # type: ignore[no-untyped-def]
        r = await client.post("/v1/profiles", json=body, headers=keys["ingest"])
        assert r.status_code in (200, 201), r.text
        return r.json()

    bodies = [{"source": "shop", "email": f"solo{i}@example.com"} for i in range(40)]
    bodies += [
        {"source": "crm", "email": "same@example.com"},
        {"source": "shop", "phone": "+79161112233"},
        {"source": "call", "email": "same@example.com", "phone": "+79161112233"},
    ]
    answers = await asyncio.gather(*(post(b) for b in bodies))
    assert len({a["profile_id"] for a in answers[:40]}) == 40
    r1 = await client.get("/v1/profiles?email=same@example.com", headers=keys["admin"])
    r2 = await client.get("/v1/profiles?phone=%2B79161112233", headers=keys["admin"])
    assert r1.json()["profile_id"] == r2.json()["profile_id"]  # one person, whatever the order
    group = platform.db.group_commit("profiles", apply=None)  # type: ignore[arg-type]
    assert group.batches < len(bodies)
