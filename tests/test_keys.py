"""Master key, data keys and field ciphertext binding."""

from __future__ import annotations

import asyncio
import gc
import uuid

import pytest
import structlog
from sqlalchemy import select, update

from cdp.crypto.fields import CryptoError, FieldCipher
from cdp.crypto.master import MasterKey, WrongMasterKeyError
from cdp.db.tables import keyring as keyring_table
from cdp.db.tables import profile_keys, profiles
from cdp.errors import InvalidInput
from cdp.keyring import Keyring, rotate_master_key
from cdp.platform import open_platform
from cdp.profiles.service import profile_view, upsert_one
from tests.conftest import make_settings


def test_ciphertext_is_bound_to_its_place_and_owner():
    key = bytes(range(32))
    a = FieldCipher(key, 1, "profile-a")
    blob = a.encrypt("profiles.first_name", "Анна")
    assert a.decrypt("profiles.first_name", blob) == "Анна"
    with pytest.raises(CryptoError):
        a.decrypt("profiles.last_name", blob)  # moved to another column
    with pytest.raises(CryptoError):
        FieldCipher(key, 1, "profile-b").decrypt("profiles.first_name", blob)  # another row
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(CryptoError):
        a.decrypt("profiles.first_name", tampered)
    assert blob[0] == 1 and int.from_bytes(blob[1:5], "big") == 1  # version and key id
    assert a.encrypt("profiles.first_name", "Анна") != blob  # random nonce


async def test_wrong_master_key_is_refused(platform, tmp_path):
    await upsert_one(platform, {"source": "crm", "email": "a@example.com"}, "t")
    other = MasterKey.generate_base64()
    with pytest.raises(WrongMasterKeyError, match="does not match this database"):
        await open_platform(
            make_settings(platform.settings.database_url, tmp_path, master_key=other),
            run_migrations=False,
        )


async def test_rotating_the_master_key_rewraps_keys_without_touching_fields(platform, tmp_path):
    o = await upsert_one(
        platform, {"source": "crm", "email": "rot@example.com", "first_name": "Пётр"}, "t"
    )
    async with platform.db.read() as conn:
        before = (await conn.execute(select(profiles.c.first_name))).scalar_one()
    new_text = MasterKey.generate_base64()
    rewrapped = await rotate_master_key(
        platform.db, platform.keys.master, MasterKey.from_base64(new_text)
    )
    assert rewrapped == 1
    async with platform.db.read() as conn:
        assert (await conn.execute(select(profiles.c.first_name))).scalar_one() == before
    with pytest.raises(WrongMasterKeyError):
        await open_platform(
            make_settings(platform.settings.database_url, tmp_path), run_migrations=False
        )
    rotated = await open_platform(
        make_settings(platform.settings.database_url, tmp_path, master_key=new_text),
        run_migrations=False,
    )
    try:
        async with rotated.db.read() as conn:
            view = await profile_view(conn, rotated, o.profile_id)
        assert view["first_name"] == "Пётр"
        # blind indexes survive rotation: the same email still finds the profile
        again = await upsert_one(rotated, {"source": "shop", "email": "ROT@example.com"}, "t")
        assert again.profile_id == o.profile_id and not again.created
    finally:
        await rotated.close()


async def test_a_service_still_on_the_old_master_key_stores_no_key_after_a_rotation(
    platform, client, keys, tmp_path
):
    """`cdp keys rotate-master` while a service runs: the service (here `platform`, still on
    the old key) must not store data keys the new key cannot unwrap; a rotation run again
    finishes any key left under the old one."""
    await upsert_one(platform, {"source": "crm", "email": "before@example.com"}, "t")
    new_text = MasterKey.generate_base64()
    new = MasterKey.from_base64(new_text)
    assert await rotate_master_key(platform.db, platform.keys.master, new) == 1
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "after@example.com"},
        headers=keys["ingest"],
    )
    assert r.status_code == 503 and "restart the service" in r.json()["detail"]
    # a key some process stored under the old key anyway: the rotation, run again, re-wraps it
    stray = uuid.uuid4()
    _, row = platform.keys.new_profile_key(stray)
    await platform.keys.store_shares([(stray, row.pop("share"))])
    async with platform.db.write() as conn:
        await conn.execute(profile_keys.insert().values(row))
    assert await rotate_master_key(platform.db, platform.keys.master, new) == 1
    assert await rotate_master_key(platform.db, platform.keys.master, new) == 0
    rotated = await open_platform(
        make_settings(platform.settings.database_url, tmp_path, master_key=new_text),
        run_migrations=False,
    )
    try:
        async with rotated.db.read() as conn:
            assert stray in await rotated.keys.ciphers(conn, [stray])
        after = await upsert_one(rotated, {"source": "crm", "email": "after@example.com"}, "t")
        assert after.created
    finally:
        await rotated.close()


