"""What every `cdp` command shares: running a coroutine on a platform opened from the
environment, and turning a domain error (bad input, a conflict, an unreadable file) into a
one-line error and exit status 1, as click does for bad options, instead of a traceback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from cdp.errors import DomainError
from cdp.settings import Settings

T = TypeVar("T")


def failure(exc: DomainError) -> click.ClickException:
    fields = "; ".join(f"{e.field}: {e.message}" for e in exc.errors)
    return click.ClickException(fields or exc.detail)


def run(factory: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(factory())  # type: ignore[arg-type]
    except DomainError as exc:
        raise failure(exc) from None


async def with_platform(fn: Callable[[Any], Awaitable[T]], migrate: bool = True) -> T:
    from cdp.platform import open_platform

    platform = await open_platform(Settings.from_env(), run_migrations=migrate)
    try:
        return await fn(platform)
    finally:
        await platform.close()


def run_on_platform(fn: Callable[[Any], Awaitable[T]]) -> T:
    return run(lambda: with_platform(fn))
