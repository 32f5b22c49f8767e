"""Restore drills and upgrades around the key store (cdp.key_store): what an operator does to a
running platform, and what must not become of the customers' data keys meanwhile."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select, update

from cdp.crypto.fields import CryptoError
from cdp.db.engine import Database, make_engine
from cdp.db.tables import key_store_link
from cdp.key_store import store_metadata
from cdp.key_store_open import KeyStoreMismatch
from cdp.keyring import split_whole_keys
from cdp.platform import open_platform
from cdp.profiles.identifiers import parse_identifier
from consent.dsr.requests import submit_erasure
from consent.dsr.worker import run_pending
from consent.tables import consent_ledger
from tests.conftest import make_settings, pg_url
from tests.helpers import pg_admin
from tests.test_erasure import EMAIL, create_anna
from tests.test_key_store import store_whole


async def create_profile(client, keys, name: str) -> uuid.UUID:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": f"{name}@example.com", "first_name": name},
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    return uuid.UUID(r.json()["profile_id"])


class GatedStore:
    """The key store as one run of `cdp keys split` sees it: its first call to the store waits
    for `gate` (the run has read its batch of whole keys by then)."""

    def __init__(self, store, gate: asyncio.Event) -> None:  # type: ignore[no-untyped-def]
        self._store, self._gate, self.waiting = store, gate, asyncio.Event()

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        method = getattr(self._store, name)

        async def gated(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.waiting.set()
            await self._gate.wait()
            return await method(*args, **kwargs)

        return gated


async def test_two_key_splits_at_once_leave_every_customer_readable(client, keys, platform):
    """`cdp keys split` started twice (two operators, a job retried while the first still
    runs): one run reads a batch of whole keys, the other splits the same keys meanwhile.
    Neither may leave a database half that does not pair with the key store's share: the key
    was stored whole, so such a customer would be lost for good."""
    pids = [await create_profile(client, keys, name) for name in ("vera", "gleb")]
    for pid in pids:
        await store_whole(platform, pid)
    master, store = platform.keys.master, platform.keys.store
    gate = asyncio.Event()
    late = GatedStore(store, gate)
    second = asyncio.create_task(split_whole_keys(platform.db, master, late))  # type: ignore[arg-type]
    await late.waiting.wait()  # it has read the whole keys
    assert await split_whole_keys(platform.db, master, store) == 2
    gate.set()
    await second
    for pid, name in zip(pids, ("vera", "gleb"), strict=True):
        platform.keys.forget(pid)
        r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
        assert r.status_code == 200, r.text
        assert r.json()["first_name"] == name


async def snapshot_key_store(store) -> dict[str, list]:  # type: ignore[no-untyped-def]
    """The key store's rows, as a copy of it taken now would hold them."""
    async with store.db.read() as conn:
        return {
            t.name: [dict(r) for r in (await conn.execute(select(t))).mappings()]
            for t in store_metadata.sorted_tables
        }


async def restore_key_store(store, copy: dict[str, list]) -> None:  # type: ignore[no-untyped-def]
    """The key store put back from that copy (its numbering too, as a restore does)."""
    async with store.db.write() as conn:
        for t in reversed(store_metadata.sorted_tables):
            await conn.execute(delete(t))
        for t in store_metadata.sorted_tables:
            if copy[t.name]:
                await conn.execute(insert(t), copy[t.name])
        if conn.dialect.name == "postgresql":
            await conn.exec_driver_sql(
                "SELECT setval(pg_get_serial_sequence('erased_profiles', 'seq'),"
                " coalesce((SELECT max(seq) FROM erased_profiles), 0) + 1, false)"
            )


async def test_a_key_store_restored_from_before_an_erasure_is_refused_at_start(
    client, keys, platform, tmp_path
):
    """Restored from an older copy, the key store holds again the shares of customers erased
    since (a backup of the database from before their erasure reads them again) and numbers
    its next erasures with numbers the database has honoured already. The platform must say
    so and stop, not serve on as if nothing happened."""
    ids = await create_anna(client, keys)
    copy = await snapshot_key_store(platform.keys.store)
    ident = parse_identifier(platform.policy, platform.keys.indexer, email=EMAIL)
    await submit_erasure(platform, ident, requested_by="customer", actor="test")
    assert (await run_pending(platform)).completed == 1
    await restore_key_store(platform.keys.store, copy)
    assert await platform.keys.store.get([uuid.UUID(ids["survivor"])])  # her share is back

    with pytest.raises(KeyStoreMismatch) as refused:
        await open_platform(
            make_settings(platform.settings.database_url, tmp_path), run_migrations=False
        )
    assert "older than the database" in str(refused.value)
    assert "CDP_KEY_STORE_URL" in str(refused.value)


