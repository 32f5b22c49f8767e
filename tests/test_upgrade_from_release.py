"""A database written by an old release's own code, upgraded by this one.

tests/test_migrations.py inserts rows at the revision before each data migration; this file
starts from what release a0d1fb6 (schema 0004, before the key store) actually wrote through its
API, on each database: tests/upgrade_fixtures/release-0004.sql (SQLite) and release-0004.pg.sql
(PostgreSQL), made by tests/upgrade_fixtures/make.py, with what that release answered in
release-0004.<backend>.json. After `migrate` the platform must answer as the old release did
(but for the behaviour later commits changed on purpose, each named below), keep every opt-out
and erasure, and take new writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import unicodedata
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from api.app import create_app
from cdp.db.engine import Database
from cdp.db.migrate import migrate
from cdp.db.tables import events, profile_keys, profiles
from cdp.platform import Platform, open_platform
from tests.conftest import _pg_dsn, make_settings, pg_url, role_keys
from tests.helpers import contactable, pg_admin
from tests.upgrade_fixtures.make import MASTER_KEY, NAME

FIXTURES = Path(__file__).parent / "upgrade_fixtures"


def story(backend: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{NAME}.{backend}.json").read_text(encoding="utf-8"))


@pytest.fixture
async def upgraded(
    backend: str, tmp_path: Path
) -> AsyncIterator[tuple[Platform, httpx.AsyncClient, dict, dict]]:
    """The old release's database, loaded, migrated by this code and opened; with API keys
    and what the old release answered about it."""
    async with loaded(backend, tmp_path) as url:
        db = Database(url)
        await migrate(db)
        await db.dispose()
        settings = make_settings(url, tmp_path, master_key=MASTER_KEY)
        p = await open_platform(settings, run_migrations=False)
        keys = await role_keys(p)
        transport = httpx.ASGITransport(app=create_app(platform=p))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield p, c, keys, story(backend)
        finally:
            await p.close()


@asynccontextmanager
async def loaded(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A database holding the fixture as the old release left it; yields its URL."""
    if backend == "sqlite":
        path = tmp_path / "old.db"
        with sqlite3.connect(path) as conn:
            conn.executescript((FIXTURES / f"{NAME}.sql").read_text(encoding="utf-8"))
        yield f"sqlite+aiosqlite:///{path}"
        return
    import asyncpg

    name = f"cdp_upgrade_{uuid.uuid4().hex[:8]}"
    try:
        await pg_admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI and is not reachable: {type(exc).__name__}")
        pytest.skip("PostgreSQL is not reachable")
    try:
        conn = await asyncpg.connect(_pg_dsn(name), timeout=5)
        try:
            await conn.execute((FIXTURES / f"{NAME}.pg.sql").read_text(encoding="utf-8"))
        finally:
            await conn.close()
        yield pg_url(name)
    finally:
        await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await pg_admin(f'DROP DATABASE IF EXISTS "{name}_keys" WITH (FORCE)')


async def members(c: httpx.AsyncClient, keys: dict, st: dict, name: str) -> list[list[str]]:
    sid = st["segments"][name]
    r = await c.get(
        f"/v1/segments/{sid}/members", params={"limit": 1000}, headers=keys["marketing"]
    )
    assert r.status_code == 200, r.text
    assert r.json()["next_cursor"] is None
    return sorted([m["profile_id"], m["address"]] for m in r.json()["items"])


