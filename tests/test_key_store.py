"""Crypto-shredding reaches the copies of the database: a backup taken before an erasure cannot
be read, even with the master key, and restored it erases the customer again before serving.

The data key is split between the database and the key store (cdp.key_store); an erasure
destroys the key store's half. Keys stored whole by an older release keep working until
`cdp keys split` moves their other half out; a key store that is not the database's is
refused at start-up, not taken for a store in which everyone was erased."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.engine import make_url

from api.app import create_app
from cdp.crypto.fields import CryptoError
from cdp.db.engine import Database
from cdp.db.tables import profile_keys, profiles
from cdp.key_store import xor
from cdp.key_store_open import KeyStoreMismatch, KeyStoreSettingMissing
from cdp.keyring import _dek_context, split_whole_keys, whole_keys_left
from cdp.platform import Platform, open_platform
from cdp.profiles.identifiers import parse_identifier
from cdp.settings import default_key_store_url
from consent.dsr.requests import submit_erasure
from consent.dsr.restore import erase_again
from consent.dsr.worker import run_pending
from consent.tables import suppressions
from tests.conftest import TEST_MASTER_KEY, make_settings, pg_url
from tests.helpers import pg_admin
from tests.test_erasure import EMAIL, create_anna
from tests.test_import import run_cli

ROOT = Path(__file__).resolve().parent.parent
BORIS = {"source": "crm", "email": "boris.backup@example.com", "first_name": "Борис"}


async def take_backup(p: Platform, tmp_path: Path) -> AsyncIterator[str]:
    """A copy of the database as an operator's backup would hold it; yields its URL."""
    url = p.settings.database_url
    if url.startswith("sqlite"):
        target = tmp_path / "backup" / "cdp.db"
        target.parent.mkdir()
        async with p.db.engine.connect() as conn:
            raw = await conn.get_raw_connection()  # VACUUM INTO: outside a transaction
            await raw.driver_connection.execute(f"VACUUM INTO '{target}'")
        yield f"sqlite+aiosqlite:///{target}"
        return
    name = f"cdp_restored_{uuid.uuid4().hex[:8]}"
    parsed = urlparse(url.replace("+asyncpg", ""))
    server = [
        "-h",
        parsed.hostname or "127.0.0.1",
        "-p",
        str(parsed.port or 5432),
        "-U",
        "postgres",
    ]
    dump = subprocess.run(
        ["pg_dump", *server, parsed.path.lstrip("/")], check=True, capture_output=True
    )
    await pg_admin(f'CREATE DATABASE "{name}"')
    try:
        subprocess.run(
            ["psql", "-q", "-v", "ON_ERROR_STOP=1", *server, name],
            input=dump.stdout,
            check=True,
            capture_output=True,
        )
        yield pg_url(name)
    finally:
        await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def row_of(url: str, pid: uuid.UUID):  # type: ignore[no-untyped-def]
    db = Database(url)
    try:
        async with db.read() as conn:
            return (
                await conn.execute(
                    select(
                        profiles.c.status,
                        profiles.c.first_name,
                        profile_keys.c.key_id,
                        profile_keys.c.wrapped,
                        profile_keys.c.split,
                    )
                    .join(profile_keys, profile_keys.c.profile_id == profiles.c.id)
                    .where(profiles.c.id == pid)
                )
            ).one()
    finally:
        await db.dispose()


async def store_whole(platform: Platform, pid: uuid.UUID) -> None:
    """The profile's data key as a release before the key store kept it: whole, in the
    database alone."""
    master, store = platform.keys.master, platform.keys.store
    async with platform.db.write() as conn:
        key_id, wrapped = (
            await conn.execute(
                select(profile_keys.c.key_id, profile_keys.c.wrapped).where(
                    profile_keys.c.profile_id == pid
                )
            )
        ).one()
        ctx = _dek_context(pid, key_id)
        key = xor(master.unwrap(wrapped, ctx), (await store.get([pid]))[pid])
        await conn.execute(
            update(profile_keys)
            .where(profile_keys.c.profile_id == pid)
            .values(wrapped=master.wrap(key, ctx), split=False)
        )
    await store.destroy([pid])
    platform.keys.forget(pid)


