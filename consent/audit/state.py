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
from collections.abc import Awaitable, Callable
from operator import itemgetter

from sqlalchemy.ext.asyncio import AsyncConnection

from consent.audit import addresses, profiles
from consent.audit import findings as f
from consent.audit.findings import Findings
from consent.audit.replay import SUBJECT, Channels
from consent.audit.rows import Reader, Row, Sorted, batches, iso
from consent.policy import Policy
from consent.subjects import PROFILE_PREFIX as PREFIX

CHUNK = 10_000
_PROFILE_SUBJECT = "length(subject) = 18 AND substr(subject, 1, 2) = ?"  # "p:" + 16 bytes


async def check_state(conn: AsyncConnection, policy: Policy, *, chunk: int = CHUNK) -> Findings:
    """Both passes, in the connection's snapshot."""
    out = Findings()
    await check_addresses(conn, policy, out, chunk=chunk)
    await check_profiles(conn, policy, out, chunk=chunk)
    return out


async def check_addresses(
    conn: AsyncConnection, policy: Policy, out: Findings, *, chunk: int = CHUNK
) -> None:
    """Addresses: their entries, consent_state rows and suppressions, address by address."""
    reader = await Reader.of(conn)
    channels = Channels(policy)

    def streams(on: list[Reader]) -> list[Sorted]:
        ledger, state, sups = on
        return [
            Sorted(
                ledger.chunks(addresses.ledger_sql(reader), policy.version, size=chunk),
                itemgetter(SUBJECT),
            ),
            Sorted(
                state.chunks(_state_sql(reader, f"NOT ({_PROFILE_SUBJECT})"), PREFIX, size=chunk),
                itemgetter(0),
            ),
            Sorted(sups.chunks(addresses.suppressions_sql(reader), size=chunk), itemgetter(0)),
        ]

    async def prepare(batch: list[list[Row]]) -> Callable[[], None]:
        ledger, states, sups = batch
        return await addresses.prepare(reader, channels, out, ledger, states, sups)

    await _run(reader, 3, streams, prepare)
    await check_address_erasures(reader, out)


async def check_address_erasures(reader: Reader, out: Findings) -> None:
    """Every time an address was erased (address_erasures) is the completion time of a
    completed erasure request, as an erasure suppression's is: the audit reads take the entries
    recorded on an address up to its erasure for the erased customer's, so a row written by
    hand would hide an address's history from whoever holds it."""
    rows = await reader.rows(
        f"SELECT {reader.time('at')} FROM address_erasures e WHERE NOT EXISTS (SELECT 1 FROM "
        "dsr_requests r WHERE r.kind = 'erasure' AND r.status = 'completed' AND "
        "r.completed_at = e.at) ORDER BY e.at"
    )
    for (at,) in rows:
        out.add(
            f.ERASURE_UNBACKED, seq=None, purpose=None, channel=None, reason="erasure", at=iso(at)
        )


async def check_profiles(
    conn: AsyncConnection, policy: Policy, out: Findings, *, chunk: int = CHUNK
) -> None:
    """Profile-keyed consent: their entries and consent_state rows, profile by profile."""
    reader = await Reader.of(conn)
    channels = Channels(policy)

    def streams(on: list[Reader]) -> list[Sorted]:
        ledger, state = on
        return [
            Sorted(
                ledger.chunks(profiles.ledger_sql(reader), policy.version, size=chunk),
                profiles.subject_key(reader),
            ),
            Sorted(
                state.chunks(_state_sql(reader, _PROFILE_SUBJECT), PREFIX, size=chunk),
                itemgetter(0),
            ),
        ]

    async def prepare(batch: list[list[Row]]) -> Callable[[], None]:
        ledger, states = batch
        return await profiles.prepare(reader, channels, policy.version, out, ledger, states)

    await _run(reader, 2, streams, prepare)


def _state_sql(reader: Reader, which: str) -> str:
    return (
        f"SELECT subject, purpose, channel, status, {reader.time('since')}, seq "
        f"FROM consent_state WHERE {which} ORDER BY subject, purpose, channel"
    )


async def _run(
    reader: Reader,
    count: int,
    streams_on: Callable[[list[Reader]], list[Sorted]],
    prepare: Callable[[list[list[Row]]], Awaitable[Callable[[], None]]],
) -> None:
    """Read the streams in batches of complete subjects; each batch is compared in a worker
    thread while the next is read."""
    async with reader.sharing_snapshot(count) as readers:
        streams = streams_on(readers)
        comparing: asyncio.Future | None = None
        try:
            async for batch in batches(streams):
                compare = await prepare(batch)
                if comparing is not None:
                    await comparing
                comparing = asyncio.ensure_future(asyncio.to_thread(compare))
            if comparing is not None:
                await comparing
        finally:
            if comparing is not None and not comparing.done():
                await asyncio.wait([comparing])
            for s in streams:
                await s.close()
