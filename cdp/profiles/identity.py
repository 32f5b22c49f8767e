"""Identifier keys of a record: (kind, blind index, normalised plaintext)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.blind_index import BlindIndexer
from cdp.db.tables import identities, profiles
from cdp.errors import Gone, NotFound


@dataclass(frozen=True, slots=True)
class IdentityKey:
    kind: str  # email | phone | external_id
    bidx: bytes
    value: str  # normalised plaintext, held only in memory
    source: str


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
    found = (await resolve_profile_ids(conn, {profile_id}))[profile_id]
    if isinstance(found, Exception):
        raise found
    return found


async def resolve_profile_ids(
    conn: AsyncConnection, ids: set[uuid.UUID]
) -> dict[uuid.UUID, uuid.UUID | Exception]:
    """`resolve_profile_id` for many ids: one query per step along merge chains."""
    rows: dict[uuid.UUID, tuple[str, uuid.UUID | None]] = {}
    wanted = set(ids)
    while wanted:
        batch = sorted(wanted)
        wanted = set()
        for start in range(0, len(batch), 500):
            found = await conn.execute(
                select(profiles.c.id, profiles.c.status, profiles.c.merged_into).where(
                    profiles.c.id.in_(batch[start : start + 500])
                )
            )
            for pid, status, merged_into in found:
                rows[pid] = (status, merged_into)
                if status == "merged" and merged_into is not None and merged_into not in rows:
                    wanted.add(merged_into)
    out: dict[uuid.UUID, uuid.UUID | Exception] = {}
    for start_id in ids:
        seen: set[uuid.UUID] = set()
        current = start_id
        while True:
            row = rows.get(current)
            if row is None:
                out[start_id] = NotFound("no profile with this id")
                break
            status, merged_into = row
            if status == "erased":
                out[start_id] = Gone("this profile was erased")
                break
            if status == "merged" and merged_into is not None and merged_into not in seen:
                seen.add(current)
                current = merged_into
                continue
            out[start_id] = current
            break
    return out
