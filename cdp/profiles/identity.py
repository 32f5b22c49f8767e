"""Identifier keys of a record: (kind, blind index, normalised plaintext)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.blind_index import BlindIndexer
from cdp.db.tables import identities, profiles
from cdp.errors import Gone, NotFound
from cdp.profiles.wire import by_fields


@dataclass(frozen=True, slots=True)
class IdentityKey:
    kind: str  # email | phone | external_id
    bidx: bytes
    value: str  # normalised plaintext, held only in memory
    source: str

    __reduce__ = by_fields  # import workers send many


def record_keys(indexer: BlindIndexer, rec) -> list[IdentityKey]:  # type: ignore[no-untyped-def]
    keys: list[IdentityKey] = []
    if rec.email:
        keys.append(IdentityKey("email", indexer.email(rec.email), rec.email, rec.source))
    if rec.phone:
        keys.append(IdentityKey("phone", indexer.phone(rec.phone), rec.phone, rec.source))
    if rec.external_id:
        keys.append(
            IdentityKey(
                "external_id",
                indexer.external_id(rec.source, rec.external_id),
                rec.external_id,
                rec.source,
            )
        )
    return keys


async def lookup_bidx(conn: AsyncConnection, bidxs: list[bytes]) -> dict[bytes, uuid.UUID]:
    found: dict[bytes, uuid.UUID] = {}
    for start in range(0, len(bidxs), 500):
        chunk = bidxs[start : start + 500]
        rows = await conn.execute(
            select(identities.c.bidx, identities.c.profile_id).where(identities.c.bidx.in_(chunk))
        )
        found.update({bidx: pid for bidx, pid in rows})
    return found


async def resolve_profile_id(conn: AsyncConnection, profile_id: uuid.UUID) -> uuid.UUID:
    """Follow merges to the surviving profile. Unknown: NotFound; erased: Gone."""
    seen: set[uuid.UUID] = set()
    current = profile_id
    while True:
        row = (
            await conn.execute(
                select(profiles.c.status, profiles.c.merged_into).where(profiles.c.id == current)
            )
        ).first()
        if row is None:
            raise NotFound("no profile with this id")
        status, merged_into = row
        if status == "erased":
            raise Gone("this profile was erased")
        if status == "merged" and merged_into is not None and merged_into not in seen:
            seen.add(current)
            current = merged_into
            continue
        return current