async def test_an_erasure_destroys_its_shares_whatever_number_its_tombstone_got(
    client, keys, platform
):
    """On PostgreSQL two erasures' tombstones may commit out of their numbers' order (a
    sequence hands numbers out before commit): a process that reconciles in between moves the
    database's number past the one not yet committed. That erasure's shares must still be
    destroyed when it commits, or every backup from before it reads the customer again."""
    ids = await create_anna(client, keys)
    async with platform.db.write() as conn:  # another process reconciled past our number
        await conn.execute(update(key_store_link).values(reconciled_seq=1000))
    ident = parse_identifier(platform.policy, platform.keys.indexer, email=EMAIL)
    await submit_erasure(platform, ident, requested_by="customer", actor="test")
    assert (await run_pending(platform)).completed == 1
    assert await platform.keys.store.get([uuid.UUID(x) for x in ids.values()]) == {}


async def test_a_key_store_in_the_database_itself_is_refused(db_url, tmp_path):
    """CDP_KEY_STORE_URL set to the database's own URL (copied from CDP_DATABASE_URL): the
    shares would lie in every backup of the database beside the other halves, and an erasure
    would reach none of them. A first start must refuse it, not create the store there."""
    with pytest.raises(KeyStoreMismatch) as refused:
        await open_platform(make_settings(db_url, tmp_path, key_store=db_url), run_migrations=False)
    assert "CDP_KEY_STORE_URL" in str(refused.value)
    db = Database(db_url)
    try:
        async with db.read() as conn:
            made = await conn.run_sync(lambda c: c.dialect.has_table(c, "key_shares"))
            linked = (await conn.execute(select(key_store_link))).all()
    finally:
        await db.dispose()
    assert not made and linked == []


async def test_health_answers_503_while_the_key_store_is_down(client, keys, platform):
    """Without its key store the service can read and store no customer (every such request
    answers 503): /health must say so too, or a load balancer keeps sending it traffic."""
    pid = await create_profile(client, keys, "vera")
    platform.keys.forget(pid)
    store = platform.keys.store
    engine = store.db.engine
    store.db.engine = make_engine("postgresql+asyncpg://postgres@127.0.0.1:1/stopped")
    try:
        r = await client.get("/health")
        assert r.status_code == 503, r.text
        assert "key store" in r.json()["detail"] and r.headers["retry-after"]
        r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
        assert r.status_code == 503, r.text
    finally:
        await store.db.engine.dispose()
        store.db.engine = engine
    assert (await client.get("/health")).json() == {"status": "ok"}
    assert (await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])).status_code == 200


async def test_processes_starting_at_once_on_a_fresh_setup_share_one_key_store(
    db_url, backend, tmp_path
):
    """The API and a worker started together on a new deployment (docker compose up): each
    finds no key store and makes one. All must start, on the same store; on PostgreSQL the
    ones that lose the race to create its database saw `duplicate key value violates unique
    constraint "pg_database_datname_index"` and exited."""
    if backend == "sqlite":
        store_url = f"sqlite+aiosqlite:///{tmp_path / 'keys' / 'cdp.keys.db'}"
    else:
        store_url = pg_url(f"cdp_keys_race_{uuid.uuid4().hex[:8]}")
    settings = make_settings(db_url, tmp_path, key_store=store_url)
    try:
        opened = await asyncio.gather(
            *[open_platform(settings, run_migrations=False) for _ in range(4)],
            return_exceptions=True,
        )
        failed = [f"{type(p).__name__}: {p}" for p in opened if isinstance(p, BaseException)]
        for p in opened:
            if not isinstance(p, BaseException):
                await p.close()
        assert failed == []
        assert len({p.keys.store.store_id for p in opened}) == 1  # type: ignore[union-attr]
    finally:
        if backend != "sqlite":
            name = store_url.rsplit("/", 1)[1]
            await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_a_key_store_that_cannot_be_opened_is_named_at_start(platform, tmp_path):
    """A restore drill on a new server that forgot the key store: its PostgreSQL database does
    not exist, or its server does not answer. The refusal names CDP_KEY_STORE_URL, not 'the
    database' (which opened fine), as the SQLite store's missing file already did."""
    missing = pg_url(f"cdp_keys_missing_{uuid.uuid4().hex[:8]}")
    with pytest.raises(KeyStoreMismatch) as refused:
        await open_platform(
            make_settings(platform.settings.database_url, tmp_path, key_store=missing),
            run_migrations=False,
        )
    assert "CDP_KEY_STORE_URL" in str(refused.value) and "does not exist" in str(refused.value)
    down = "postgresql+asyncpg://postgres@127.0.0.1:1/cdp_keys"
    with pytest.raises(CryptoError) as refused:
        await open_platform(
            make_settings(platform.settings.database_url, tmp_path, key_store=down),
            run_migrations=False,
        )
    assert "cannot open the key store" in str(refused.value)
    assert "CDP_KEY_STORE_URL" in str(refused.value)


