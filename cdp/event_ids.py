"""Sealed event ids: the sender's id of an event is never stored in plain text.

`POST /v1/events` is idempotent on (source, event_id), and senders build event ids from what
they have at hand: `o-{email}`, `{phone}-2026-11-01`. Stored as sent, such an id kept an email
in plain text beside the customer's encrypted fields, and in every backup after an erasure.
An event row keeps instead:
- `event_key`: the blind index of (source, event id), unique per source: what idempotency
  compares (equality is all it reveals, as for identifiers; `cdp.crypto.blind_index`);
- `event_ref`: the id encrypted under the profile's data key, for the customer's access
  request; an erasure deletes the row and destroys the key.
Rows recorded before migration 0012 keep their plain `event_id` until `cdp events seal`
(`seal_plain_ids`) seals them; meanwhile a repeated event still finds them by their plain id
(`cdp.events.store_events`).
A merge or an unmerge that moves events re-encrypts both ciphertexts (`resealed`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import structlog
from sqlalchemy import bindparam, select, update

from cdp.crypto.blind_index import BlindIndexer
from cdp.crypto.fields import CryptoError, FieldCipher
from cdp.db.engine import Database, overwrite_deleted
from cdp.db.tables import events
from cdp.keyring import Keyring
from cdp.profiles.locks import lock_profiles

log = structlog.get_logger(__name__)

PLACE = "events.event_ref"
PROPERTIES = "events.properties"
_BATCH = 500


def event_key(indexer: BlindIndexer, source: str, event_id: str) -> bytes:
    return indexer.index("event", f"{source}\x1f{event_id}")


def seal(cipher: FieldCipher, event_id: str) -> bytes:
    return cipher.encrypt(PLACE, event_id)


def opened(row: Any, cipher: FieldCipher) -> str | None:
    """The event id of an events row read with its profile's cipher (None where it cannot be
    read: a key other than the profile's)."""
    if row.event_id is not None:
        return row.event_id
    if row.event_ref is None or row.key_id != cipher.key_id:
        return None
    try:
        return cipher.decrypt(PLACE, row.event_ref)
    except CryptoError:
        return None


def resealed(
    rows: Iterable[tuple[uuid.UUID, bytes | None, bytes | None]],
    old: FieldCipher,
    new: FieldCipher,
) -> list[dict[str, Any]]:
    """Parameters of `reseal_statement` for events (id, properties, event_ref) moving from the
    profile of `old` to the profile of `new`: both ciphertexts re-encrypted under `new`."""
    out = []
    for eid, props, ref in rows:
        if props is None and ref is None:
            continue  # nothing encrypted: an event from before sealing, without properties
        out.append(
            {
                "eid": eid,
                "pr": None
                if props is None
                else new.encrypt(PROPERTIES, old.decrypt_bytes(PROPERTIES, props)),
                "ref": None if ref is None else new.encrypt(PLACE, old.decrypt_bytes(PLACE, ref)),
            }
        )
    return out


def reseal_statement(new: FieldCipher):  # type: ignore[no-untyped-def]
    return (
        update(events)
        .where(events.c.id == bindparam("eid"))
        .values(properties=bindparam("pr"), event_ref=bindparam("ref"), key_id=new.key_id)
    )


async def plain_ids_left(db: Database) -> bool:
    """Whether an event recorded before sealing still keeps its plain id (`cdp events seal`
    has not run since the upgrade)."""
    async with db.read() as conn:
        found = await conn.execute(
            select(events.c.id).where(events.c.event_id.is_not(None)).limit(1)
        )
        return found.first() is not None


async def seal_plain_ids(db: Database, keys: Keyring) -> int:
    """Seal the event ids recorded before migration 0012: `cdp events seal`. In batches, each
    in a write transaction holding its profiles' locks (a merge moving the events meanwhile
    waits, so each id is encrypted for the profile that owns it); resumable, and safe while
    the service runs. Events whose data key is gone (an erasure in progress, which deletes
    them) are left. Returns the events sealed.

    On SQLite the plain ids are overwritten (`secure_delete`) and the WAL is checkpointed and
    truncated after (`Database.purge_wal`): until a checkpoint the database file kept each
    page as it was, the plain ids in it, so that a copy of the file and its -wal held them."""
    e = events.c
    done = 0
    after = uuid.UUID(int=0)
    while True:
        async with db.write() as conn:
            await overwrite_deleted(conn)
            batch = (
                await conn.execute(
                    select(e.id, e.profile_id)
                    .where(e.event_id.is_not(None), e.id > after)
                    .order_by(e.id)
                    .limit(_BATCH)
                )
            ).all()
            if not batch:
                break
            after = batch[-1].id
            await lock_profiles(conn, {r.profile_id for r in batch})
            rows = (  # again, under the locks: a merge may have moved some meanwhile
                await conn.execute(
                    select(e.id, e.profile_id, e.source, e.event_id, e.key_id).where(
                        e.id.in_([r.id for r in batch]), e.event_id.is_not(None)
                    )
                )
            ).all()
            ciphers = await keys.ciphers(conn, {r.profile_id for r in rows})
            updates = []
            for r in rows:
                cipher = ciphers.get(r.profile_id)
                if cipher is None or r.key_id not in (None, cipher.key_id):
                    continue
                updates.append(
                    {
                        "eid": r.id,
                        "k": event_key(keys.indexer, r.source, r.event_id),
                        "ref": seal(cipher, r.event_id),
                        "kid": cipher.key_id,
                    }
                )
            if updates:
                await conn.execute(
                    update(events)
                    .where(e.id == bindparam("eid"))
                    .values(
                        event_key=bindparam("k"),
                        event_ref=bindparam("ref"),
                        key_id=bindparam("kid"),
                        event_id=None,
                    ),
                    updates,
                )
            done += len(updates)
    log.info("event_ids_sealed", events=done)
    if done:
        await db.purge_wal(after="event_seal")
    return done
