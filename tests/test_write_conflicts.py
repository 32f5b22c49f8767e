"""Writes that PostgreSQL aborts to break a deadlock (cdp.db.conflicts).

Two transactions that each hold a lock the other waits for: PostgreSQL aborts one, which
changed nothing. Opt-outs and profile writes (group commit) run it again and answer; any other
write answers 503 with Retry-After, saying that nothing was stored, instead of a 500. SQLite's
writers queue behind one write lock, so there is no deadlock to lose there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from sqlalchemy import text

from cdp.db.engine import lock_key
from consent.ledger import LEDGER_LOCK
from consent.tables import consent_ledger, suppressions
from tests.helpers import count
from tests.test_erasure_races import waiting_for_a_lock

EMAIL = "conflict@example.com"


async def deadlocked(platform, address: bytes, request: Awaitable):  # type: ignore[no-untyped-def]
    """Run `request` (which locks `address`, then the ledger head) into a deadlock with
    another transaction that holds the ledger head and then asks for the address. The
    other transaction waits longer before it looks for deadlocks, so `request`'s is aborted."""
    async with platform.db.write() as other:
        await other.execute(text("SET LOCAL deadlock_timeout = '10s'"))
        await other.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LEDGER_LOCK})
        answer = asyncio.ensure_future(request)
        for _ in range(2000):  # until the request holds the address and waits for the ledger
            if answer.done() or await waiting_for_a_lock(platform):
                break
            await asyncio.sleep(0.005)
        await other.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(address)})
    return await answer


async def known_customer(client, keys):  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/profiles", json={"source": "crm", "email": EMAIL}, headers=keys["ingest"]
    )
    assert r.status_code == 201, r.text


async def test_an_opt_out_that_loses_a_deadlock_is_run_again_and_answered(client, keys, platform):
    """The opt-out's caller got a 500 for an opt-out that a second run makes at once."""
    if not platform.db.is_postgres:
        return
    await known_customer(client, keys)
    request = client.post(
        "/v1/opt-outs", json={"email": EMAIL, "source": "esp"}, headers=keys["ingest"]
    )
    r = await deadlocked(platform, platform.keys.indexer.email(EMAIL), request)
    assert r.status_code == 200, r.text
    assert r.json()["suppressed"] is True
    assert await count(platform, suppressions) >= 1


async def test_a_consent_that_loses_a_deadlock_is_503_retry_after_and_stores_nothing(
    client, keys, platform
):
    """It was a 500 'internal error', which a client takes for a bug, not for 'send again'."""
    if not platform.db.is_postgres:
        return
    await known_customer(client, keys)
    before = await count(platform, consent_ledger)
    grant = {
        "email": EMAIL,
        "purpose": "marketing",
        "channel": "email",
        "status": "granted",
        "source": "web",
        "evidence": {"wording_id": "newsletter-v3", "method": "checkbox"},
    }
    request = client.post("/v1/consents", json=grant, headers=keys["ingest"])
    r = await deadlocked(platform, platform.keys.indexer.email(EMAIL), request)
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert r.headers["content-type"].startswith("application/problem+json")
    assert EMAIL not in r.text
    assert await count(platform, consent_ledger) == before
    r = await client.post("/v1/consents", json=grant, headers=keys["ingest"])  # sent again
    assert r.status_code in (200, 201), r.text