async def test_the_upgraded_database_answers_as_the_old_release_did(upgraded):
    p, c, keys, st = upgraded
    OLD, PEOPLE, EMAILS = st["old"], st["people"], st["emails"]
    h = keys["compliance"]
    verify = (await c.get("/v1/audit/verify", headers=h)).json()
    assert verify["ok"] is True, verify
    assert (verify["entries"], verify["head_hash"]) == (
        OLD["verify"]["entries"],
        OLD["verify"]["head_hash"],
    )
    anna = [PEOPLE["anna"], EMAILS["anna"]]
    for name, before in OLD["segments"].items():
        after = await members(c, keys, st, name)
        if name == "moscow_silver":
            # city eq "Москва" now matches "МОСКВА" (cb2bbbd, migration 0007) and traits.tier
            # eq "Серебряный" a decomposed й (cad3afa, migration 0010): Anna, who granted
            # marketing by email, is in; the old release missed her
            assert (before, after) == ([], [anna])
        else:
            assert after == before, name
    for who, (status, body) in OLD["profiles"].items():
        r = await c.get(f"/v1/profiles/{PEOPLE[who]}", headers=h)
        assert r.status_code == status, who
        if status == 200:
            got = {k: r.json().get(k) for k in body}
            if who == "anna":  # stored in NFC since cad3afa (migration 0010)
                body["traits"]["tier"] = unicodedata.normalize("NFC", body["traits"]["tier"])
            assert got == body, who
    for kind, address, channel in st["opted_out"]:
        r = await c.get("/v1/profiles", params={kind: address}, headers=h)
        if r.status_code == 404:
            continue  # nobody holds it (ghost)
        matrix = await contactable(c, keys, r.json()["profile_id"])
        assert not any(
            allowed for ch, allowed in matrix["marketing"].items() if channel in ("*", ch)
        ), address
    # every active profile decrypts
    async with p.db.read() as conn:
        active = [
            row[0]
            for row in await conn.execute(
                select(profiles.c.id).where(profiles.c.status == "active")
            )
        ]
        keys_left = (
            await conn.execute(
                select(profile_keys).where(profile_keys.c.profile_id == uuid.UUID(PEOPLE["dmitry"]))
            )
        ).all()
    assert len(active) > 30
    for pid in active:
        r = await c.get(f"/v1/profiles/{pid}", headers=h)
        assert r.status_code == 200, r.text
    assert (await c.get(f"/v1/profiles/{PEOPLE['dmitry']}", headers=h)).status_code == 410
    assert keys_left == []
    # the erased customer's grant was in the access export of whoever took the address and opted
    # out of everything: migration 0020 dates the erasure apart (e17fa2a)
    r = await c.post("/v1/access-requests", json={"profile_id": PEOPLE["nadia"]}, headers=h)
    assert r.status_code == 200, r.text
    assert (OLD["nadia_export_has_dmitry_grant"], st["dmitry_grant_day"] in r.text) == (
        True,
        False,
    )
    r = await c.post("/v1/access-requests", json={"email": EMAILS["anna"]}, headers=h)
    assert r.status_code == 200, r.text
    assert len(r.json()["events"]) == 2


async def test_new_writes_work_on_the_upgraded_database(upgraded):
    from cdp.keyring import split_whole_keys
    from consent.dsr.worker import run_pending

    p, c, keys, st = upgraded
    PEOPLE, EMAILS = st["people"], st["emails"]
    ing, h = keys["ingest"], keys["compliance"]
    assert await split_whole_keys(p.db, p.keys.master, p.keys.store) > 30
    r = await c.get(f"/v1/profiles/{PEOPLE['anna']}", headers=h)
    assert r.status_code == 200 and r.json()["first_name"] == "Анна"
    # an address opted out before the upgrade, imported since with an older grant
    grant = {
        "purpose": "marketing",
        "channel": "email",
        "status": "granted",
        "occurred_at": "2025-01-01T00:00:00Z",
        "evidence": {"wording_id": "newsletter-v3"},
    }
    body = {"source": "crm", "external_id": "G-1", "email": EMAILS["ghost"], "consents": [grant]}
    r = await c.post("/v1/profiles", json=body, headers=ing)
    assert r.status_code == 201, r.text
    assert (await contactable(c, keys, r.json()["profile_id"]))["marketing"]["email"] is False
    # a repeat of an event the old release recorded is recognised (its time may differ)
    event = {
        "source": "shop",
        "event_id": "a-0",
        "type": "Purchase",
        "email": EMAILS["anna"],
        "occurred_at": "2026-11-01T00:00:00Z",
        "amount": "1000.00",
        "currency": "RUB",
    }
    assert (await c.post("/v1/events", json=event, headers=ing)).status_code == 200
    # and another event under its id is not taken for one (d42f4ba: it was, and dropped)
    r = await c.post("/v1/events", json={**event, "amount": "1.00"}, headers=ing)
    assert r.status_code == 409, r.text
    r = await c.post("/v1/opt-outs", json={"email": EMAILS["anna"], "source": "web"}, headers=ing)
    assert r.status_code == 200, r.text
    assert [PEOPLE["anna"], EMAILS["anna"]] not in await members(c, keys, st, "mkt_email")
    r = await c.post(f"/v1/profiles/{PEOPLE['anna']}/unmerge", json={}, headers=keys["admin"])
    assert r.status_code == 200, r.text
    body = {"email": EMAILS["boris"], "requested_by": "customer"}
    r = await c.post("/v1/erasure-requests", json=body, headers=h)
    assert r.status_code == 202, r.text
    await run_pending(p)
    assert (await c.get(f"/v1/profiles/{PEOPLE['boris']}", headers=h)).status_code == 410
    async with p.db.read() as conn:  # the old release's plain event id, o-{email}, went with him
        plain = (
            await conn.execute(select(events.c.event_id).where(events.c.event_id.like("o-%")))
        ).all()
    assert plain == []
    verify = (await c.get("/v1/audit/verify", headers=h)).json()
    assert verify["ok"] is True, verify