async def test_a_ciphertext_copied_to_another_row_does_not_decrypt(platform):
    a = await upsert_one(
        platform, {"source": "crm", "email": "a@example.com", "first_name": "Alice"}, "t"
    )
    b = await upsert_one(
        platform, {"source": "crm", "email": "b@example.com", "first_name": "Bob"}, "t"
    )
    async with platform.db.write() as conn:
        blob = (
            await conn.execute(select(profiles.c.first_name).where(profiles.c.id == a.profile_id))
        ).scalar_one()
        await conn.execute(
            update(profiles).where(profiles.c.id == b.profile_id).values(first_name=blob)
        )
    async with platform.db.read() as conn:
        with pytest.raises(CryptoError):
            await profile_view(conn, platform, b.profile_id)


def test_cached_data_keys_open_fields_and_stay_out_of_the_garbage_collectors_way():
    """A segment export unwraps a data key per member and the key ring caches up to 200,000 of
    them: the cache holds atoms only, which the collector stops tracking, so no collection has
    to walk it (when it held cipher objects, that walking was a third of an export's CPU)."""
    ring = Keyring(MasterKey(bytes(32)), {"index_root": bytes(32), "system_key": bytes(range(32))})
    made = [ring.new_profile_key(uuid.uuid4()) for _ in range(50)]
    blobs = [cipher.encrypt("profiles.first_name", "Анна") for cipher, _ in made]
    gc.collect()
    assert not any(gc.is_tracked(entry) for entry in ring._keys.values())
    for (_, row), blob in zip(made, blobs, strict=True):
        cached = ring.cipher_from_row(row["profile_id"], row["key_id"], b"not used: cached")
        assert cached.decrypt("profiles.first_name", blob) == "Анна"
        ring.forget(row["profile_id"])
        fresh = ring.cipher_from_row(row["profile_id"], row["key_id"], row["wrapped"], row["share"])
        assert fresh.decrypt("profiles.first_name", blob) == "Анна"


async def test_the_cli_rotation_can_be_run_again_to_finish(platform, tmp_path, backend):
    from tests.test_import import run_cli

    if backend != "sqlite":
        return
    await upsert_one(platform, {"source": "crm", "email": "cli@example.com"}, "t")
    old = platform.settings.master_key or ""
    new = MasterKey.generate_base64()
    env = {"CDP_MASTER_KEY": old, "CDP_NEW_MASTER_KEY": new}
    db = platform.settings.database_url
    first = run_cli(["keys", "rotate-master"], db, tmp_path, **env)
    assert first.returncode == 0 and "re-wrapped 1 data keys" in first.stdout
    again = run_cli(["keys", "rotate-master"], db, tmp_path, **env)
    assert again.returncode == 0 and "re-wrapped 0 data keys" in again.stdout
    wrong = run_cli(
        ["keys", "rotate-master"],
        db,
        tmp_path,
        CDP_MASTER_KEY=MasterKey.generate_base64(),
        CDP_NEW_MASTER_KEY=MasterKey.generate_base64(),
    )
    assert wrong.returncode == 1 and "does not match this database" in wrong.stderr


async def test_rotating_to_the_key_in_use_is_refused_and_changes_nothing(platform):
    """The new key pasted where the old one was: the rotation used to re-wrap the same keys
    again and again, in one transaction that never ended."""
    await upsert_one(platform, {"source": "crm", "email": "same@example.com"}, "t")
    same = platform.keys.master
    with pytest.raises(InvalidInput, match="in use"):
        await asyncio.wait_for(rotate_master_key(platform.db, same, same), timeout=60)