async def test_a_destroyed_share_is_gone_from_the_key_store_files(client, keys, platform):
    """SQLite: an erased customer's share is destroyed, not only deleted. A DELETE leaves the
    row's bytes in the file's free pages and in its -wal until a checkpoint: a copy of the key
    store's files taken after the erasure (the README allows keeping its backups a while) still
    held the share, and with a database backup from before the erasure, the customer."""
    if not platform.db.is_sqlite:
        return  # PostgreSQL's files are the server's; nothing a copy of a file would hold
    ids = await create_anna(client, keys)
    pids = [uuid.UUID(x) for x in ids.values()]
    shares = await platform.keys.store.get(pids)
    assert len(shares) == 2
    ident = parse_identifier(platform.policy, platform.keys.indexer, email=EMAIL)
    await submit_erasure(platform, ident, requested_by="customer", actor="test")
    assert (await run_pending(platform)).completed == 1
    path = Path(platform.keys.store.db.engine.url.database or "")
    held = b"".join(
        f.read_bytes() for f in (path, path.with_name(path.name + "-wal")) if f.exists()
    )
    assert held, path
    assert [pid for pid, share in shares.items() if share in held] == []


async def test_consent_evidence_is_never_kept_under_the_system_key_for_a_profile_with_a_key(
    client, keys, platform
):
    """A profile whose data key's share is missing from the key store (a key store put back
    from an older copy) cannot encrypt its consent evidence. It was stored under the system
    key instead, which no erasure destroys: the IP address and page of a consent outlived the
    customer's erasure in the ledger and in every backup. Fail closed: nothing with evidence is
    recorded. An opt-out, which carries none, is honoured (it was refused too until 2026-12-07,
    and the customer stayed contactable)."""
    pid = await create_profile(client, keys, "vera")
    await platform.keys.store.destroy([pid])
    platform.keys.forget(pid)
    consent = {
        "email": "vera@example.com",
        "purpose": "marketing",
        "channel": "email",
        "status": "granted",
        "source": "web_form",
        "evidence": {"wording_id": "nl-1", "method": "double_opt_in", "ip": "203.0.113.7"},
    }
    r = await client.post("/v1/consents", json=consent, headers=keys["ingest"])
    assert r.status_code == 500, r.text
    r = await client.post(
        "/v1/opt-outs",
        json={"email": "vera@example.com", "purpose": "marketing", "channel": "*", "source": "t"},
        headers=keys["ingest"],
    )
    assert r.status_code == 200 and r.json()["suppressed"] is True, r.text
    claim = {k: v for k, v in consent.items() if k != "email"}
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "vera@example.com", "consents": [claim]},
        headers=keys["ingest"],
    )
    assert r.status_code == 500, r.text
    async with platform.db.read() as conn:
        entries = (
            await conn.execute(select(consent_ledger.c.status, consent_ledger.c.evidence))
        ).all()
    assert entries and {status for status, _ in entries} == {"withdrawn"}  # the opt-out's
    assert [evidence for _, evidence in entries if evidence is not None] == []


async def test_a_key_store_restored_from_before_a_customer_existed_is_refused_at_start(
    client, keys, platform, tmp_path
):
    """No erasure since the key store's copy was taken, so its numbers agree with the
    database's; but customers created since have no share there. Served on, they silently
    dropped out of every segment and export and their profiles answered 500: the platform
    must refuse the store at start, naming no customer data (ids only)."""
    await create_profile(client, keys, "vera")
    copy = await snapshot_key_store(platform.keys.store)
    gleb = await create_profile(client, keys, "gleb")
    await restore_key_store(platform.keys.store, copy)
    with pytest.raises(KeyStoreMismatch) as refused:
        await open_platform(
            make_settings(platform.settings.database_url, tmp_path), run_migrations=False
        )
    assert "older than the database" in str(refused.value)
    assert str(gleb) in str(refused.value) and "gleb" not in str(refused.value).replace(
        str(gleb), ""
    )
