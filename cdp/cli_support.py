"""What every `cdp` command shares: running a coroutine on a platform opened from the
environment, and turning a domain error (bad input, a conflict, an unreadable file) or an
operator's setting that cannot work (a wrong or malformed master key, a missing or invalid
policy file, a database that cannot be opened, or one migrated by a newer release) or a
database error midway into a one-line error and exit status 1, as click does for bad options,
instead of a traceback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import click
from sqlalchemy.exc import DBAPIError

from cdp.crypto.fields import CryptoError
from cdp.db.availability import KeyStoreDown
from cdp.db.engine import Database
from cdp.db.messages import database_message
from cdp.db.migrate import SchemaFromNewerRelease
from cdp.errors import DomainError
from cdp.settings import Settings
from consent.policy import PolicyError, load_policy

T = TypeVar("T")


def failure(exc: DomainError) -> click.ClickException:
    fields = "; ".join(f"{e.field}: {e.message}" for e in exc.errors)
    return click.ClickException(fields or exc.detail)


def run(factory: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(factory())  # type: ignore[arg-type]
    except DomainError as exc:
        raise failure(exc) from None
    except (CryptoError, PolicyError, SchemaFromNewerRelease) as exc:
        # their messages name the setting, the file, or the release the database needs
        raise click.ClickException(str(exc)) from None
    except KeyStoreDown as exc:  # names CDP_KEY_STORE_URL
        raise click.ClickException(str(exc)) from None
    except DBAPIError as exc:  # a write refused, the connection lost: its first line only
        raise click.ClickException(f"the database failed: {database_message(exc)}") from None


@contextlib.asynccontextmanager
async def opening_database() -> AsyncIterator[None]:
    """Around the first use of the database: one that cannot be reached or opened (a wrong
    host, port, name or role, a directory that does not exist) is said in one line."""
    try:
        yield
    except (DBAPIError, ConnectionError, TimeoutError, socket.gaierror) as exc:
        await _settle_driver_threads()
        raise click.ClickException(f"cannot open the database ({database_message(exc)})") from None


async def _settle_driver_threads() -> None:
    """aiosqlite stops the thread of a connection that failed to open without awaiting it; if
    the event loop closes first, that thread prints a traceback of its own. Let it finish (it
    takes a moment; bounded at a second)."""
    for _ in range(100):
        if threading.active_count() == 1:
            return
        await asyncio.sleep(0.01)


async def migrate_database(db: Database, settings: Settings) -> None:
    """`cdp migrate` and the key rotation: the policy is checked first, as `cdp serve` does
    (a migration reads it: 0004 the stats currency), and production's key store setting, as
    every command does (`required_key_store_url`): an upgrade refused there touches no schema."""
    from cdp.db.migrate import migrate
    from cdp.key_store_open import required_key_store_url

    load_policy(settings.policy_dir, settings.default_jurisdiction)
    required_key_store_url(settings)
    async with opening_database():
        await migrate(db)


async def with_platform(fn: Callable[[Any], Awaitable[T]], migrate: bool = True) -> T:
    from cdp.platform import open_platform

    async with opening_database():
        platform = await open_platform(Settings.from_env(), run_migrations=migrate)
    try:
        return await fn(platform)
    finally:
        await platform.close()


def run_on_platform(fn: Callable[[Any], Awaitable[T]]) -> T:
    return run(lambda: with_platform(fn))