async def test_a_backup_from_before_an_erasure_stays_unreadable_and_restored_erases_again(
    client, keys, platform, tmp_path
):
    ids = await create_anna(client, keys)
    anna = uuid.UUID(ids["survivor"])
    boris = await client.post("/v1/profiles", json=BORIS, headers=keys["ingest"])
    assert boris.status_code == 201
    backups = take_backup(platform, tmp_path)
    backup_url = await anext(backups)
    try:
        ident = parse_identifier(platform.policy, platform.keys.indexer, email=EMAIL)
        await submit_erasure(platform, ident, requested_by="customer", actor="test")
        assert (await run_pending(platform)).completed == 1

        # the backup still holds Anna's ciphertext and her data key's database half, which the
        # master key unwraps: it opens nothing, and the key store's half is gone
        held = await row_of(backup_url, anna)
        assert held.status == "active" and held.first_name is not None and held.split
        platform.keys.forget(anna)
        half = platform.keys.cipher_from_row(anna, held.key_id, held.wrapped, remember=False)
        with pytest.raises(CryptoError):
            half.decrypt("profiles.first_name", held.first_name)
        assert await platform.keys.store.get([anna, uuid.UUID(ids["absorbed"])]) == {}

        # restored, the database erases Anna again before it serves anything; Boris, stored
        # before the backup too, is untouched
        settings = make_settings(backup_url, tmp_path, key_store=platform.settings.key_store_url)
        restored = await open_platform(settings, run_migrations=False)
        try:
            app = create_app(platform=restored)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                r = await c.get("/v1/profiles", params={"email": EMAIL}, headers=keys["admin"])
                assert r.status_code == 404, r.text
                for pid in ids.values():
                    r = await c.get(f"/v1/profiles/{pid}", headers=keys["admin"])
                    assert r.status_code == 410, r.text
                r = await c.get(f"/v1/profiles/{boris.json()['profile_id']}", headers=keys["admin"])
                assert r.status_code == 200 and r.json()["first_name"] == "Борис"
            async with restored.db.read() as conn:
                reasons = {
                    r
                    for (r,) in await conn.execute(
                        select(suppressions.c.reason).where(suppressions.c.bidx == ident.bidx)
                    )
                }
            assert reasons == {"erasure"}  # re-ingesting her address is not contactable
            assert await erase_again(restored) == 0  # done once, for good
        finally:
            await restored.close()
    finally:
        await backups.aclose()


@pytest.mark.parametrize("held_open", [False, True], ids=["after", "open-in-backup"])
async def test_a_restored_database_that_erased_again_still_verifies(
    client, keys, platform, tmp_path, held_open
):
    """Restored from a backup taken before an erasure (as an operator rolling an upgrade back
    does), the database erased the customer again, but `audit verify` then failed: the erasure's
    suppressions carried a time no completed request in that database had, so the verifier
    called them unbacked and the deleted consent state missing (found by review on
    2026-12-07, restoring a pre-upgrade backup). The database records the erasure it did again
    as a completed request, and verifies; a request the backup held open is completed by it."""
    await create_anna(client, keys)
    ident = parse_identifier(platform.policy, platform.keys.indexer, email=EMAIL)
    if held_open:  # the backup holds her request, received
        await submit_erasure(platform, ident, requested_by="customer", actor="test")
    backups = take_backup(platform, tmp_path)
    backup_url = await anext(backups)
    try:
        if not held_open:
            await submit_erasure(platform, ident, requested_by="customer", actor="test")
        assert (await run_pending(platform)).completed == 1
        settings = make_settings(backup_url, tmp_path, key_store=platform.settings.key_store_url)
        restored = await open_platform(settings, run_migrations=False)
        try:
            app = create_app(platform=restored)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                h = keys["compliance"]
                r = await c.get("/v1/profiles", params={"email": EMAIL}, headers=h)
                assert r.status_code == 404, r.text
                verify = (await c.get("/v1/audit/verify", headers=h)).json()
                assert verify["ok"] is True, verify
                r = await c.get("/v1/erasure-requests", headers=h)
                assert [i["status"] for i in r.json()["items"]] == ["completed"], r.text
        finally:
            await restored.close()
    finally:
        await backups.aclose()


