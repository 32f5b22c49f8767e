"""Identifier keys of a record: (kind, blind index, normalised plaintext)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import bindparam, select
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


# Statements built once: building one per call cost more than the driver's whole round trip.
_HOLDERS = select(identities.c.bidx, identities.c.profile_id).where(
    identities.c.bidx.in_(bindparam("bidxs", expanding=True))
)
_STATUSES = select(profiles.c.id, profiles.c.status, profiles.c.merged_into).where(
    profiles.c.id.in_(bindparam("ids", expanding=True))
)


async def lookup_bidx(conn: AsyncConnection, bidxs: list[bytes]) -> dict[bytes, uuid.UUID]:
    found: dict[bytes, uuid.UUID] = {}
    for start in range(0, len(bidxs), 500):
        rows = await conn.execute(_HOLDERS, {"bidxs": bidxs[start : start + 500]})
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
            found = await conn.execute(_STATUSES, {"ids": batch[start : start + 500]})
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
