"""The derived consent state checked against the verified ledger.

Segments decide who is contacted from `consent_state` and `suppressions`, not from the ledger,
so a verification that only recomputed the ledger's hashes would pass a database in which
someone flipped a withdrawal back to a grant or deleted a suppression. This check reads the
ledger again, sorted by subject, together with the state and the suppression list in the same
order, and compares them subject by subject:
- addresses: consent_state and the suppression list (consent.audit.addresses);
- profiles: consent_state of profile-keyed channels (consent.audit.profiles).

It reads a chunk of each at a time (consent.audit.rows), so its memory stays the same whatever
the size of the ledger. Run it inside one snapshot (consent.audit.verify.snapshot), so that
writes committed meanwhile cannot look like mismatches.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from operator import itemgetter

from sqlalchemy.ext.asyncio import AsyncConnection

from consent.audit import addresses, profiles
from consent.audit.findings import Findings
from consent.audit.replay import SUBJECT, Channels
from consent.audit.rows import Reader, Sorted, batches
from consent.policy import Policy

CHUNK = 10_000


async def check_state(conn: AsyncConnection, policy: Policy, *, chunk: int = CHUNK) -> Findings:
    reader = await Reader.of(conn)
    temp_store = None
    if reader.sqlite:  # sorts larger than the cache spill to files, not to memory
        temp_store = (await reader.rows("PRAGMA temp_store"))[0][0]
        try:
            await reader.rows("PRAGMA temp_store = FILE")
        except sqlite3.OperationalError:  # the caller's transaction is open: keep its setting
            temp_store = None
    try:
        async with reader.sharing_snapshot(4) as readers:
            return await _check(reader, readers, policy, chunk)
    finally:
        if temp_store is not None:
            await reader.rows(f"PRAGMA temp_store = {int(temp_store)}")


async def _check(reader: Reader, readers: list[Reader], policy: Policy, chunk: int) -> Findings:
    channels = Channels(policy)
    on_addresses, on_profiles, on_state, on_suppressions = readers
    state_sql = (
        f"SELECT subject, purpose, channel, status, {reader.time('since')}, seq "
        "FROM consent_state ORDER BY subject, purpose, channel"
    )
    streams = [
        Sorted(
            on_addresses.chunks(addresses.ledger_sql(reader), policy.version, size=chunk),
            itemgetter(SUBJECT),
        ),
        Sorted(
            on_profiles.chunks(profiles.ledger_sql(reader), policy.version, size=chunk),
            profiles.subject_key(reader),
        ),
        Sorted(on_state.chunks(state_sql, size=chunk), itemgetter(0)),
        Sorted(
            on_suppressions.chunks(addresses.suppressions_sql(reader), size=chunk),
            itemgetter(0),
        ),
    ]
    out = Findings()
    comparing: asyncio.Future | None = None  # the previous batch, compared in a worker thread
    try:
        async for ledger_a, ledger_p, states, sups in batches(streams):
            of_profiles = [r for r in states if addresses.is_profile_subject(r[0])]
            of_addresses = (
                [r for r in states if not addresses.is_profile_subject(r[0])]
                if of_profiles
                else states
            )
            steps = [
                await addresses.prepare(reader, channels, out, ledger_a, of_addresses, sups),
                await profiles.prepare(
                    reader, channels, policy.version, out, ledger_p, of_profiles
                ),
            ]
            if comparing is not None:
                await comparing
            # compared while the next batch is read
            comparing = asyncio.ensure_future(asyncio.to_thread(_run, steps))
        if comparing is not None:
            await comparing
    finally:
        if comparing is not None and not comparing.done():
            await asyncio.wait([comparing])
        for s in streams:
            await s.close()
    return out


def _run(steps: list[Callable[[], None]]) -> None:
    for step in steps:
        step()
