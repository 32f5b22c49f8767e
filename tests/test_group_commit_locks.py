"""Records of several API keys stored in one group-commit transaction (PostgreSQL).

The transaction locks each key's identifiers, and a record's consent locks the ledger head
until it commits. Locking the second key's identifiers only after the first key's consents
held the ledger head could deadlock with an opt-out that held one of those identifiers and
waited for the ledger head: PostgreSQL broke it by failing one of them (an opt-out's 500).
"""

from __future__ import annotations

import asyncio

from sqlalchemy import select, text

from cdp.db.engine import lock_key
from cdp.db.tables import profiles
from cdp.profiles.service import _store_group, prepare, store_prepared
from consent.ledger import LEDGER_LOCK
from tests.test_erasure_races import waiting_for_a_lock


def two_keys(platform):  # type: ignore[no-untyped-def]
    first = prepare(
        {
            "source": "crm",
            "email": "first.key@example.com",
            "consents": [
                {
                    "purpose": "marketing",
                    "channel": "email",
                    "status": "granted",
                    "occurred_at": "2026-11-01T10:00:00Z",
                    "evidence": {"wording_id": "newsletter-v3", "method": "checkbox"},
                }
            ],
        },
        platform,
    )
    second = prepare({"source": "shop", "email": "second.key@example.com"}, platform)
    return first, second


async def store_while(platform, first, second, hold):  # type: ignore[no-untyped-def]
    """Store both keys' records in one transaction while another one (an opt-out) holds what
    `hold` locks and then waits for the ledger head."""

    async def store() -> list:  # type: ignore[type-arg]
        async with platform.db.write() as conn:
            return await _store_group(conn, platform, [(first, "key-a"), (second, "key-b")])

    async with platform.db.write() as opt_out:  # holds what the second key's record needs...
        await hold(opt_out)
        batch = asyncio.ensure_future(store())
        for _ in range(2000):  # ...while the batch waits for it
            if batch.done() or await waiting_for_a_lock(platform):
                break
            await asyncio.sleep(0.005)
        await opt_out.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LEDGER_LOCK})
    return await batch


async def test_a_batch_of_two_keys_takes_every_identifier_before_the_ledger(platform):
    if not platform.db.is_postgres:
        return
    first, second = two_keys(platform)

    async def hold(conn):  # type: ignore[no-untyped-def]
        await conn.execute(
            text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(second.keys[0].bidx)}
        )

    outcomes = await store_while(platform, first, second, hold)
    assert [o.created for o in outcomes] == [True, True]
    assert outcomes[0].consents_recorded == 1


async def test_a_batch_of_two_keys_takes_every_profile_before_the_ledger(platform):
    if not platform.db.is_postgres:
        return
    first, second = two_keys(platform)
    (known,) = await store_prepared(platform, [second], "key-b")

    async def hold(conn):  # type: ignore[no-untyped-def]
        await conn.execute(
            select(profiles.c.id).where(profiles.c.id == known.profile_id).with_for_update()
        )

    outcomes = await store_while(platform, first, second, hold)
    assert [o.profile_id for o in outcomes][1] == known.profile_id
    assert outcomes[0].consents_recorded == 1
