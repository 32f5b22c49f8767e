"""Executing an erasure request: complete, crash-safe, idempotent.

1. `claim` moves the request to in_progress in its own transaction (or, when it already is,
   records that a worker resumed it).
2. `erase` runs the whole erasure of the customer in ONE write transaction that also marks the
   request completed. A process killed anywhere inside it leaves the database as it was before
   (the request still in_progress, the customer untouched, never half-erased); any worker that
   later picks up in_progress requests redoes it. Re-running it on an erased customer is a no-op.

What the erasure does, for every profile of the customer (the survivor and everything merged
into it):
- suppresses every email and phone blind index for every advertising purpose, and for every
  purpose the customer granted, on all channels (reason "erasure"); a purpose the customer had
  refused on a channel stays refused on it. Marketing to the addresses stays off until a grant
  that occurred after the erasure. Its external ids are suppressed alike: push and messenger
  stay off for whoever holds one (a CRM that syncs by customer number brings them back);
- deletes the consent state of its subjects, its identities (and with them the blind indexes),
  events, stats, categories and sources; nulls its encrypted fields, traits, city and country;
  marks it "erased" (so every id answers 410 and the contactability rule says "erased");
- deletes its data keys' halves in the database, and the copies of consent evidence kept under
  them (consent.evidence); once the transaction commits, the other halves in the key store
  (crypto-shredding, cdp.key_store: ciphertext left in backups, dumps, replicas or the consent
  ledger's evidence can no longer be read, master key or not). The key store's tombstone of
  the customer, written before the transaction commits, makes a process that dies between the
  two commits, or a database restored from a backup, erase them again (consent.dsr.restore);
- runs the cleanups other modules registered (consent.dsr.hooks).
The consent ledger is not modified: its entries are pseudonymous, their evidence is ciphertext
under the destroyed key, and the hash chain still verifies.
On SQLite the transaction turns on `secure_delete`, so deleted rows are overwritten on disk, and
afterwards the WAL is checkpointed and truncated (`Database.purge_wal`): the -wal file held the
pages as they were before, the erased customer's city and traits among them.
"""

from __future__ import annotations

import os
import signal
import uuid
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

import cdp.matching  # noqa: F401  (registers its cleanup: every erasure must run it)
from cdp.db.engine import lock_keys, overwrite_deleted
from cdp.db.tables import (
    ENCRYPTED_PROFILE_FIELDS,
    events,
    identities,
    profile_categories,
    profile_keys,
    profile_sources,
    profile_stats,
    profiles,
)
from cdp.db.upsert import insert_ignore
from cdp.ids import utcnow
from cdp.platform import Platform
from cdp.profiles.locks import lock_profiles
from consent import evidence
from consent.dsr.customer import customer_identities, customer_profile_ids, root_of
from consent.dsr.hooks import erasure_hooks
from consent.dsr.requests import (
    completed_values,
    customer_lock,
    load,
    record_transition,
    request_lock,
    set_status,
)
from consent.dsr_tables import dsr_requests
from consent.outbox.enqueue import enqueue
from consent.outbox.sealed import forget_addresses
from consent.subjects import profile_subject
from consent.suppressions import Suppression, suppress_many
from consent.tables import address_erasures, consent_ledger, consent_state

log = structlog.get_logger(__name__)

WORKER = "dsr-worker"
CRASH_ENV = "CDP_DSR_CRASH_AT"  # tests only: kill the process at a named step


