"""The platform context: settings, database, policy and keys, opened once per process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from cdp.crypto.master import load_master_key
from cdp.db.engine import Database
from cdp.db.migrate import migrate
from cdp.key_store_open import open_key_store, required_key_store_url
from cdp.keyring import Keyring, open_keyring
from cdp.settings import Settings
from consent.policy import Policy, load_policy

# Batches of records one process works on at once; the others wait their turn without taking
# CPU, a connection or locks. Each batch's work is Python in the event loop (validation,
# normalisation, encryption) and a write transaction that takes an advisory lock per
# identifier on PostgreSQL (up to 3,000). With every batch at once, sixty clients posting
# batches held an opt-out's answer for 7-15 s (each step of it queued behind every batch's
# CPU, and on SQLite behind every batch's write), and on PostgreSQL filled the shared lock
# table (6,400 entries by default) so that most batches were refused with a 503. Two keep one
# batch's Python running while the other's transaction is in the database.
BATCH_LANES = 2


@dataclass(slots=True)
class Platform:
    settings: Settings
    db: Database
    policy: Policy
    keys: Keyring
    # POST /v1/profiles/batch requests doing their work at once (BATCH_LANES)
    batch_lanes: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(BATCH_LANES))

    async def close(self) -> None:
        self.keys.close()
        if self.keys.store is not None:
            await self.keys.store.close()
        await self.db.dispose()


async def open_platform(settings: Settings, *, run_migrations: bool = True) -> Platform:
    """Validate policies, migrate, open the key ring (refusing a wrong master key) and the key
    store (refusing one that is not the database's), and erase again whoever the key store
    says was erased after what the database knows of (a database restored from a backup)."""
    policy = load_policy(settings.policy_dir, settings.default_jurisdiction)
    master = load_master_key(
        settings.master_key, production=settings.is_production, dev_dir=settings.dev_key_dir
    )
    store_url = required_key_store_url(settings)  # production names it, before anything is touched
    db = Database(
        settings.database_url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        connect_timeout=settings.connect_timeout,
    )
    try:
        if run_migrations:
            await migrate(db)
        store = await open_key_store(
            db, store_url, settings.connect_timeout, pool_size=settings.key_store_pool_size
        )
    except BaseException:
        await db.dispose()
        raise
    try:
        keys = await open_keyring(db, master, store, **master_key_name(settings))
        platform = Platform(settings=settings, db=db, policy=policy, keys=keys)
        from consent.dsr.restore import erase_again  # consent builds on the platform

        await erase_again(platform)
    except BaseException:
        await store.close()
        await db.dispose()
        raise
    return platform


def master_key_name(settings: Settings) -> dict[str, str]:
    """How a refusal names the master key in use: the setting, or, where it is not set, the
    development key file (kept in `./.cdp` of the directory a command runs from, so a command
    run from another directory makes and uses a key of its own)."""
    if settings.master_key:
        return {"master_name": "CDP_MASTER_KEY"}
    path = settings.dev_key_dir / "master.key"
    return {
        "master_name": f"CDP_MASTER_KEY is not set, and the development master key {path}",
        "advice": "set CDP_MASTER_KEY to the database's key (the new one after `cdp keys "
        "rotate-master`), or CDP_DEV_KEY_DIR to the directory holding its development key "
        "(`.cdp` where it was first used)",
    }
