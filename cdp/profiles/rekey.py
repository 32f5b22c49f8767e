"""A new data key for the holder of an undone merge.

While a merge stood, what was recorded for the absorbed customer was encrypted under the
holder's data key: the evidence of her consents (in the ledger, whose entries never change: the
hash covers the ciphertext), merge snapshots of later merges, and every copy of the database
taken meanwhile. The unmerge gives her data back under her own key, but her erasure destroys
only her key, and the holder's would still read what stayed under it.

So the unmerge gives the holder a new key (`rekey`), in its transaction:
- everything the holder has under the old key is encrypted again under the new one: its fields,
  identifiers, events, merge snapshots and request notes (an officer's reasons, which the
  request history's hashes cover, get a copy under it instead); its own consent evidence gets a copy
  under the new key (consent.evidence.rekey), the evidence of the customer given back does not;
- the old key's share stays in the key store, so that a backup taken before the unmerge can
  still be restored, until the holder or any customer ever merged into it is erased: then it is
  destroyed with them (`key_share_owners`, consent.dsr.shares). The new key's share goes with
  the holder.

A reader holding the old key finds the profile's key row changed and reads it again
(cdp.keyring.Keyring.ciphers compares key ids); writers hold the profile's lock.
"""

from __future__ import annotations

import uuid

import structlog
from sqlalchemy import Column, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from cdp.crypto.fields import FieldCipher
from cdp.db.tables import (
    ENCRYPTED_PROFILE_FIELDS,
    events,
    identities,
    key_share_owners,
    merges,
    profiles,
)
from cdp.db.upsert import insert_ignore
from cdp.event_ids import reseal_statement, resealed
from cdp.ids import utcnow
from cdp.key_store import share_id
from cdp.matching.tables import merge_snapshots
from cdp.platform import Platform
from cdp.profiles.merge import SURVIVOR_PLACE
from consent import evidence
from consent.dsr.requests import NOTE_PLACE, rekey_reasons
from consent.dsr_tables import dsr_requests

log = structlog.get_logger(__name__)

_CHUNK = 500


async def rekey(
    conn: AsyncConnection,
    p: Platform,
    holder: uuid.UUID,
    old: FieldCipher,
    *,
    merged_since: int,
) -> FieldCipher:
    """Give `holder` (locked by the caller) a new data key and encrypt what it has under `old`
    again under it; returns the new key's cipher. `merged_since`: the ledger's head when the
    undone merge was made (consent given on the profile itself after it may have been the
    other customer's: its evidence is not copied)."""
    new, old_split = await p.keys.next_key(conn, holder, old)
    await _profile(conn, holder, old, new)
    addresses = await _identities(conn, holder, old, new)
    await _events(conn, holder, old, new)
    await _snapshots(conn, holder, old, new)
    await _notes(conn, holder, old, new)
    await rekey_reasons(conn, holder, old, new)  # copies: the sealed reasons are hashed
    copied = await evidence.rekey(conn, holder, addresses, old, new, merged_since)
    await _owners(conn, holder, old.key_id if old_split else None, new.key_id)
    log.info("data_key_replaced", profile_id=str(holder), key_id=new.key_id, evidence=copied)
    return new


async def _profile(
    conn: AsyncConnection, holder: uuid.UUID, old: FieldCipher, new: FieldCipher
) -> None:
    row = (
        await conn.execute(
            select(*(profiles.c[name] for name in ENCRYPTED_PROFILE_FIELDS)).where(
                profiles.c.id == holder
            )
        )
    ).one()
    values = {
        name: None
        if blob is None
        else new.encrypt(f"profiles.{name}", old.decrypt_bytes(f"profiles.{name}", blob))
        for name, blob in zip(ENCRYPTED_PROFILE_FIELDS, row, strict=True)
    }
    await conn.execute(
        update(profiles).where(profiles.c.id == holder).values(key_id=new.key_id, **values)
    )


