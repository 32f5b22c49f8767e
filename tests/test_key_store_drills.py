"""Restore drills and upgrades around the key store (cdp.key_store): what an operator does to a
running platform, and what must not become of the customers' data keys meanwhile."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import select, update

from cdp.db.tables import profile_keys
from cdp.key_store import xor
from cdp.keyring import _dek_context, split_whole_keys
from cdp.platform import Platform


async def create_profile(client, keys, name: str) -> uuid.UUID:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": f"{name}@example.com", "first_name": name},
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    return uuid.UUID(r.json()["profile_id"])


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
