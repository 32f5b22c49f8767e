"""The access log: who read or exported personal data, when, and how much."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.apikeys import Principal
from cdp.db.tables import access_log
from cdp.ids import new_id, utcnow


async def log_access(
    conn: AsyncConnection,
    who: Principal,
    action: str,
    *,
    object_type: str,
    object_id: str | None = None,
    profile_id: uuid.UUID | None = None,
    rows: int = 1,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        insert(access_log).values(
            id=new_id(),
            at=utcnow(),
            actor=who.name,
            role=who.role,
            action=action,
            object_type=object_type,
            object_id=object_id,
            profile_id=profile_id,
            rows=rows,
            detail=detail,
        )
    )
