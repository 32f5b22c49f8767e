"""What a receiver gets: ids, kind, times, purpose, channel, the address's blind index, and
the address itself only for a subscription allowed to see it. Never other personal data.

The address is decrypted from the identity at delivery time. If the identity is gone (erased)
or its data key destroyed, or the event's profile was erased, only the blind index is sent. An
opt-out of an address no customer held carries it sealed instead (consent.outbox.sealed).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.fields import CryptoError
from cdp.db.tables import identities
from cdp.platform import Platform
from cdp.profiles.identifiers import profiles_in_status
from consent.outbox.enqueue import LAPSED, MERGE_KINDS


def event_payload(ev: Any) -> dict[str, Any]:
    """The body of an event without any address (also the NATS message)."""
    body = {
        "event_id": str(ev.id),
        "kind": ev.kind,
        "occurred_at": ev.occurred_at,
        "recorded_at": ev.recorded_at,
        "purpose": ev.purpose,
        "channel": ev.channel,
        "source": ev.source,
        "profile_id": str(ev.profile_id) if ev.profile_id else None,
        "address_kind": ev.address_kind,
        "address_blind_index": ev.address_bidx.hex() if ev.address_bidx else None,
    }
    if ev.kind in MERGE_KINDS:  # ids only, whatever the subscription may see
        body["survivor_profile_id"] = body["profile_id"]
        body["absorbed_profile_id"] = str(ev.absorbed_profile_id)
    if ev.kind == LAPSED:  # it occurred when it lapsed: the grant's time plus the period
        body["lapsed_at"] = ev.occurred_at
    return body


async def resolve_addresses(
    conn: AsyncConnection, p: Platform, bidxs: Iterable[bytes]
) -> dict[bytes, str]:
    """Blind index -> address, for the identities that still exist and can be decrypted."""
    wanted = list(set(bidxs))
    out: dict[bytes, str] = {}
    # twice at most: an unmerge that gave a holder a new key (cdp.profiles.rekey) may commit
    # between the statement reading an identity and the one reading its key
    for _ in range(2):
        failed = await _decrypted(conn, p, wanted, out)
        if not failed:
            break
        wanted = failed
    return {b: a for b, a in out.items() if a}


async def _decrypted(
    conn: AsyncConnection, p: Platform, wanted: list[bytes], out: dict[bytes, str]
) -> list[bytes]:
    """Decrypt these addresses into `out`; returns those whose ciphertext did not open."""
    i = identities.c
    rows = []
    for start in range(0, len(wanted), 500):
        rows += (
            await conn.execute(
                select(i.bidx, i.profile_id, i.value).where(
                    i.bidx.in_(wanted[start : start + 500]), i.kind.in_(("email", "phone"))
                )
            )
        ).all()
    ciphers = await p.keys.ciphers(conn, {pid for _, pid, _ in rows})
    failed = []
    for bidx, pid, value in rows:
        cipher = ciphers.get(pid)
        if cipher is None:
            continue
        try:
            out[bidx] = cipher.decrypt("identities.value", value) or ""
        except CryptoError:
            failed.append(bidx)
    return failed


async def erased_profiles(
    conn: AsyncConnection, pids: Iterable[uuid.UUID | None]
) -> set[uuid.UUID]:
    """Which of these profiles are erased. Their events never carry an address: not even one a
    new customer has given since (a new sign-up, a reassigned phone number), which would link
    the erased profile to it in clear."""
    return await profiles_in_status(conn, {pid for pid in pids if pid is not None}, "erased")


def with_address(body: dict[str, Any], address: str | None) -> dict[str, Any]:
    if address is None:
        return body
    return {**body, "address": address}
