"""Minimised cases that the fault-injection harness (tests/test_fault_injection.py) found, each
failing before its fix."""

from __future__ import annotations

import uuid

from cdp.profiles.identifiers import parse_identifier
from consent.dsr.requests import submit_erasure
from consent.dsr.worker import run_pending
from tests.faults import InjectedFault


async def test_an_erasure_whose_shares_were_not_destroyed_is_finished_by_the_next_worker_pass(
    client, keys, platform, monkeypatch
):
    """The erasure committed (the request reads "completed") but the key store refused to
    destroy the shares (down a moment, or the process lost its answer): the customer's data
    keys were still readable with a copy of the database, and no worker pass ever destroyed
    them (only the next erasure or a restart did)."""
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "shred@example.com", "first_name": "Shred"},
        headers=keys["ingest"],
    )
    pid = uuid.UUID(r.json()["profile_id"])
    store = platform.keys.store
    destroy = type(store).destroy

    async def refused(self, profile_ids):  # type: ignore[no-untyped-def]
        raise InjectedFault("the key store is down")

    monkeypatch.setattr(type(store), "destroy", refused)
    ident = parse_identifier(platform.policy, platform.keys.indexer, email="shred@example.com")
    submitted = await submit_erasure(platform, ident, requested_by="customer", actor="test")
    await run_pending(platform)
    r = await client.get(f"/v1/erasure-requests/{submitted.request_id}", headers=keys["admin"])
    assert r.json()["status"] == "completed"
    assert await store.get([pid])  # still there: the key store was down

    monkeypatch.setattr(type(store), "destroy", destroy)  # it is back
    await run_pending(platform)  # the worker's next pass
    assert await store.get([pid]) == {}


async def test_an_erasure_redone_from_its_tombstone_leaves_the_audit_verifying(
    client, keys, platform, tmp_path
):
    """An erasure run that failed after the key store's tombstone (a statement refused, the
        connection lost) is redone by the next process to start (consent.dsr.restore), and the
        request then closes as "nothing left to erase". `GET /v1/audit/verify` answered ok: false
        from then on ("suppression_unbacked", "state_missing"): the erasure's suppressions carried
        the time the customer was erased again, which no completed request accounted for (fixed on
    main by a367029: the erasure done again completes the open request)."""
    import consent.dsr.erasure as erasure
    from cdp.platform import open_platform
    from tests.conftest import make_settings

    r = await client.post(
        "/v1/consents",
        json={
            "email": "redo@example.com",
            "purpose": "marketing",
            "channel": "email",
            "status": "granted",
            "source": "web",
            "evidence": {"wording_id": "newsletter-v3", "method": "checkbox"},
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    ident = parse_identifier(platform.policy, platform.keys.indexer, email="redo@example.com")
    submitted = await submit_erasure(platform, ident, requested_by="customer", actor="test")
    original = erasure.crash_point

    def connection_lost(name: str) -> None:
        if name == "after_suppressions":
            raise InjectedFault("connection lost")

    erasure.crash_point = connection_lost
    try:
        assert (await run_pending(platform)).failed == 1
    finally:
        erasure.crash_point = original
    started = await open_platform(
        make_settings(platform.settings.database_url, tmp_path), run_migrations=False
    )
    await started.close()
    await run_pending(platform)
    r = await client.get(f"/v1/erasure-requests/{submitted.request_id}", headers=keys["admin"])
    assert r.json()["status"] == "completed"
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    assert r.json()["ok"] is True, r.text


async def test_a_master_key_rotation_the_database_stops_exits_1_with_one_line(
    client, keys, platform, tmp_path, monkeypatch
):
    """`cdp keys rotate-master` whose UPDATE the database refused (disk full, connection
    lost): the operator got a Python traceback ending in SQLAlchemy's text, and nothing that
    said whether the keys were touched or what to do."""
    import asyncio

    from click.testing import CliRunner
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.exc import OperationalError

    from cdp.cli import main
    from cdp.crypto.master import MasterKey

    r = await client.post(
        "/v1/profiles", json={"source": "crm", "email": "rot@example.com"}, headers=keys["ingest"]
    )
    assert r.status_code == 201, r.text

    def disk_full(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("UPDATE PROFILE_KEYS"):
            raise OperationalError(statement, None, InjectedFault("database or disk is full"))

    env = {
        "CDP_DATABASE_URL": platform.settings.database_url,
        "CDP_MASTER_KEY": platform.settings.master_key or "",
        "CDP_NEW_MASTER_KEY": MasterKey.generate_base64(),
        "CDP_DEV_KEY_DIR": str(tmp_path / "keys"),
    }
    event.listen(Engine, "before_cursor_execute", disk_full)
    try:
        result = await asyncio.to_thread(
            CliRunner().invoke, main, ["keys", "rotate-master"], env=env
        )
    finally:
        event.remove(Engine, "before_cursor_execute", disk_full)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "database or disk is full" in result.output
    assert "run the same command again" in result.output
    assert "Traceback" not in result.output and "UPDATE" not in result.output


async def test_a_cli_command_the_database_stops_midway_exits_1_with_one_line(platform, tmp_path):
    """`cdp keys create` whose INSERT the database refused: a Python traceback, where every
    other failure of a `cdp` command is one line and exit status 1."""
    import asyncio

    from click.testing import CliRunner
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.exc import OperationalError

    from cdp.cli import main

    def disk_full(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO API_KEYS"):
            raise OperationalError(statement, None, InjectedFault("database or disk is full"))

    env = {
        "CDP_DATABASE_URL": platform.settings.database_url,
        "CDP_MASTER_KEY": platform.settings.master_key or "",
        "CDP_DEV_KEY_DIR": str(tmp_path / "keys"),
    }
    event.listen(Engine, "before_cursor_execute", disk_full)
    try:
        result = await asyncio.to_thread(
            CliRunner().invoke, main, ["keys", "create", "--name", "n", "--role", "admin"], env=env
        )
    finally:
        event.remove(Engine, "before_cursor_execute", disk_full)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "the database failed" in result.output and "disk is full" in result.output
    assert "Traceback" not in result.output and "INSERT" not in result.output
