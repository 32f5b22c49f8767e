"""Merging one profile into another, with every field re-encrypted under the survivor's key.

The survivor keeps its id; the absorbed profile becomes status "merged" with `merged_into`, so
its id keeps answering with the survivor. Identities, events, stats, categories and sources move;
consent stays with its addresses (and for profile-keyed channels the most restrictive state
wins); the absorbed data key is destroyed once nothing is encrypted under it.
"""

from __future__ import annotations

import uuid

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.tables import (
    ENCRYPTED_PROFILE_FIELDS,
    events,
    identities,
    merges,
    profile_categories,
    profile_keys,
    profile_sources,
    profile_stats,
    profiles,
)
from cdp.db.upsert import insert_ignore
from cdp.ids import new_id, utcnow
from cdp.platform import Platform


async def merge_profiles(
    conn: AsyncConnection,
    p: Platform,
    survivor_id: uuid.UUID,
    absorbed_id: uuid.UUID,
    *,
    matched_on: list[str],
    provenance: str,
    source: str | None,
    actor: str,
) -> None:
    from consent.state import merge_profile_states

    now = utcnow()
    s_row = (await conn.execute(select(profiles).where(profiles.c.id == survivor_id))).one()
    a_row = (await conn.execute(select(profiles).where(profiles.c.id == absorbed_id))).one()
    ciphers = await p.keys.ciphers(conn, [survivor_id, absorbed_id])
    s_cipher, a_cipher = ciphers[survivor_id], ciphers[absorbed_id]

    # Fields: the more recently updated profile's non-empty values win; traits key by key.
    absorbed_newer = a_row.updated_at > s_row.updated_at
    values: dict = {}
    for name in ENCRYPTED_PROFILE_FIELDS:
        s_blob, a_blob = getattr(s_row, name), getattr(a_row, name)
        if a_blob is not None and (s_blob is None or absorbed_newer):
            plain = a_cipher.decrypt_bytes(f"profiles.{name}", a_blob)
            values[name] = s_cipher.encrypt(f"profiles.{name}", plain)
    for name in ("country", "city"):
        a_val, s_val = getattr(a_row, name), getattr(s_row, name)
        if a_val and (not s_val or absorbed_newer):
            values[name] = a_val
    traits = dict(s_row.traits or {})
    a_traits = dict(a_row.traits or {})
    traits = {**traits, **a_traits} if absorbed_newer else {**a_traits, **traits}
    values.update(traits=traits, updated_at=now)
    await conn.execute(update(profiles).where(profiles.c.id == survivor_id).values(**values))

    # Identities: re-encrypt under the survivor's key and move.
    moved = [
        {
            "iid": iid,
            "v": s_cipher.encrypt(
                "identities.value", a_cipher.decrypt_bytes("identities.value", blob)
            ),
        }
        for iid, blob in await conn.execute(
            select(identities.c.id, identities.c.value).where(
                identities.c.profile_id == absorbed_id
            )
        )
    ]
    if moved:
        await conn.execute(
            update(identities)
            .where(identities.c.id == bindparam("iid"))
            .values(value=bindparam("v"), profile_id=survivor_id),
            moved,
        )

    # Events: move, re-encrypting free-form properties.
    ev_props = [
        {
            "eid": eid,
            "pr": s_cipher.encrypt(
                "events.properties", a_cipher.decrypt_bytes("events.properties", blob)
            ),
        }
        for eid, blob in await conn.execute(
            select(events.c.id, events.c.properties).where(
                events.c.profile_id == absorbed_id, events.c.properties.is_not(None)
            )
        )
    ]
    if ev_props:
        await conn.execute(
            update(events)
            .where(events.c.id == bindparam("eid"))
            .values(properties=bindparam("pr"), key_id=s_cipher.key_id),
            ev_props,
        )
    await conn.execute(
        update(events).where(events.c.profile_id == absorbed_id).values(profile_id=survivor_id)
    )

    await _merge_stats(conn, survivor_id, absorbed_id)
    for table in (profile_categories, profile_sources):
        rows = await conn.execute(select(table).where(table.c.profile_id == absorbed_id))
        moved_rows = [{**r._asdict(), "profile_id": survivor_id} for r in rows]
        if moved_rows:
            await conn.execute(insert_ignore(conn, table), moved_rows)
        await conn.execute(delete(table).where(table.c.profile_id == absorbed_id))

    await merge_profile_states(conn, survivor_id, absorbed_id)

    await conn.execute(
        update(profiles)
        .where(profiles.c.id == absorbed_id)
        .values(
            status="merged",
            merged_into=survivor_id,
            traits={},
            updated_at=now,
            **dict.fromkeys(ENCRYPTED_PROFILE_FIELDS),
        )
    )
    await conn.execute(
        update(profiles)
        .where(profiles.c.merged_into == absorbed_id)
        .values(merged_into=survivor_id)
    )
    await conn.execute(delete(profile_keys).where(profile_keys.c.profile_id == absorbed_id))
    p.keys.forget(absorbed_id)
    await conn.execute(
        insert(merges).values(
            id=new_id(),
            survivor_id=survivor_id,
            absorbed_id=absorbed_id,
            matched_on=matched_on,
            provenance=provenance,
            source=source,
            actor=actor,
            at=now,
        )
    )


async def _merge_stats(conn: AsyncConnection, survivor_id: uuid.UUID, absorbed_id: uuid.UUID):
    a = (
        await conn.execute(select(profile_stats).where(profile_stats.c.profile_id == absorbed_id))
    ).first()
    if a is None:
        return
    s = (
        await conn.execute(select(profile_stats).where(profile_stats.c.profile_id == survivor_id))
    ).first()
    if s is None:
        await conn.execute(
            update(profile_stats)
            .where(profile_stats.c.profile_id == absorbed_id)
            .values(profile_id=survivor_id)
        )
        return
    firsts = [d for d in (s.first_order_at, a.first_order_at) if d is not None]
    lasts = [d for d in (s.last_order_at, a.last_order_at) if d is not None]
    await conn.execute(
        update(profile_stats)
        .where(profile_stats.c.profile_id == survivor_id)
        .values(
            orders_count=s.orders_count + a.orders_count,
            total_spent=s.total_spent + a.total_spent,
            first_order_at=min(firsts) if firsts else None,
            last_order_at=max(lasts) if lasts else None,
        )
    )
    await conn.execute(delete(profile_stats).where(profile_stats.c.profile_id == absorbed_id))
