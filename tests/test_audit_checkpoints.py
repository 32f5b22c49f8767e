"""Signed checkpoints: a ledger rewritten consistently (every hash recomputed) or cut short is
caught by a checkpoint exported to a file kept outside the database."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import delete, func, insert, select, update

from cdp.ids import utcnow
from cdp.platform import Platform
from consent.audit.checkpoints import (
    ChainBrokenError,
    checkpoint_periodically,
    create_checkpoint,
    export_checkpoints,
    list_checkpoints,
    read_checkpoint_file,
    sign_checkpoint,
)
from consent.audit.signing import AuditSigner, SigningKeyError, load_signer, signer_for
from consent.audit.verify import verify_ledger
from consent.audit_tables import audit_checkpoints
from consent.chain import GENESIS, entry_hash
from consent.tables import consent_ledger, consent_state
from tests.conftest import TEST_MASTER_KEY
from tests.test_audit_chain import ledger_rows, seed_ledger, set_column, verify

ROOT = Path(__file__).resolve().parent.parent


async def rewrite_from(p: Platform, seq: int, **changes: object) -> None:
    """What an intruder with write access does: change entry `seq` and recompute every hash
    after it, so the chain on its own still verifies."""
    rows = await ledger_rows(p)
    prev = rows[seq - 2]["hash"] if seq > 1 else GENESIS
    async with p.db.write() as conn:
        for row in rows[seq - 1 :]:
            if row["seq"] == seq:
                row.update(changes)
            row["prev_hash"] = prev
            row["hash"] = prev = entry_hash(prev, row)
            await conn.execute(
                update(consent_ledger)
                .where(consent_ledger.c.seq == row["seq"])
                .values({**changes, "prev_hash": row["prev_hash"], "hash": row["hash"]})
                if row["seq"] == seq
                else update(consent_ledger)
                .where(consent_ledger.c.seq == row["seq"])
                .values(prev_hash=row["prev_hash"], hash=row["hash"])
            )


async def drop_stored_checkpoints(p: Platform) -> None:
    async with p.db.write() as conn:
        await conn.execute(delete(audit_checkpoints))


async def grant(client, keys, email: str) -> None:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/consents",
        headers=keys["ingest"],
        json={
            "email": email,
            "purpose": "marketing",
            "channel": "email",
            "status": "granted",
            "source": "web_form",
            "evidence": {"wording_id": "w1", "method": "checkbox"},
        },
    )
    assert r.status_code == 201, r.text


async def test_a_checkpoint_signs_the_verified_head(platform, client, keys):
    await seed_ledger(client, keys)
    rows = await ledger_rows(platform)
    cp = await create_checkpoint(platform)
    assert cp is not None
    assert (cp.entries, cp.head_hash) == (6, rows[-1]["hash"])
    signer = signer_for(platform.settings)
    assert cp.public_key == signer.public_key and cp.key_id == signer.key_id
    Ed25519PublicKey.from_public_bytes(cp.public_key).verify(
        cp.signature, cp.statement().encode()
    )  # raises when it does not verify
    assert f"entries=6\nhead_hash={rows[-1]['hash'].hex()}\n" in cp.statement()
    assert (platform.settings.dev_key_dir / "audit_signing.key").exists()
    async with platform.db.read() as conn:
        assert await list_checkpoints(conn) == [cp]
    assert await create_checkpoint(platform, only_if_changed=True) is None
    await grant(client, keys, "new@example.com")
    again = await create_checkpoint(platform, only_if_changed=True)
    assert again is not None and again.entries == 7


async def test_an_empty_ledger_can_be_checkpointed(platform):
    cp = await create_checkpoint(platform)
    assert cp is not None and (cp.entries, cp.head_hash) == (0, GENESIS)
    async with platform.db.read() as conn:
        report = await verify_ledger(conn, [cp], policy=platform.policy)
    assert report.ok


async def test_no_checkpoint_is_signed_over_a_broken_chain(platform, client, keys):
    await seed_ledger(client, keys)
    await set_column(platform, 3, "status", "withdrawn")
    with pytest.raises(ChainBrokenError) as caught:
        await create_checkpoint(platform)
    assert caught.value.verification.first_invalid_seq == 3
    r = await client.post("/v1/audit/checkpoints", headers=keys["compliance"])
    assert r.status_code == 409
    assert "seq 3" in r.json()["detail"]
    async with platform.db.read() as conn:
        assert await list_checkpoints(conn) == []


async def test_a_later_checkpoint_rechecks_history_before_the_last_one(platform, client, keys):
    await seed_ledger(client, keys)
    await create_checkpoint(platform)
    await rewrite_from(platform, 2, status="withdrawn")
    await grant(client, keys, "new@example.com")
    with pytest.raises(ChainBrokenError):
        await create_checkpoint(platform)


async def test_a_consistent_rewrite_is_caught_by_an_exported_checkpoint(
    platform, client, keys, tmp_path
):
    await seed_ledger(client, keys)
    await create_checkpoint(platform)  # at 6 entries
    await grant(client, keys, "carl@example.com")
    await grant(client, keys, "dora@example.com")
    await create_checkpoint(platform)  # at 8 entries
    kept = tmp_path / "officer" / "checkpoints.jsonl"
    kept.parent.mkdir()
    assert await export_checkpoints(platform, kept) == (2, 0)

    await rewrite_from(platform, 7, status="withdrawn")
    await drop_stored_checkpoints(platform)  # the intruder also removes the stored ones
    assert (await verify(platform)).ok  # the chain alone cannot tell
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    body = r.json()  # the consent state still holds the grant the rewrite withdrew
    assert (body["ok"], body["first_invalid_seq"], body["state_mismatches"]) == (False, None, 1)
    assert body["state"]["examples"][0]["seq"] == 7
    async with platform.db.write() as conn:  # so the intruder rewrites the state as well
        await conn.execute(
            update(consent_state).where(consent_state.c.seq == 7).values(status="withdrawn")
        )
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    assert r.json()["ok"] is True  # now the database cannot tell: its checkpoints are gone

    async with platform.db.read() as conn:
        report = await verify_ledger(conn, read_checkpoint_file(kept), policy=platform.policy)
    assert not report.ok
    assert report.first_invalid_seq == 7
    assert [r.status for r in report.checkpoints] == ["ok", "mismatch"]
    assert "from seq 7 to 8 was changed" in (report.reason or "")


async def test_cutting_the_ledger_short_is_caught_by_a_checkpoint(platform, client, keys):
    await seed_ledger(client, keys)
    await create_checkpoint(platform)
    async with platform.db.write() as conn:
        await conn.execute(delete(consent_ledger).where(consent_ledger.c.seq >= 5))
    assert (await verify(platform)).ok
    r = await client.get("/v1/audit/verify", headers=keys["admin"])
    body = r.json()
    assert (body["ok"], body["entries"], body["first_invalid_seq"]) == (False, 4, 5)
    assert body["checkpoints"]["items"][0]["status"] == "truncated"


async def test_an_altered_stored_checkpoint_fails_verification(platform, client, keys):
    await seed_ledger(client, keys)
    await create_checkpoint(platform)
    async with platform.db.write() as conn:
        await conn.execute(update(audit_checkpoints).values(entries=5))
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    body = r.json()
    assert body["ok"] is False and body["first_invalid_seq"] is None
    assert body["checkpoints"]["items"][0]["status"] == "bad_signature"


async def test_a_checkpoint_planted_with_another_key_does_not_vouch(
    platform, client, keys, tmp_path
):
    await seed_ledger(client, keys)
    await create_checkpoint(platform)
    kept = tmp_path / "kept.jsonl"
    await export_checkpoints(platform, kept)
    await rewrite_from(platform, 3, status="withdrawn")
    await drop_stored_checkpoints(platform)
    intruder = AuditSigner(os.urandom(32))
    rows = await ledger_rows(platform)
    planted = sign_checkpoint(intruder, 6, rows[-1]["hash"], utcnow())
    async with platform.db.write() as conn:
        await conn.execute(insert(audit_checkpoints).values(**asdict(planted)))
    body = (await client.get("/v1/audit/verify", headers=keys["compliance"])).json()
    assert body["checkpoints"]["items"][0]["status"] == "untrusted_key"
    assert await export_checkpoints(platform, kept) == (0, 1)  # never copied to the file
    async with platform.db.read() as conn:
        report = await verify_ledger(conn, read_checkpoint_file(kept), policy=platform.policy)
    assert not report.ok and report.first_invalid_seq == 1


async def test_export_adds_new_checkpoints_and_never_drops_lines(platform, client, keys, tmp_path):
    await seed_ledger(client, keys)
    kept = tmp_path / "kept.jsonl"
    first = await create_checkpoint(platform)
    assert await export_checkpoints(platform, kept) == (1, 0)
    assert await export_checkpoints(platform, kept) == (0, 0)
    await grant(client, keys, "new@example.com")
    second = await create_checkpoint(platform)
    await drop_stored_checkpoints(platform)
    assert await export_checkpoints(platform, kept) == (0, 0)
    assert read_checkpoint_file(kept) == [first]
    async with platform.db.write() as conn:
        await conn.execute(insert(audit_checkpoints).values(**asdict(second)))
    assert await export_checkpoints(platform, kept) == (1, 0)
    lines = kept.read_text().splitlines()
    assert [json.loads(line)["entries"] for line in lines] == [6, 7]
    assert json.loads(lines[0])["statement"] == first.statement()


async def test_checkpoints_are_taken_periodically_when_the_ledger_grows(platform, client, keys):
    await seed_ledger(client, keys)

    async def stored() -> list[int]:
        async with platform.db.read() as conn:
            return [cp.entries for cp in await list_checkpoints(conn)]

    async def wait_for(entries: int) -> None:
        for _ in range(500):
            if entries in await stored():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"no checkpoint at {entries} entries")

    task = asyncio.create_task(checkpoint_periodically(platform, 0.01))
    try:
        await wait_for(6)
        await grant(client, keys, "new@example.com")
        await wait_for(7)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await stored() == [6, 7]  # nothing new while the ledger did not grow


def test_the_signing_key_comes_from_settings_or_a_dev_file(tmp_path):
    seed = os.urandom(32)
    configured = load_signer(
        base64.b64encode(seed).decode(), production=True, dev_dir=tmp_path / "unused"
    )
    assert configured.public_key == AuditSigner(seed).public_key
    assert not (tmp_path / "unused").exists()
    with pytest.raises(SigningKeyError):
        load_signer(None, production=True, dev_dir=tmp_path)
    with pytest.raises(SigningKeyError):
        load_signer("not base64!", production=False, dev_dir=tmp_path)
    dev = load_signer(None, production=False, dev_dir=tmp_path / "dev")
    path = tmp_path / "dev" / "audit_signing.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_signer(None, production=False, dev_dir=tmp_path / "dev").public_key == (
        dev.public_key
    )
    assert dev.public_key != configured.public_key


async def test_the_configured_key_is_separate_from_the_master_key(platform):
    seed = base64.b64encode(os.urandom(32)).decode()
    settings = replace(platform.settings, signing_key=seed)
    assert signer_for(settings).public_key == AuditSigner.from_base64(seed).public_key
    assert signer_for(settings).public_key != signer_for(platform.settings).public_key


def cli(p: Platform, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "CDP_DATABASE_URL": p.settings.database_url,
        "CDP_MASTER_KEY": TEST_MASTER_KEY,
        "CDP_DEV_KEY_DIR": str(p.settings.dev_key_dir),
    }
    env.pop("CDP_AUDIT_SIGNING_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "cdp.cli", "audit", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_the_cli_checkpoints_exports_and_verifies(platform, client, keys, tmp_path):
    await seed_ledger(client, keys)
    kept = tmp_path / "kept.jsonl"

    async def run(*args: str) -> subprocess.CompletedProcess:
        return await asyncio.to_thread(cli, platform, *args)

    made = await run("checkpoint")
    assert made.returncode == 0, made.stderr
    public_key = signer_for(platform.settings).public_key_b64
    assert made.stdout.splitlines()[-1] == public_key
    exported = await run("export-checkpoints", str(kept))
    assert exported.returncode == 0 and "added 1" in exported.stdout
    ok = await run("verify", "--checkpoints", str(kept), "--public-key", public_key)
    assert ok.returncode == 0, ok.stdout
    assert ok.stdout.startswith("ok: 6 entries")

    await rewrite_from(platform, 4, source="forged")
    await drop_stored_checkpoints(platform)
    plain = await run("verify")
    assert plain.returncode == 0  # the chain alone verifies
    caught = await run("verify", "--checkpoints", str(kept))
    assert caught.returncode == 1
    assert "FAILED at seq 1" in caught.stdout

    await set_column(platform, 5, "actor", "someone else")
    broken = await run("verify")
    assert broken.returncode == 1
    assert "FAILED at seq 5: hash mismatch" in broken.stdout
    refused = await run("checkpoint")
    assert refused.returncode == 1 and "seq 5" in refused.stdout
    async with platform.db.read() as conn:
        stored = await conn.execute(select(func.count()).select_from(audit_checkpoints))
        assert stored.scalar() == 0
