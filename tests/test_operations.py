"""What an operator running the service relies on: `/health` tells the truth about whether the
service can serve, and a service that cannot (its database gone, its master key rotated away)
says so with a 503 naming why, never a 500, and serves again once the cause is gone."""

from __future__ import annotations

import contextlib

import pytest

from cdp.crypto.master import MasterKey
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