async def test_a_key_store_that_is_not_the_databases_is_refused(platform, tmp_path):
    if platform.db.is_sqlite:
        elsewhere = tmp_path / "elsewhere" / "cdp.keys.db"
        url = f"sqlite+aiosqlite:///{elsewhere}"
    else:  # a database that holds no key store
        url = platform.settings.database_url
    with pytest.raises(KeyStoreMismatch) as refused:
        await open_platform(
            make_settings(platform.settings.database_url, tmp_path, key_store=url),
            run_migrations=False,
        )
    assert "CDP_KEY_STORE_URL" in str(refused.value)
    assert platform.keys.store.store_id in str(refused.value)
    if platform.db.is_sqlite:
        assert not elsewhere.exists()  # no empty store was made in its place


def test_the_key_store_lies_beside_the_database_unless_configured():
    assert default_key_store_url("sqlite+aiosqlite:///data/cdp.db") == (
        "sqlite+aiosqlite:///data/cdp.keys.db"
    )
    assert default_key_store_url("postgresql+asyncpg://cdp:s3cret@db:5432/cdp?ssl=require") == (
        "postgresql+asyncpg://cdp:s3cret@db:5432/cdp_keys?ssl=require"
    )


async def test_production_names_its_key_store_or_does_not_start(platform, tmp_path):
    """The default key store lies beside the database, inside a backup of the whole directory
    or server: production must name one, as it must name its master key. The refusal says
    which setting, and what to set to keep today's store; nothing is touched before it."""
    settings = dataclasses.replace(platform.settings, environment="production")
    with pytest.raises(KeyStoreSettingMissing) as refused:
        await open_platform(settings)
    message = str(refused.value)
    assert "CDP_KEY_STORE_URL must be set in production" in message
    store = make_url(platform.settings.key_store_url)
    if platform.db.is_sqlite:
        assert f"CDP_KEY_STORE_URL={store.render_as_string()}" in message
    else:  # a password it may hold is not repeated (test_..._repeats_no_password)
        assert f"with the database name {store.database} in place of" in message
    named = dataclasses.replace(settings, key_store=platform.settings.key_store_url)
    opened = await open_platform(named, run_migrations=False)
    await opened.close()


async def test_the_cli_refuses_a_key_store_that_is_not_the_databases_in_one_line(
    platform, tmp_path
):
    if not platform.db.is_sqlite:
        return  # the message is the same; one process start is enough
    env = {
        **os.environ,
        "CDP_DATABASE_URL": platform.settings.database_url,
        "CDP_MASTER_KEY": TEST_MASTER_KEY,
        "CDP_KEY_STORE_URL": f"sqlite:///{tmp_path / 'moved' / 'keys.db'}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cdp.cli", "keys", "list"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "CDP_KEY_STORE_URL does not lead to this database's key store" in done.stderr
    assert "Traceback" not in done.stderr


async def test_keys_stored_whole_by_an_older_release_are_read_then_split(client, keys, platform):
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "vera@example.com", "first_name": "Вера"},
        headers=keys["ingest"],
    )
    pid = uuid.UUID(r.json()["profile_id"])
    master, store = platform.keys.master, platform.keys.store
    await store_whole(platform, pid)
    assert await whole_keys_left(platform.db)
    r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
    assert r.status_code == 200 and r.json()["first_name"] == "Вера"

    assert await split_whole_keys(platform.db, master, store) == 1
    assert not await whole_keys_left(platform.db)
    assert pid in await store.get([pid])
    platform.keys.forget(pid)
    r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
    assert r.status_code == 200 and r.json()["first_name"] == "Вера"
    assert await split_whole_keys(platform.db, master, store) == 0


async def test_an_erasure_that_failed_midway_is_finished_when_a_process_next_starts(
    client, keys, platform, tmp_path, monkeypatch
):
    """The key store's tombstone is written before the database's erasure commits: a run that
    fails after it leaves the customer readable (nothing half-done), and the next process to
    start erases them, whether or not a worker picks the request up again."""
    import consent.dsr.erasure as erasure

    ids = await create_anna(client, keys)
    ident = parse_identifier(platform.policy, platform.keys.indexer, email=EMAIL)
    await submit_erasure(platform, ident, requested_by="customer", actor="test")

    def boom(name: str) -> None:
        if name == "before_commit":
            raise RuntimeError("connection lost")

    monkeypatch.setattr(erasure, "crash_point", boom)
    assert (await run_pending(platform)).failed == 1
    r = await client.get(f"/v1/profiles/{ids['survivor']}", headers=keys["admin"])
    assert r.status_code == 200 and r.json()["first_name"] == "Анна"
    monkeypatch.undo()

    started = await open_platform(
        make_settings(platform.settings.database_url, tmp_path), run_migrations=False
    )
    await started.close()
    r = await client.get(f"/v1/profiles/{ids['survivor']}", headers=keys["admin"])
    assert r.status_code == 410, r.text
    assert await platform.keys.store.get([uuid.UUID(x) for x in ids.values()]) == {}
    # the start-up completed her request with the erasure it did (consent.dsr.restore): the
    # worker finds nothing to do, and the suppressions carry the request's completion time
    assert (await run_pending(platform)).completed == 0
    r = await client.get("/v1/erasure-requests", headers=keys["compliance"])
    assert [i["status"] for i in r.json()["items"]] == ["completed"], r.text
    verify = (await client.get("/v1/audit/verify", headers=keys["compliance"])).json()
    assert verify["ok"] is True, verify


