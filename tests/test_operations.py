"""What an operator running the service relies on: `/health` tells the truth about whether the
service can serve, and a service that cannot (its database gone, its master key rotated away)
says so with a 503 naming why, never a 500, and serves again once the cause is gone."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
import structlog
from sqlalchemy import make_url

from cdp.crypto.master import MasterKey
from cdp.db.availability import database_unavailable, error_code
from cdp.db.engine import make_engine
from cdp.errors import InvalidInput
from cdp.keyring import rotate_master_key
from cdp.platform import open_platform
from cdp.profiles.service import upsert_one
from cdp.settings import Settings
from tests.conftest import make_settings
from tests.helpers import pg_admin


def assert_unavailable(r, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    for word in words:
        assert word in r.json()["detail"], r.json()


async def test_health_and_requests_answer_503_while_the_database_refuses_connections(
    platform, client, keys, backend, pg_database
):
    """The database stops taking connections (a restart, a failover, maintenance) and every
    connection the service held is cut: /health and requests say 503, not 500, and the service
    serves again once the database is back, without a restart."""
    if backend != "postgres":
        pytest.skip("a PostgreSQL server going away")
    await upsert_one(platform, {"source": "crm", "email": "kept@example.com"}, "t")
    lookup = "/v1/profiles?email=kept@example.com"
    assert (await client.get("/health")).status_code == 200
    await pg_admin(
        f'ALTER DATABASE "{pg_database}" ALLOW_CONNECTIONS false',
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{pg_database}'",
    )
    try:
        assert_unavailable(await client.get("/health"), "database")
        assert_unavailable(await client.get(lookup, headers=keys["admin"]), "database")
        r = await client.post(
            "/v1/opt-outs",
            json={"email": "kept@example.com", "source": "t"},
            headers=keys["ingest"],
        )
        assert_unavailable(r, "database")
    finally:
        await pg_admin(f'ALTER DATABASE "{pg_database}" ALLOW_CONNECTIONS true')
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get(lookup, headers=keys["admin"])).status_code == 200


async def test_health_answers_503_while_the_database_server_is_down(platform, client):
    """A server that is stopped refuses the connection itself (ConnectionRefusedError)."""
    engine = platform.db.engine
    platform.db.engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/stopped")
    try:
        assert_unavailable(await client.get("/health"), "database")
    finally:
        await platform.db.engine.dispose()
        platform.db.engine = engine
    assert (await client.get("/health")).status_code == 200


async def test_a_service_left_on_a_rotated_master_key_says_so_and_fails_health(
    platform, client, keys, tmp_path
):
    """`cdp keys rotate-master` while services run: a service still on the old key cannot open
    the re-wrapped data keys. Every request it cannot serve answers 503 telling the operator to
    restart it with the new key (before: 500 "internal error" for reads and for records of known
    customers), and /health fails so that the orchestrator notices."""
    other = await open_platform(make_settings(platform.settings.database_url, tmp_path))
    try:  # a customer whose data key this service has not unwrapped yet
        await upsert_one(other, {"source": "crm", "email": "known@example.com"}, "t")
    finally:
        await other.close()
    assert (await client.get("/health")).status_code == 200
    new = MasterKey.from_base64(MasterKey.generate_base64())
    assert await rotate_master_key(platform.db, platform.keys.master, new) == 1

    assert_unavailable(await client.get("/health"), "CDP_MASTER_KEY")
    lookup = await client.get("/v1/profiles?email=known@example.com", headers=keys["admin"])
    assert_unavailable(lookup, "CDP_MASTER_KEY", "restart")
    record = await client.post(
        "/v1/profiles", json={"source": "crm", "email": "known@example.com"}, headers=keys["ingest"]
    )
    assert_unavailable(record, "CDP_MASTER_KEY", "restart")


async def test_the_connection_pool_follows_its_settings(backend, db_url, tmp_path):
    """Several services and workers share one PostgreSQL server, whose max_connections (100 by
    default) bounds them all: three services at the fixed 40 connections each ran it out under
    load. CDP_DATABASE_POOL_SIZE and CDP_DATABASE_MAX_OVERFLOW size each process's pool."""
    if backend != "postgres":
        pytest.skip("SQLite opens a connection per use")
    env = {"CDP_DATABASE_POOL_SIZE": "3", "CDP_DATABASE_MAX_OVERFLOW": "1"}
    settings = Settings.from_env(env)
    assert (settings.pool_size, settings.max_overflow) == (3, 1)
    p = await open_platform(make_settings(db_url, tmp_path, pool_size=3, max_overflow=1))
    try:
        pool = p.db.engine.pool
        assert pool.size() == 3
        async with contextlib.AsyncExitStack() as held:
            for _ in range(4):
                await held.enter_async_context(p.db.engine.connect())
            assert (pool.checkedout(), pool.overflow()) == (4, 1)
    finally:
        await p.close()
    for name in env:
        with pytest.raises(InvalidInput, match=name):
            Settings.from_env({name: "-1"})


