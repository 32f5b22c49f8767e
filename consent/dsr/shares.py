"""Destroying the key store's shares that are not kept under their profile's own id.

A profile's first data key has its share under the profile's id, destroyed by the profile's
erasure by name. A later key (an unmerge gives its holder one, cdp.profiles.rekey) has its share
under an id of its own, and `key_share_owners` names each profile whose erasure destroys it: the
holder's current key goes with the holder, a key the unmerge retired with the holder and with
any customer ever merged into it. `destroy_owned` destroys every share one of whose owners is
erased, then forgets the rows; it runs with `erase_again` (consent.dsr.restore): after every
erasure, and when a platform opens, so that a process that died between the two is caught up.
"""

from __future__ import annotations

import structlog
from sqlalchemy import delete, select

from cdp.db.tables import key_share_owners, profiles
from cdp.platform import Platform

log = structlog.get_logger(__name__)


async def destroy_owned(p: Platform) -> int:
    """Destroy the shares with an erased owner; returns how many."""
    ko, pc = key_share_owners.c, profiles.c
    async with p.db.read() as conn:
        doomed = sorted(
            set(
                (
                    await conn.execute(
                        select(ko.share_id)
                        .join(profiles, pc.id == ko.profile_id)
                        .where(pc.status == "erased")
                    )
                ).scalars()
            )
        )
    if not doomed:
        return 0
    await p.keys.destroy_shares(doomed)  # first: a row is forgotten only once its share is gone
    async with p.db.write() as conn:
        for start in range(0, len(doomed), 500):
            await conn.execute(
                delete(key_share_owners).where(ko.share_id.in_(doomed[start : start + 500]))
            )
    log.info("key_shares_destroyed", shares=len(doomed))
    return len(doomed)
