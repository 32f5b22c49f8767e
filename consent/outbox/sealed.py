"""The address of an opt-out that no customer holds, kept in its event until it is sent.

An opt-out may name an email or phone the platform has never seen: there is no identity to
decrypt the address from at delivery, and the blind index alone means nothing to a sending tool
(it does not hold the index key). Such an `opt_out` event carries the address in
`address_sealed`, encrypted under the system key and bound to the event's id; the dispatcher
decrypts it only for subscriptions with `include_address` (each such delivery goes to the access
log, as for every address). The column is nulled:

- once no subscription allowed to see addresses still has a delivery of the event pending or
  dead (a dead letter keeps it, so a replay within retention still carries it);
- when the customer who holds the address by then is erased (`forget_addresses`);
- with the event itself, by retention.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.fields import CryptoError, FieldCipher
from consent.outbox.tables import outbox_events, webhook_deliveries, webhook_subscriptions

oe = outbox_events.c
WANTING = ("pending", "dead")  # a delivery that may still be sent (dead: by a replay)


def _place(event_id: uuid.UUID) -> str:
    return f"outbox_events.address_sealed|{event_id}"


def seal(system: FieldCipher, event_id: uuid.UUID, address: str) -> bytes:
    return system.encrypt(_place(event_id), address)


def unseal(system: FieldCipher, event_id: uuid.UUID, blob: bytes | None) -> str | None:
    if blob is None:
        return None
    try:
        return system.decrypt(_place(event_id), blob) or None
    except CryptoError:  # sent as its blind index only
        return None


async def forget_sent(
    conn: AsyncConnection,
    *,
    seqs: Iterable[int] | None = None,
    event_ids: Iterable[uuid.UUID] | None = None,
) -> None:
    """Null the sealed address of these fanned-out events (all, without arguments) where no
    live subscription allowed to see addresses has a delivery of it left to send."""
    d, ws = webhook_deliveries.c, webhook_subscriptions.c
    wanted = (
        select(d.id)
        .join(webhook_subscriptions, ws.id == d.subscription_id)
        .where(
            d.event_seq == oe.seq,
            d.status.in_(WANTING),
            ws.include_address.is_(True),
            ws.deleted_at.is_(None),
        )
        .correlate(outbox_events)
        .exists()
    )
    stmt = update(outbox_events).where(
        oe.address_sealed.is_not(None), oe.fanned_out.is_(True), ~wanted
    )
    if seqs is not None:
        stmt = stmt.where(oe.seq.in_(list(seqs)))
    if event_ids is not None:
        stmt = stmt.where(oe.id.in_(list(event_ids)))
    await conn.execute(stmt.values(address_sealed=None))


async def forget_addresses(conn: AsyncConnection, bidxs: Iterable[bytes]) -> None:
    """Null every sealed copy of these addresses (an erasure of the customer holding them)."""
    wanted = sorted(set(bidxs))
    for start in range(0, len(wanted), 500):
        await conn.execute(
            update(outbox_events)
            .where(oe.address_bidx.in_(wanted[start : start + 500]), oe.address_sealed.is_not(None))
            .values(address_sealed=None)
        )