async def _identities(
    conn: AsyncConnection, holder: uuid.UUID, old: FieldCipher, new: FieldCipher
) -> list[bytes]:
    """Encrypt the holder's identifiers again; returns the blind indexes of its addresses."""
    ic = identities.c
    rows = (
        await conn.execute(select(ic.id, ic.kind, ic.bidx, ic.value).where(ic.profile_id == holder))
    ).all()
    place = "identities.value"
    if rows:
        await conn.execute(
            update(identities).where(ic.id == bindparam("iid")).values(value=bindparam("v")),
            [
                {"iid": r.id, "v": new.encrypt(place, old.decrypt_bytes(place, r.value))}
                for r in rows
            ],
        )
    return [r.bidx for r in rows if r.kind in ("email", "phone")]


async def _events(
    conn: AsyncConnection, holder: uuid.UUID, old: FieldCipher, new: FieldCipher
) -> None:
    ec = events.c
    ids = list(
        (
            await conn.execute(
                select(ec.id).where(ec.profile_id == holder, ec.key_id == old.key_id)
            )
        ).scalars()
    )
    for start in range(0, len(ids), _CHUNK):
        rows = await conn.execute(
            select(ec.id, ec.properties, ec.event_ref).where(ec.id.in_(ids[start : start + _CHUNK]))
        )
        sealed = resealed(rows, old, new)
        if sealed:
            await conn.execute(reseal_statement(new), sealed)


async def _snapshots(
    conn: AsyncConnection, holder: uuid.UUID, old: FieldCipher, new: FieldCipher
) -> None:
    """What later merges into the holder changed on it (merge snapshots, under its key)."""
    sc = merge_snapshots.c
    where = (sc.survivor_id == holder,)
    await _again(
        conn, sc.merge_id, sc.survivor_state, sc.survivor_key_id, SURVIVOR_PLACE, where, old, new
    )


async def _notes(
    conn: AsyncConnection, holder: uuid.UUID, old: FieldCipher, new: FieldCipher
) -> None:
    """Notes of requests about the holder (consent.dsr.requests), under its key."""
    dc = dsr_requests.c
    where = (dc.note_owner == holder, dc.note.is_not(None))
    await _again(conn, dc.id, dc.note, dc.note_key_id, NOTE_PLACE, where, old, new)


async def _again(
    conn: AsyncConnection,
    key: Column,
    blob: Column,
    key_id: Column,
    place: str,
    where: tuple[ColumnElement[bool], ...],
    old: FieldCipher,
    new: FieldCipher,
) -> None:
    """Encrypt `blob` again under `new` in the rows `where` selects that are under `old`, and
    record the new key id: one column, whose place does not depend on the row."""
    rows = await conn.execute(select(key, blob).where(key_id == old.key_id, *where))
    again = [{"k": k, "b": new.encrypt(place, old.decrypt_bytes(place, b))} for k, b in rows]
    if again:
        await conn.execute(
            update(key.table)
            .where(key == bindparam("k"))
            .values({blob.name: bindparam("b"), key_id.name: new.key_id}),
            again,
        )


async def _owners(
    conn: AsyncConnection, holder: uuid.UUID, old_key_id: int | None, new_key_id: int
) -> None:
    """Who destroys the shares: the new key's with the holder; the old key's (None: it was
    stored whole, with no share to destroy) with the holder and with every customer ever
    merged into it."""
    now = utcnow()
    rows = [{"share_id": share_id(holder, new_key_id), "profile_id": holder, "created_at": now}]
    if old_key_id is not None:
        old = share_id(holder, old_key_id)
        rows += [
            {"share_id": old, "profile_id": pid, "created_at": now}
            for pid in sorted(await _ever_merged_into(conn, holder) | {holder})
        ]
    await conn.execute(insert_ignore(conn, key_share_owners), rows)


async def _ever_merged_into(conn: AsyncConnection, holder: uuid.UUID) -> set[uuid.UUID]:
    """Every profile merged into the holder at any time, directly or through another, whether
    the merge stands or was undone."""
    mc = merges.c
    found: set[uuid.UUID] = set()
    frontier = {holder}
    while frontier:
        absorbed: set[uuid.UUID] = set()
        batch = sorted(frontier)
        for start in range(0, len(batch), _CHUNK):
            absorbed |= set(
                (
                    await conn.execute(
                        select(mc.absorbed_id).where(
                            mc.survivor_id.in_(batch[start : start + _CHUNK])
                        )
                    )
                ).scalars()
            )
        frontier = absorbed - found - {holder}
        found |= frontier
    return found