async def test_a_moved_ciphertext_or_data_key_fails_closed_naming_the_profile(
    platform, client, keys
):
    """With database access, copy one customer's data key or name over another's: reading
    answers 500 with nothing of either customer, and the log names the profile whose data no
    longer opens and what failed (ids only), so an operator can find the row. Before, the log
    said only `WrongMasterKeyError` (the master key passed its check at start-up) or
    `CryptoError`, naming no profile."""
    made = {}
    for name in ("alice", "bob", "carol"):
        record = {"source": "crm", "email": f"{name}@example.com", "first_name": name.title()}
        made[name] = (await upsert_one(platform, record, "t")).profile_id
    alice, bob, carol = made["alice"], made["bob"], made["carol"]
    async with platform.db.write() as conn:
        wrapped = select(profile_keys.c.wrapped).where(profile_keys.c.profile_id == alice)
        await conn.execute(
            update(profile_keys)
            .where(profile_keys.c.profile_id == bob)
            .values(wrapped=(await conn.execute(wrapped)).scalar_one())
        )
        name = select(profiles.c.first_name).where(profiles.c.id == alice)
        await conn.execute(
            update(profiles)
            .where(profiles.c.id == carol)
            .values(first_name=(await conn.execute(name)).scalar_one())
        )
    platform.keys._keys.clear()  # as another process would read it
    for pid, says in ((bob, "data key"), (carol, "profiles.first_name")):
        with structlog.testing.capture_logs() as logged:
            r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
        assert r.status_code == 500
        assert "Alice" not in r.text and "Bob" not in r.text and "Carol" not in r.text
        errors = [e for e in logged if e["log_level"] == "error"]
        assert len(errors) == 1, logged
        text = repr(errors[0])
        assert str(pid) in text and says in text, text
        assert "WrongMasterKey" not in text
        assert not any(n in text.lower() for n in ("alice", "bob", "carol", "example.com"))


async def test_a_rotation_that_meets_an_altered_data_key_names_its_profile_and_rotates_nothing(
    platform, tmp_path, backend
):
    """One row of profile_keys altered (or copied from another profile): the rotation stops
    and rolls back, naming that profile and key id, not saying that CDP_MASTER_KEY, which opens
    the key ring and every other key, does not open this database's keys."""
    from tests.test_import import run_cli

    made = []
    for name in ("ann", "ben"):
        record = {"source": "crm", "email": f"{name}@example.com", "first_name": name.title()}
        made.append((await upsert_one(platform, record, "t")).profile_id)
    ann, ben = made
    async with platform.db.write() as conn:
        wrapped = select(profile_keys.c.wrapped).where(profile_keys.c.profile_id == ann)
        await conn.execute(
            update(profile_keys)
            .where(profile_keys.c.profile_id == ben)
            .values(wrapped=(await conn.execute(wrapped)).scalar_one())
        )
    new = MasterKey.generate_base64()
    if backend == "sqlite":  # the command once (it runs the same function on either database)
        env = {"CDP_MASTER_KEY": platform.settings.master_key or "", "CDP_NEW_MASTER_KEY": new}
        r = run_cli(["keys", "rotate-master"], platform.settings.database_url, tmp_path, **env)
        assert r.returncode == 1
        said = r.stderr
        assert "ann@example.com" not in said and "Traceback" not in said
    else:
        with pytest.raises(CryptoError) as err:
            await rotate_master_key(platform.db, platform.keys.master, MasterKey.from_base64(new))
        said = str(err.value)
    assert f"data key of profile {ben} (key id 1)" in said, said
    assert "Nothing was rotated" in said and "does not match" not in said
    async with platform.db.read() as conn:
        held = set((await conn.execute(select(profile_keys.c.master_key_id))).scalars())
        ring = set((await conn.execute(select(keyring_table.c.master_key_id))).scalars())
    assert held == ring == {platform.keys.master.key_id}  # rolled back: the service reads on
