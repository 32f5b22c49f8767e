"""Erasing again what the key store says was erased: after a restore, and after each erasure.

The key store (cdp.key_store) keeps a numbered tombstone of every erased profile, written
before the database's erasure commits; the database keeps the number of the last one it has
honoured (`key_store_link.reconciled_seq`). A database restored from a backup has an older
number and may still hold customers erased since: `erase_again` erases them once more (the
whole customer: the profiles merged with them in that database too), destroys the shares of
every tombstoned profile, and moves the number on. It runs when a platform opens (every
`cdp` command and `cdp serve`), before anything is served, and after every erasure, where it
destroys the erased customer's shares (and those of an erasure whose process died between its
two commits).

A tombstone whose erasure rolled back (a failed or killed run: its request stays in progress)
is honoured too: the customer asked, and the next run would erase them anyway.
"""

from __future__ import annotations

import uuid

import structlog

from cdp.ids import utcnow
from cdp.key_store_open import mark_reconciled, reconciled_seq
from cdp.platform import Platform
from cdp.profiles.identifiers import profiles_in_status
from consent.dsr.customer import root_of
from consent.dsr.shares import destroy_owned

log = structlog.get_logger(__name__)


async def erase_again(p: Platform) -> int:
    """Erase every customer the key store tombstoned after the database's number and destroy
    the tombstoned shares; the number of profiles erased here (0 but after a restore)."""
    store = p.keys.store
    if store is None:
        return 0
    seq = await reconciled_seq(p.db)
    erased = 0
    while batch := await store.tombstones_after(seq):
        pids = {pid for _, pid in batch}
        async with p.db.read() as conn:
            held = await profiles_in_status(conn, pids, "active")
            held |= await profiles_in_status(conn, pids, "merged")
        for pid in sorted(held):
            erased += await _erase_customer_of(p, pid)
        await p.keys.destroy_shares(pids)
        seq = batch[-1][0]
        await mark_reconciled(p.db, seq)
    await destroy_owned(p)  # shares not under their profile's id (consent.dsr.shares)
    if erased:
        log.warning("erasures_applied_again", profiles=erased, through=seq)
        if not await p.db.purge_wal():
            log.warning("erasure_wal_not_truncated")
    return erased


async def _erase_customer_of(p: Platform, pid: uuid.UUID) -> int:
    from consent.dsr.erasure import erase_locked

    async with p.db.write() as conn:
        found = await root_of(conn, pid)
        if found is None or found[1] == "erased":
            return 0
        pids, _, counts = await erase_locked(conn, p, found[0], utcnow())
    await p.keys.destroy_shares(pids)
    return int(counts["profiles"])
