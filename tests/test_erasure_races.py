"""Writes that race an erasure on PostgreSQL (SQLite runs one write transaction at a time).

A request that names a customer checks the profile, then writes to it. When an erasure of the
customer commits in between, the write must not land on the erased profile: no event, stats or
consent of theirs may outlive the erasure. Each test holds an erasure's transaction open at the
point where it has erased the customer, lets the request run until it waits for a lock, then
commits the erasure.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import select, text

from cdp.db.tables import events, profile_stats
from cdp.ids import utcnow
from consent.dsr.erasure import erase_customer, lock_customer
from consent.tables import consent_state

EMAIL = "race.erasure@example.com"


def iso(dt) -> str:  # type: ignore[no-untyped-def]
    return dt.isoformat().replace("+00:00", "Z")


async def waiting_for_a_lock(platform) -> bool:  # type: ignore[no-untyped-def]
    """Whether a session of this test's database waits for a lock. Only this database's: the
    PostgreSQL server is shared (another suite's lock waits made a race test go on before its
    request held the lock it was meant to, and fail now and then)."""
    async with platform.db.engine.connect() as conn:
        n = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE NOT l.granted AND a.datname = current_database()"
            )
        )
    return bool(n)


async def during_erasure(platform, pid: str, request: Callable[[], Awaitable]):  # type: ignore[no-untyped-def]
    """Run `request` while an erasure of the customer of `pid` is about to commit."""
    async with platform.db.write() as conn:
        pids, idents = await lock_customer(conn, uuid.UUID(pid))
        await erase_customer(conn, platform, pids, idents, utcnow())
        task = asyncio.ensure_future(request())
        for _ in range(2000):  # until the request waits for a lock the erasure holds
            if task.done() or await waiting_for_a_lock(platform):
                break
            await asyncio.sleep(0.005)
    return await task


async def anna(client, keys) -> str:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": EMAIL, "first_name": "Анна", "country": "RU"},
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    return r.json()["profile_id"]


async def test_an_event_for_a_customer_being_erased_does_not_outlive_the_erasure(
    client, keys, platform
):
    if not platform.db.is_postgres:
        return
    pid = await anna(client, keys)
    event = {
        "source": "shop",
        "event_id": "ord-race-1",
        "type": "purchase",
        "occurred_at": iso(utcnow() - timedelta(hours=1)),
        "profile_id": pid,
        "amount": "100.00",
        "currency": "RUB",
        "category": "shoes",
    }
    r = await during_erasure(
        platform, pid, lambda: client.post("/v1/events", json=event, headers=keys["ingest"])
    )
    assert r.status_code == 410, r.text
    async with platform.db.read() as conn:
        for table in (events, profile_stats):
            left = await conn.execute(select(table).where(table.c.profile_id == uuid.UUID(pid)))
            assert left.first() is None, table.name


async def test_a_consent_for_a_customer_being_erased_does_not_outlive_the_erasure(
    client, keys, platform
):
    if not platform.db.is_postgres:
        return
    pid = await anna(client, keys)
    grant = {
        "profile_id": pid,
        "purpose": "marketing",
        "channel": "email",
        "status": "granted",
        "source": "web_form",
        "evidence": {"wording_id": "newsletter-v3", "method": "double_opt_in"},
    }
    r = await during_erasure(
        platform, pid, lambda: client.post("/v1/consents", json=grant, headers=keys["ingest"])
    )
    assert r.status_code == 410, r.text
    async with platform.db.read() as conn:
        left = await conn.execute(select(consent_state))
        assert left.first() is None
    # the address comes back as a new customer: not contactable for marketing
    r = await client.post(
        "/v1/profiles", json={"source": "crm", "email": EMAIL}, headers=keys["ingest"]
    )
    assert r.status_code == 201, r.text
    matrix = await client.get(
        f"/v1/profiles/{r.json()['profile_id']}/consents", headers=keys["admin"]
    )
    assert matrix.json()["contactable"]["marketing"]["email"] is False


async def test_an_erasure_waits_for_a_writer_holding_an_address_without_a_deadlock(
    client, keys, platform
):
    """A writer (event, consent, ingest) locks the address it names, then the profile. The
    erasure used to take the customer's profile and address locks in one hash-sorted sweep,
    so it could hold the profile while waiting for the address: a deadlock, which PostgreSQL
    broke by failing the erasure (or the writer's request, a 500). It now takes identifiers
    first, then profiles, as every writer does (cdp.profiles.locks)."""
    if not platform.db.is_postgres:
        return
    from cdp.db.engine import lock_keys
    from cdp.profiles.identifiers import parse_identifier
    from cdp.profiles.locks import lock_profile
    from consent.dsr.requests import submit_erasure
    from consent.dsr.worker import run_pending

    pid = uuid.UUID(await anna(client, keys))
    ident = parse_identifier(platform.policy, platform.keys.indexer, email=EMAIL)
    await submit_erasure(platform, ident, requested_by="operator", actor="test")

    async with platform.db.write() as writer:
        await lock_keys(writer, [ident.bidx])  # a writer holds the address...
        erasure = asyncio.ensure_future(run_pending(platform))
        for _ in range(2000):  # ...while the erasure waits for it
            if erasure.done() or await waiting_for_a_lock(platform):
                break
            await asyncio.sleep(0.005)
        assert await lock_profile(writer, pid) == pid  # ...and then locks the profile
    summary = await erasure
    assert summary.completed == 1 and summary.failed == 0
