"""The platform context: settings, database, policy and keys, opened once per process."""

from __future__ import annotations

from dataclasses import dataclass

from cdp.crypto.master import load_master_key
from cdp.db.engine import Database
from cdp.db.migrate import migrate
from cdp.keyring import Keyring, open_keyring
from cdp.settings import Settings
from consent.policy import Policy, load_policy


@dataclass(slots=True)
class Platform:
    settings: Settings
    db: Database
    policy: Policy
    keys: Keyring

    async def close(self) -> None:
        await self.db.dispose()


async def open_platform(settings: Settings, *, run_migrations: bool = True) -> Platform:
    """Validate policies, migrate, and open the key ring (refusing a wrong master key)."""
    policy = load_policy(settings.policy_dir, settings.default_jurisdiction)
    master = load_master_key(
        settings.master_key, production=settings.is_production, dev_dir=settings.dev_key_dir
    )
    db = Database(
        settings.database_url, pool_size=settings.pool_size, max_overflow=settings.max_overflow
    )
    try:
        if run_migrations:
            await migrate(db)
        keys = await open_keyring(db, master)
    except BaseException:
        await db.dispose()
        raise
    return Platform(settings=settings, db=db, policy=policy, keys=keys)
