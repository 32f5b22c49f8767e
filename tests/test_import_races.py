"""Opt-outs that arrive while `cdp import` runs, on both databases.

An import brings grants to advertising by email, dated before the opt-outs. Customers opt out
through the API while it runs: some before the import reaches their row (an address the
platform has not seen yet: suppressed), some after it stored them, some while the chunk that
holds them is in an open transaction. Whatever the order, an opt-out wins over an older grant:
afterwards no segment reaches an address that opted out, and every other address is reached.
"""

from __future__ import annotations

import asyncio
import json
import random
from datetime import timedelta

import pytest

from cdp.ids import utcnow
from cdp import importer
from cdp.importer import run_import

ROWS = 240
CHUNK = 12


def address(i: int) -> str:
    return f"race{i}@example.com"


def grant_row(i: int, granted_at: str) -> str:
    return json.dumps(
        {
            "email": address(i),
            "first_name": "Анна",
            "country": "RU",
            "consent.marketing.email": "granted",
            "consent.marketing.email.wording_id": "newsletter-v1",
            "consent.marketing.email.occurred_at": granted_at,
        }
    )


async def reached(client, keys) -> set[str]:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/segments/query",
        json={
            "purpose": "marketing",
            "channel": "email",
            "rules": {"field": "country", "op": "eq", "value": "RU"},
            "limit": 1000,
        },
        headers=keys["marketing"],
    )
    assert r.status_code == 200, r.text
    return {m["address"] for m in r.json()["items"]}


@pytest.mark.parametrize("seed", [1, 2])
async def test_an_opt_out_made_while_an_import_runs_wins_over_its_older_grant(
    client, keys, platform, tmp_path, monkeypatch, seed
):
    monkeypatch.setattr("cdp.importer.CHUNK", CHUNK)
    monkeypatch.setattr("cdp.importer.TXN_ROWS", 3 * CHUNK)  # SQLite: a transaction of 3 chunks
    granted_at = (utcnow() - timedelta(days=2)).isoformat()
    src = tmp_path / "crm.ndjson"
    src.write_text("".join(grant_row(i, granted_at) + "\n" for i in range(ROWS)), "utf-8")

    rng = random.Random(seed)
    leaving = sorted(rng.sample(range(ROWS), ROWS // 3))
    # when each opt-out is sent: once the import is about to store the chunk that starts at
    # this row, a little before or after the customer's own row
    due = sorted((max(0, i + rng.randint(-2 * CHUNK, 2 * CHUNK)), i) for i in leaving)
    sent: list[asyncio.Task] = []
    orders = {"before": 0, "during": 0, "after": 0}

    async def opt_out(i: int) -> None:
        r = await client.post(
            "/v1/opt-outs", json={"email": address(i), "source": "esp"}, headers=keys["ingest"]
        )
        assert r.status_code == 200, r.text

    real = importer.store_prepared_in
    position = [0]  # rows of the file handed to storage so far

    async def store_prepared_in(conn, p, prepared, actor):  # type: ignore[no-untyped-def]
        at = position[0]
        while due and due[0][0] <= at:
            i = due.pop(0)[1]
            orders["before" if i >= at + len(prepared) else "during" if i >= at else "after"] += 1
            sent.append(asyncio.ensure_future(opt_out(i)))
        await asyncio.sleep(0.002)  # let them start: on PostgreSQL they run beside the chunk
        position[0] += len(prepared)
        return await real(conn, p, prepared, actor)

    monkeypatch.setattr(importer, "store_prepared_in", store_prepared_in)
    summary = await run_import(platform, src, "crm", workers=0)
    sent.extend(asyncio.ensure_future(opt_out(i)) for _, i in due)
    await asyncio.gather(*sent)
    assert summary.created == ROWS and summary.consents_recorded == ROWS
    assert min(orders.values()) > 0, orders  # each order happened

    assert await reached(client, keys) == {address(i) for i in range(ROWS) if i not in leaving}
    verify = await client.get("/v1/audit/verify", headers=keys["compliance"])
    assert verify.json()["ok"] is True
