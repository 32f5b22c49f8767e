"""Erasure cleanup: an erased customer leaves no snapshot, suggestion or review behind."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, or_
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.matching.tables import match_suggestions, merge_reviews, merge_snapshots, reviews_naming
from consent.dsr.hooks import on_erasure


@on_erasure
async def forget_identity_reviews(conn: AsyncConnection, profile_ids: list[uuid.UUID]) -> None:
    for start in range(0, len(profile_ids), 500):
        chunk = profile_ids[start : start + 500]
        ms, sg = merge_snapshots.c, match_suggestions.c
        await conn.execute(
            delete(merge_snapshots).where(or_(ms.survivor_id.in_(chunk), ms.absorbed_id.in_(chunk)))
        )
        await conn.execute(
            delete(match_suggestions).where(or_(sg.profile_a.in_(chunk), sg.profile_b.in_(chunk)))
        )
        # also a review stored on another customer's profile that names hers: it can never be
        # accepted (410), and listed it named her erased profile as one of a doubtful merge
        await conn.execute(delete(merge_reviews).where(reviews_naming(chunk)))