async def test_a_member_whose_key_share_is_gone_is_never_handed_out(client, keys, platform):
    """Fail closed: a profile whose share the key store no longer holds (destroyed by an
    erasure the database has not caught up with) is left out of members and exports."""
    made = {}
    for name in ("kept", "gone"):
        r = await client.post(
            "/v1/profiles",
            json={"source": "crm", "email": f"{name}@example.com", "first_name": name},
            headers=keys["ingest"],
        )
        made[name] = r.json()["profile_id"]
        r = await client.post(
            "/v1/consents",
            json={
                "email": f"{name}@example.com",
                "purpose": "marketing",
                "channel": "email",
                "status": "granted",
                "source": "web_form",
                "evidence": {"wording_id": "nl-1", "method": "double_opt_in"},
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text
    definition = {
        "purpose": "marketing",
        "channel": "email",
        "rules": {"field": "jurisdiction", "op": "eq", "value": "RU"},
    }
    seg = await client.post(
        "/v1/segments", json={"name": "all RU", **definition}, headers=keys["marketing"]
    )
    sid = seg.json()["id"]
    await platform.keys.store.destroy([uuid.UUID(made["gone"])])
    members = await client.get(f"/v1/segments/{sid}/members", headers=keys["marketing"])
    assert [m["profile_id"] for m in members.json()["items"]] == [made["kept"]]
    export = await client.get(
        f"/v1/segments/{sid}/export", params={"format": "ndjson"}, headers=keys["marketing"]
    )
    assert b"kept@example.com" in export.content and b"gone@example.com" not in export.content
    query = await client.post("/v1/segments/query", json=definition, headers=keys["marketing"])
    assert [m["profile_id"] for m in query.json()["items"]] == [made["kept"]]


@pytest.mark.parametrize("where", ["user", "query"])
def test_the_refusal_without_a_key_store_repeats_no_password(tmp_path, where):
    """An operator upgrading production without CDP_KEY_STORE_URL is told what to set; the
    refusal (on stderr, in the service's logs) repeats no password of CDP_DATABASE_URL, whether
    the URL carries it before the host or as `?password=` (asyncpg takes both), and suggests no
    value with a masked password in it, which would not work if copied. Nothing is connected
    to before the refusal: the same on either backend."""
    url = (
        "postgresql://cdp:s3cret-pw@db.internal:5432/cdp"
        if where == "user"
        else "postgresql://cdp@db.internal:5432/cdp?password=s3cret-pw&sslmode=require"
    )
    refused = run_cli(["keys", "list"], url, tmp_path, CDP_ENV="production")
    assert refused.returncode == 1, refused.stderr
    assert "CDP_KEY_STORE_URL must be set in production" in refused.stderr
    assert "s3cret" not in refused.stderr + refused.stdout
    assert "***" not in refused.stderr  # not a value to copy
    assert "cdp_keys" in refused.stderr  # where today's store is: the database's name


async def test_every_sqlite_commit_is_on_disk_before_it_returns(platform, backend):
    """An opt-out answered 200, and the share an erasure destroyed, must survive a power loss
    or an OS crash, not only a killed process: the database and the key store sync each commit
    (synchronous=FULL; NORMAL lost the WAL's last commits in a power loss). Checked on a read
    connection and inside a write transaction of each, as the service opens them."""
    if backend != "sqlite":
        pytest.skip("PostgreSQL syncs its WAL at every commit (synchronous_commit=on)")
    for db in (platform.db, platform.keys.store.db):
        for transaction in (db.read, db.write):
            async with transaction() as conn:
                mode = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar()
            assert mode == 2, (db, transaction, mode)  # 2: FULL
