"""Extension point: other modules that keep per-profile data register a cleanup here.

A hook runs inside the erasure's write transaction, after the core tables are erased and before
the request is marked completed, with the ids of every profile of the customer:

    from consent.dsr.hooks import on_erasure

    @on_erasure
    async def forget_match_suggestions(conn, profile_ids): ...

It must be idempotent (a restarted erasure runs it again) and must not commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncConnection

ErasureHook = Callable[[AsyncConnection, list[uuid.UUID]], Awaitable[object]]
_HOOKS: list[ErasureHook] = []


def on_erasure(hook: ErasureHook) -> ErasureHook:
    if hook not in _HOOKS:
        _HOOKS.append(hook)
    return hook


def erasure_hooks() -> list[ErasureHook]:
    return list(_HOOKS)
