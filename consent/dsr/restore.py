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

Every pass of the erasure worker runs `destroy_erased_shares`: the shares of an erasure that
committed without destroying them (its request reads completed) do not wait for a restart.

An erasure done again is on record in the database like any other, in the same transaction:
the customer's erasure request that the database holds open is completed by it, and where it
holds none (the request came after the backup) a completed one is recorded, by the key store
(`KEY_STORE`), with its transitions. `audit verify` requires that: an erasure suppression must
carry the completion time of a completed request, or the deleted state and the suppressions
count as mismatches (they did, after every restore).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.engine import lock_keys
from cdp.db.tables import profiles
from cdp.ids import new_id, utcnow
from cdp.key_store_open import mark_reconciled, reconciled_seq
from cdp.platform import Platform
from cdp.profiles.identifiers import profiles_in_status
from consent.dsr import deadlines, states
from consent.dsr.customer import customer_profile_ids, root_of
from consent.dsr.requests import (
    completed_values,
    load,
    record_transition,
    request_lock,
    set_status,
)
from consent.dsr.shares import destroy_owned
from consent.dsr_tables import dsr_requests

log = structlog.get_logger(__name__)

KEY_STORE = "key-store"  # the actor of an erasure done again
REASON = "erased again: the key store says the customer was erased after this copy was made"


async def erase_again(p: Platform) -> int:
    """Erase every customer the key store tombstoned after the database's number and destroy
    the tombstoned shares; the number of profiles erased here (0 but after a restore)."""
    if p.keys.store is None:
        return 0
    erased, seq = 0, None
    async for seq, pids in _tombstoned(p):
        async with p.db.read() as conn:
            held = await profiles_in_status(conn, pids, "active")
            held |= await profiles_in_status(conn, pids, "merged")
        for pid in sorted(held):
            erased += await _erase_customer_of(p, pid)
        await p.keys.destroy_shares(pids)
        await mark_reconciled(p.db, seq)
    await destroy_owned(p)  # shares not under their profile's id (consent.dsr.shares)
    if erased:
        log.warning("erasures_applied_again", profiles=erased, through=seq)
        await p.db.purge_wal(after="erasures_applied_again")
    return erased


async def destroy_erased_shares(p: Platform) -> int:
    """Destroy the shares of the tombstoned profiles that the database holds erased: those of
    an erasure that committed without destroying them (the key store refused, or the process
    lost its answer, after the database's commit). Unlike `erase_again` it erases nobody (a
    tombstone whose erasure rolled back waits for its request) and leaves the number alone.
    Run by every pass of the erasure worker; the number of shares destroyed."""
    store = p.keys.store
    if store is None:
        return 0
    destroyed = 0
    async for _, pids in _tombstoned(p):
        async with p.db.read() as conn:
            erased = await profiles_in_status(conn, pids, "erased")
        left = set(await store.get(erased))
        if left:
            await p.keys.destroy_shares(left)
            destroyed += len(left)
    return destroyed + await destroy_owned(p)


async def _tombstoned(p: Platform) -> AsyncIterator[tuple[int, set[uuid.UUID]]]:
    """The profiles the key store tombstoned after the database's number, a batch at a time,
    each with the number of its last tombstone."""
    seq = await reconciled_seq(p.db)
    while batch := await p.keys.store.tombstones_after(seq):
        seq = batch[-1][0]
        yield seq, {pid for _, pid in batch}


async def _erase_customer_of(p: Platform, pid: uuid.UUID) -> int:
    from consent.dsr.erasure import erase_locked

    async with p.db.write() as conn:
        found = await root_of(conn, pid)
        if found is None or found[1] == "erased":
            return 0
        jurisdiction = (
            await conn.execute(select(profiles.c.jurisdiction).where(profiles.c.id == found[0]))
        ).scalar_one()
        # the customer's open requests locked first, as the worker locks them (request, then
        # customer): a worker running one waits, and then finds it completed
        held = await _open_requests(conn, await customer_profile_ids(conn, found[0]))
        await lock_keys(conn, [request_lock(row.id) for row in held])
        now = utcnow()
        pids, _, counts = await erase_locked(conn, p, found[0], now)
        if counts["profiles"]:  # else someone erased them meanwhile, on record already
            await _on_record(conn, p, found[0], pids, jurisdiction, now, counts)
    await p.keys.destroy_shares(pids)
    return int(counts["profiles"])


async def _on_record(
    conn: AsyncConnection,
    p: Platform,
    root: uuid.UUID,
    pids: list[uuid.UUID],
    jurisdiction: str,
    now: datetime,
    counts: dict[str, Any],
) -> None:
    """The erasure done at `now` as a completed request: the customer's open ones completed,
    or one recorded (module docstring)."""
    open_rows = await _open_requests(conn, pids)
    for row in open_rows:
        if row.status == "received":
            await set_status(conn, row, "in_progress", actor=KEY_STORE, reason=REASON)
            row = await load(conn, row.id)
        completed = completed_values(now, counts)
        await set_status(conn, row, "completed", actor=KEY_STORE, reason=REASON, **completed)
    if open_rows:
        return
    if jurisdiction not in p.policy.jurisdictions:
        jurisdiction = p.policy.default_jurisdiction
    due = deadlines.erasure_due(p.policy, jurisdiction, now)
    request_id = new_id()
    await conn.execute(
        insert(dsr_requests).values(
            id=request_id,
            kind="erasure",
            profile_id=root,
            identifier_kind="profile_id",
            jurisdiction=jurisdiction,
            deadline_jurisdiction=jurisdiction,
            policy_version=p.policy.version,
            requested_by="operator",
            actor=KEY_STORE,
            received_at=now,
            due_at=due,
            extensions=0,
            attempts=1,
            status="completed",
            updated_at=now,
            **completed_values(now, counts),
        )
    )
    previous = None
    for target in ("received", "in_progress", "completed"):
        await record_transition(
            conn,
            request_id,
            event="created" if previous is None else "status",
            from_status=previous,
            to_status=target,
            actor=KEY_STORE,
            reason=REASON,
            due_at=due,
            at=now,
        )
        previous = target


async def _open_requests(conn: AsyncConnection, pids: list[uuid.UUID]) -> list[Any]:
    r = dsr_requests.c
    query = (
        select(dsr_requests)
        .where(r.kind == "erasure", r.status.in_(states.OPEN), r.profile_id.in_(pids))
        .order_by(r.received_at)
    )
    return list((await conn.execute(query)).all())
