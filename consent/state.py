"""Reading and merging the derived consent state."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from consent.subjects import profile_subject
from consent.tables import consent_state

_RESTRICTIVENESS = {"withdrawn": 2, "granted": 1}


async def merge_profile_states(
    conn: AsyncConnection, survivor_id: uuid.UUID, absorbed_id: uuid.UUID
) -> None:
    """Profile-keyed consent (push, messenger) of the absorbed profile joins the survivor's.

    Address-keyed consent needs nothing: it belongs to the address, which a merge never changes.
    Where both profiles hold a state for the same purpose and channel and they disagree, the
    most restrictive wins (withdrawn over granted), whatever their times.
    """
    cs = consent_state.c
    s_subj, a_subj = profile_subject(survivor_id), profile_subject(absorbed_id)
    absorbed = (await conn.execute(select(consent_state).where(cs.subject == a_subj))).all()
    if not absorbed:
        return
    mine = {
        (r.purpose, r.channel): r
        for r in (await conn.execute(select(consent_state).where(cs.subject == s_subj))).all()
    }
    for row in absorbed:
        current = mine.get((row.purpose, row.channel))
        values = row._asdict() | {"subject": s_subj, "profile_id": survivor_id}
        if current is None:
            await conn.execute(insert(consent_state).values(**values))
        elif _RESTRICTIVENESS[row.status] > _RESTRICTIVENESS[current.status]:
            await conn.execute(
                update(consent_state)
                .where(cs.subject == s_subj, cs.purpose == row.purpose, cs.channel == row.channel)
                .values(
                    status=row.status,
                    since=max(row.since, current.since),
                    seq=row.seq,
                    source=row.source,
                )
            )
    await conn.execute(delete(consent_state).where(cs.subject == a_subj))
    await conn.execute(
        update(consent_state).where(cs.profile_id == absorbed_id).values(profile_id=survivor_id)
    )