def crash_point(name: str) -> None:
    """Kill this process (SIGKILL, no cleanup) when CDP_DSR_CRASH_AT names this step."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


async def claim(p: Platform, request_id: uuid.UUID, actor: str = WORKER) -> str:
    """Start (or resume) a request; returns its status afterwards."""
    async with p.db.write() as conn:
        await lock_keys(conn, [request_lock(request_id)])
        row = await load(conn, request_id)
        if row.status == "received":
            await set_status(
                conn,
                row,
                "in_progress",
                actor=actor,
                reason="erasure started",
                attempts=row.attempts + 1,
            )
            return "in_progress"
        if row.status == "in_progress":
            await conn.execute(
                update(dsr_requests)
                .where(dsr_requests.c.id == request_id)
                .values(attempts=row.attempts + 1, updated_at=utcnow())
            )
            await record_transition(
                conn,
                request_id,
                event="resumed",
                from_status="in_progress",
                to_status="in_progress",
                actor=actor,
                reason="erasure restarted after an interrupted or failed run",
                due_at=row.due_at,
            )
        return row.status


async def erase(p: Platform, request_id: uuid.UUID, actor: str = WORKER) -> str:
    """Erase the request's customer and complete the request, in one transaction."""
    erased: list[uuid.UUID] = []
    async with p.db.write() as conn:
        await lock_keys(conn, [request_lock(request_id)])
        row = await load(conn, request_id)
        if row.status != "in_progress":
            return row.status
        now = utcnow()
        found = await root_of(conn, row.profile_id)
        if found is None:
            await set_status(
                conn,
                row,
                "rejected",
                actor=actor,
                reason="the customer's profile no longer exists",
                completed_at=now,
            )
            return "rejected"
        pids, _, counts = await erase_locked(conn, p, found[0], now)
        crash_point("before_commit")
        erased = pids
        reason = (
            "customer erased"
            if counts["profiles"]
            else "nothing left to erase: the customer was already erased"
        )
        await set_status(
            conn,
            row,
            "completed",
            actor=actor,
            reason=reason,
            **completed_values(now, counts),
        )
    for pid in erased:
        p.keys.forget(pid)
    if erased:
        from consent.dsr.restore import erase_again  # it erases through this module

        # the shares, now that the database has no use for them: these by name (the
        # tombstone's number may be one the database has passed already), then those of any
        # erasure whose process died between its two commits
        await p.keys.destroy_shares(erased)
        await erase_again(p)
    if erased:
        await p.db.purge_wal(after="erasure", request_id=str(request_id))
    return "completed"


async def erase_locked(
    conn: AsyncConnection, p: Platform, root: uuid.UUID, now: datetime
) -> tuple[list[uuid.UUID], list[tuple[uuid.UUID, str, bytes]], dict[str, Any]]:
    """Lock the customer whose surviving profile is `root` and erase them, in the caller's
    write transaction, with its erasure.completed events: (their profiles, their identifiers,
    what was erased). On SQLite the
    deleted rows are overwritten on disk (`secure_delete`)."""
    await overwrite_deleted(conn)
    pids, idents = await lock_customer(conn, root)
    counts = await erase_customer(conn, p, pids, idents, now, root)
    if counts["profiles"]:  # tell the sending tools, in this same transaction (outbox): also
        # an erasure done again after a restore (consent.dsr.restore), whose first one's
        # event the restored outbox never held
        await enqueue(
            conn,
            "erasure.completed",
            profile_id=root,
            occurred_at=now,
            source="erasure",
            addresses=[(kind, bidx) for _, kind, bidx in idents if kind in ("email", "phone")],
        )
    return pids, idents, counts


async def lock_customer(
    conn: AsyncConnection, root: uuid.UUID
) -> tuple[list[uuid.UUID], list[tuple[uuid.UUID, str, bytes]]]:
    """Lock the customer's profiles and identifiers, then read them again until stable.

    Ingest, consent, opt-out and event writers lock the blind indexes they touch, then the
    profiles they write to, and read those again under the locks (cdp.profiles.locks): once
    these are held nobody can attach an identity or an event to, or merge, this customer until
    the erasure commits, and whoever waited finds the profiles erased.
    """
    seen: tuple | None = None
    while True:
        found = await root_of(conn, root)
        root = found[0] if found else root
        pids = await customer_profile_ids(conn, root)
        idents = await customer_identities(conn, pids)
        state = (root, tuple(sorted(pids)), tuple(idents))
        if state == seen:
            return pids, idents
        # identifiers first, then the customer and its profiles (cdp.profiles.locks)
        await lock_keys(conn, [b for _, _, b in idents])
        await lock_keys(conn, [customer_lock(root)])
        await lock_profiles(conn, pids)
        seen = state


def _advertising(p: Platform) -> set[str]:
    return {name for name, purpose in p.policy.purposes.items() if purpose.advertising}


