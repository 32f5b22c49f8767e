"""Merges the guards refused: listed with their reason, and decided by a reviewer."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.engine import lock_keys
from cdp.errors import Conflict, NotFound
from cdp.ids import parse_uuid, utcnow
from cdp.matching.decisions import Merged, merge_reviewed
from cdp.matching.tables import merge_reviews
from cdp.platform import Platform

STATUSES = ("open", "accepted", "rejected")


def review_body(row: Any) -> dict[str, Any]:
    return {
        "review_id": str(row.id),
        "status": row.status,
        "reason": row.reason,
        "profile_ids": row.profile_ids,
        "attached_to": str(row.attached_to),
        "matched_on": row.matched_on,
        "source": row.source,
        "created_at": row.created_at,
        "decided_at": row.decided_at,
        "decided_by": row.decided_by,  # the API key's name
    }


async def _open(conn: AsyncConnection, review_id: str) -> Any:
    rid = parse_uuid(review_id)
    row = None
    if rid is not None:
        await lock_keys(conn, [f"review|{rid}"])
        row = (await conn.execute(select(merge_reviews).where(merge_reviews.c.id == rid))).first()
    if row is None:
        raise NotFound("no merge review with this id")
    if row.status != "open":
        raise Conflict(f"this review is already {row.status}")
    return row


async def _decide(conn: AsyncConnection, rid: uuid.UUID, status: str, actor: str) -> Any:
    await conn.execute(
        update(merge_reviews)
        .where(merge_reviews.c.id == rid)
        .values(status=status, decided_at=utcnow(), decided_by=actor)
    )
    return (await conn.execute(select(merge_reviews).where(merge_reviews.c.id == rid))).one()


async def accept(p: Platform, review_id: str, actor: str) -> tuple[Any, Merged]:
    """The reviewer overrides the guard: the profiles merge, provenance "reviewed"."""
    async with p.db.write() as conn:
        row = await _open(conn, review_id)
        merged = await merge_reviewed(
            conn,
            p,
            [uuid.UUID(pid) for pid in row.profile_ids],
            matched_on=list(row.matched_on),
            source=f"review:{row.id}",
            actor=actor,
        )
        return await _decide(conn, row.id, "accepted", actor), merged


async def reject(p: Platform, review_id: str, actor: str) -> Any:
    """The profiles stay apart."""
    async with p.db.write() as conn:
        row = await _open(conn, review_id)
        return await _decide(conn, row.id, "rejected", actor)