def assert_not_an_outage(r) -> None:  # type: ignore[no-untyped-def]
    """A 500 that sends no client back to retry and no operator to the database's host."""
    assert r.status_code == 500, (r.status_code, r.text[:300])
    assert r.json()["detail"] == "internal error"
    assert "retry-after" not in r.headers and "not reachable" not in r.text


async def test_a_statement_the_database_refuses_is_a_500_not_an_outage(
    platform, client, keys, monkeypatch
):
    """A statement the database answers and refuses (SQLite: an expression deeper than 1,000
    levels, sqlite3.OperationalError "Expression tree is too large"; asyncpg: over 32,767 bound
    values, an InterfaceError) was answered 503 "the database is not reachable" with
    Retry-After, as if the database were away: a client sent it again for ever, and the
    operator looked for an outage. Two segment rules did so on SQLite until 2026-12-07; the
    next such statement is made here by a rule compiled with 33,000 terms more. It is a 500,
    logged with the driver's code and not the statement, and /health stays ok."""
    from sqlalchemy import literal, literal_column, or_

    from cdp.segments import service
    from cdp.segments.conditions import Compiled

    body = {"name": "s", "purpose": "service", "channel": "email", "rules": {"all": []}}
    r = await client.post("/v1/segments", json=body, headers=keys["marketing"])
    assert r.status_code == 201, r.text
    compile_condition = service.compile_condition

    def too_large(*args, **kwargs) -> Compiled:  # type: ignore[no-untyped-def]
        c = compile_condition(*args, **kwargs)
        terms = or_(*(literal(n) == literal_column("0") for n in range(33_000)))
        return Compiled(c.where & terms, c.needs_stats, c.cutoffs)

    monkeypatch.setattr(service, "compile_condition", too_large)
    with structlog.testing.capture_logs() as logged:
        r = await client.get(f"/v1/segments/{r.json()['id']}/stats", headers=keys["marketing"])
    assert_not_an_outage(r)
    [event] = [e for e in logged if e["event"] == "unhandled_error"]
    sqlite = platform.db.is_sqlite
    assert (event["error"], event["code"]) == (
        ("OperationalError", "SQLITE_ERROR") if sqlite else ("InterfaceError", None)
    )
    assert "SELECT" not in repr(logged)
    assert (await client.get("/health")).json() == {"status": "ok"}


async def test_statements_the_database_refuses_are_told_from_outages(platform):
    """The classification on each database's real errors: statements it refuses (too deep, too
    many bound values, a column it lacks, a value too big) are no outage; SQLite's file locked
    by another process past the busy timeout is one."""
    sqlite = platform.db.is_sqlite
    many = 250_001 if sqlite else 40_000  # SQLITE_MAX_VARIABLE_NUMBER; asyncpg's 32,767
    deep = 1_100 if sqlite else 20_000
    refused = [
        "SELECT " + "+".join(["1"] * (1_100 if sqlite else 200_000)),  # 54001 on PostgreSQL
        "SELECT " + "(" * deep + "1" + ")" * deep,  # the parsers' stacks
        "SELECT no_such_column FROM profiles",
        "SELECT zeroblob(2000000000)" if sqlite else "SELECT repeat('x', 1100000000)",
        "SELECT 1 WHERE 1 IN (" + ",".join("?" if sqlite else f"${n + 1}" for n in range(many)),
    ]
    for statement in refused:
        params = tuple(range(many)) if " IN (" in statement else None
        with pytest.raises(Exception) as caught:
            async with platform.db.read() as conn:
                await conn.exec_driver_sql(statement + ")" * (params is not None), params)
        assert not database_unavailable(caught.value), (statement[:60], repr(caught.value)[:200])
        assert error_code(caught.value) or not sqlite, repr(caught.value)[:200]
    if not sqlite:
        return
    path = make_url(platform.settings.database_url).database
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write transaction
    engine = make_engine(platform.settings.database_url)
    try:
        with pytest.raises(Exception) as caught:
            async with engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA busy_timeout=0")
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
        assert database_unavailable(caught.value), repr(caught.value)[:200]
        assert error_code(caught.value) == "SQLITE_BUSY"
    finally:
        holder.close()
        await engine.dispose()


async def test_a_sqlite_file_removed_under_the_service_is_an_outage(platform, client, keys):
    """The database file removed while the service runs: each new connection creates it anew,
    empty, and every statement on it fails "no such table" (sqlite3's OperationalError, code
    SQLITE_ERROR as for a statement too deep): that is the database gone, a 503 and /health
    failing, not a 500."""
    if not platform.db.is_sqlite:
        pytest.skip("a SQLite file")
    path = Path(make_url(platform.settings.database_url).database or "")
    assert (await client.get("/health")).status_code == 200
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        file.unlink(missing_ok=True)
    await platform.db.engine.dispose()  # the connections it has keep the removed file open
    assert_unavailable(await client.get("/health"), "not reachable")
    lookup = await client.get("/v1/profiles?email=kept@example.com", headers=keys["admin"])
    assert_unavailable(lookup, "not reachable")