async def erase_customer(
    conn: AsyncConnection,
    p: Platform,
    pids: list[uuid.UUID],
    idents: list[tuple[uuid.UUID, str, bytes]],
    now: datetime,
    root: uuid.UUID | None = None,
) -> dict[str, Any]:
    """`root`: the customer's surviving profile, named by the webhook events of this erasure.
    The key store's tombstone is written first (and commits at once): whatever becomes of
    this transaction, the customer is erased in the end."""
    await p.keys.tombstone(pids, now)
    addresses = sorted({b for _, kind, b in idents if kind in ("email", "phone")})
    subjects = addresses + [profile_subject(pid) for pid in pids]
    cs = consent_state.c
    states = (
        await conn.execute(
            select(cs.subject, cs.purpose, cs.channel, cs.status).where(cs.subject.in_(subjects))
        )
    ).all()
    granted = {purpose for _, purpose, _, status in states if status == "granted"}
    led = consent_ledger.c
    if addresses or pids:
        granted |= {
            purpose
            for (purpose,) in await conn.execute(
                select(led.purpose)
                .where(
                    led.status == "granted",
                    or_(led.address_bidx.in_(addresses), led.profile_id.in_(pids)),
                )
                .distinct()
            )
        }
    refused = {(s, purpose, ch) for s, purpose, ch, status in states if status == "withdrawn"}

    # 1. Suppress the addresses before their identities go; the external ids too: a channel
    # addressed by the profile (push, messenger) honours a suppression of any identifier the
    # profile holds, so a CRM that brings the customer back by its customer number alone, with
    # last year's grants, does not make them contactable.
    purposes = sorted(_advertising(p) | granted)
    items = [
        Suppression(bidx, purpose, "*", "erasure", "erasure", now, root, kind)
        for kind, bidx in sorted({(kind, b) for _, kind, b in idents})
        for purpose in purposes
    ]
    items += [
        Suppression(bidx, purpose, channel, "erasure", "erasure", now, root, kind)
        for kind, bidx in sorted({(kind, b) for _, kind, b in idents if b in addresses})
        for subject, purpose, channel in sorted(refused)
        if subject == bidx
    ]
    await suppress_many(conn, items)
    suppressions = len(items)
    # when each went: what was recorded on them up to now was this customer's (a later opt-out
    # of the address overwrites its erasure suppression, so that does not keep the time)
    erased = sorted({b for _, _, b in idents})
    if erased:
        await conn.execute(
            insert_ignore(conn, address_erasures), [{"bidx": b, "at": now} for b in erased]
        )
    crash_point("after_suppressions")

    # 2. Consent state, identities (blind indexes), the profile rows.
    states_deleted = (
        await conn.execute(delete(consent_state).where(cs.subject.in_(subjects)))
    ).rowcount
    idents_deleted = (
        await conn.execute(delete(identities).where(identities.c.profile_id.in_(pids)))
    ).rowcount
    await forget_addresses(conn, p.keys, addresses)  # an opt-out's copy from before they held them
    crash_point("after_identities")
    erased_profiles = (
        await conn.execute(
            update(profiles)
            .where(profiles.c.id.in_(pids), profiles.c.status != "erased")
            .values(
                status="erased",
                traits={},
                field_times=None,
                city=None,
                city_key=None,
                country=None,
                updated_at=now,
                **dict.fromkeys(ENCRYPTED_PROFILE_FIELDS),
            )
        )
    ).rowcount

    # 3. Behaviour and derived data.
    events_deleted = (
        await conn.execute(delete(events).where(events.c.profile_id.in_(pids)))
    ).rowcount
    for table in (profile_stats, profile_categories, profile_sources):
        await conn.execute(delete(table).where(table.c.profile_id.in_(pids)))

    # 4. Crypto-shredding: the data keys.
    keys_deleted = (
        await conn.execute(delete(profile_keys).where(profile_keys.c.profile_id.in_(pids)))
    ).rowcount
    await evidence.forget(conn, pids)  # copies of consent evidence under those keys

    for hook in erasure_hooks():
        await hook(conn, pids)

    return {
        "profiles": erased_profiles,
        "profile_ids": [str(pid) for pid in sorted(pids)],
        "identities": idents_deleted,
        "events": events_deleted,
        "consent_states": states_deleted,
        "suppressions": suppressions,
        "data_keys": keys_deleted,
    }


async def record_failure(p: Platform, request_id: uuid.UUID, exc: BaseException) -> None:
    async with p.db.write() as conn:
        await conn.execute(
            update(dsr_requests)
            .where(dsr_requests.c.id == request_id)
            .values(last_error=type(exc).__name__[:64], updated_at=utcnow())
        )


async def process(p: Platform, request_id: uuid.UUID, actor: str = WORKER) -> str:
    """Claim and execute one request; returns its final status. Failures stay in_progress."""
    status = await claim(p, request_id, actor)
    if status != "in_progress":
        return status
    try:
        return await erase(p, request_id, actor)
    except Exception as exc:
        await record_failure(p, request_id, exc)
        raise
