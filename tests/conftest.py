"""Test fixtures. Every test that asks for `platform` runs on SQLite and on PostgreSQL.

PostgreSQL: one database per session (migrated once), emptied between tests. Where PostgreSQL
is missing the PostgreSQL half is skipped locally, and fails in CI (CI=true).
SQLite: a migrated template file copied for each test.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from api.app import create_app
from cdp.apikeys import create_key
from cdp.crypto.master import MasterKey
from cdp.db.engine import Database
from cdp.db.metadata import metadata
from cdp.db.migrate import migrate
from cdp.platform import Platform, open_platform
from cdp.settings import Settings
from consent.outbox.receiver import Receiver
from tests.helpers import pg_admin

TEST_MASTER_KEY = MasterKey.generate_base64()
PG_ADMIN_URL = os.environ.get("CDP_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgres"]


def _pg_dsn(db: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + db


@pytest.fixture(scope="session")
async def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await migrate(db)
    await db.dispose()
    return path


@pytest.fixture(scope="session")
async def pg_database() -> AsyncIterator[str | None]:
    name = f"cdp_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        await pg_admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI and is not reachable: {type(exc).__name__}")
        yield None
        return
    async with migrated_pg(name):
        yield name


@asynccontextmanager
async def migrated_pg(name: str) -> AsyncIterator[None]:
    """The created PostgreSQL database `name`, migrated; dropped afterwards with its key store."""
    try:
        db = Database(pg_url(name))
        await migrate(db)
        await db.dispose()
        yield
    finally:
        await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await pg_admin(f'DROP DATABASE IF EXISTS "{name}_keys" WITH (FORCE)')  # its key store


def pg_url(name: str) -> str:
    return _pg_dsn(name).replace("postgresql://", "postgresql+asyncpg://")


def make_settings(url: str, tmp_path: Path, **overrides: object) -> Settings:
    base = Settings(
        database_url=url,
        master_key=TEST_MASTER_KEY,
        default_jurisdiction="RU",
        public_url="http://testserver",
        dev_key_dir=tmp_path / "keys",
        # races in process send hundreds of requests at once (test_consent: 300); the bound
        # on requests in flight (128 by default) has tests of its own (test_overload)
        max_in_flight=1000,
    )
    from dataclasses import replace

    return replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def db_url(
    backend: str, sqlite_template: Path, pg_database: str | None, tmp_path: Path
) -> str:
    if backend == "sqlite":
        target = tmp_path / "cdp.db"
        shutil.copy(sqlite_template, target)
        return f"sqlite+aiosqlite:///{target}"
    if pg_database is None:
        pytest.skip("PostgreSQL is not reachable")
    return await empty_postgres(pg_database)


async def empty_postgres(name: str) -> str:
    """The URL of the migrated PostgreSQL database `name`, every table and its key store
    emptied."""
    url = pg_url(name)
    db = Database(url)
    async with db.engine.begin() as conn:
        tables = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
        await conn.execute(text(f"TRUNCATE {tables}"))
    await db.dispose()
    await _empty_key_store(name)
    return url


async def _empty_key_store(name: str) -> None:
    """The key store that the database's platforms open (cdp.key_store), emptied like it."""
    import asyncpg

    try:
        conn = await asyncpg.connect(_pg_dsn(f"{name}_keys"), timeout=5)
    except asyncpg.InvalidCatalogNameError:
        return  # not created yet: the first platform creates it
    try:
        await conn.execute("TRUNCATE key_store_meta, key_shares, erased_profiles")
    finally:
        await conn.close()


@pytest.fixture
async def sites(backend: str, pg_database: str | None, tmp_path: Path) -> AsyncIterator[Any]:
    """`make(name, **env)`: a new, empty database and key store of the backend (tests/crash.py's
    Site), each dropped afterwards. PostgreSQL missing: skipped, a failure in CI (pg_database)."""
    from tests.crash import Site

    if backend == "postgres" and pg_database is None:
        pytest.skip("PostgreSQL is not reachable")
    made: list[Site] = []

    async def make(name: str, **env: str) -> Site:
        site = await Site.fresh(backend, tmp_path / name, **env)
        made.append(site)
        return site

    yield make
    for site in made:
        await site.drop()


@pytest.fixture
async def platform(db_url: str, tmp_path: Path) -> AsyncIterator[Platform]:
    p = await open_platform(make_settings(db_url, tmp_path), run_migrations=False)
    yield p
    await p.close()


@pytest.fixture
async def client(platform: Platform) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app, in the test's own event loop (asyncpg needs that)."""
    app = create_app(platform=platform)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


@pytest.fixture
async def keys(platform: Platform) -> dict[str, dict[str, str]]:
    """Authorization headers for one key of each role."""
    return await role_keys(platform)


async def role_keys(p: Platform) -> dict[str, dict[str, str]]:
    """A new key of each role on `p` (named `<role>-key`), as Authorization headers by role."""
    out = {}
    for role in ("admin", "ingest", "marketing", "compliance"):
        key = await create_key(p.db, f"{role}-key", role)
        out[role] = {"Authorization": f"Bearer {key}"}
    return out


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on loopback (consent/outbox/receiver.py) that accepts any signature;
    tests give a subscription its URL and read what it was sent."""
    r = Receiver(secret="")
    await r.start()
    yield r
    await r.stop()
