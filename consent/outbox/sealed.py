"""The address of an opt-out that no customer holds, kept in its event until it is sent.

An opt-out (or a withdrawal through POST /v1/consents) may name an email or phone the platform
has never seen: there is no identity to decrypt the address from at delivery, and the blind
index alone means nothing to a sending tool (it does not hold the index key). Such an `opt_out`
(or `consent.withdrawn`) event carries the address in
`address_sealed`, encrypted under a key of its own (`Keyring.sealing_cipher`: derived from the
system key and a share kept in the key store under the event's id) and bound to the event's id;
the dispatcher decrypts it only for subscriptions with `include_address` (each such delivery
goes to the access log, as for every address). The column is nulled, and the key's share
destroyed in the key store first, so that no copy of the database taken while the address
waited (a backup, a replica) can read it any more:

- once no subscription allowed to see addresses still has a delivery of the event pending or
  dead (a dead letter keeps it, so a replay within retention still carries it);
- when the customer who holds the address by then is erased (`forget_addresses`);
- with the event itself, by retention (which destroys the shares of the events it deletes).

Until 2026-12-06 the address was sealed under the system key itself, which no erasure
destroys; such an event is still opened with it (`unseal_addresses`) until it is forgotten.
If the database's transaction fails after a share was destroyed, its event keeps a value that
nothing opens: it is sent with the blind index alone, never with a wrong address.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.fields import CryptoError
from cdp.db.availability import KeyStoreDown
from cdp.key_store import new_share
from consent.outbox.tables import outbox_events, webhook_deliveries, webhook_subscriptions

if TYPE_CHECKING:
    from cdp.keyring import Keyring

log = structlog.get_logger(__name__)
oe = outbox_events.c
WANTING = ("pending", "dead")  # a delivery that may still be sent (dead: by a replay)


def _place(event_id: uuid.UUID) -> str:
    return f"outbox_events.address_sealed|{event_id}"


async def seal_addresses(
    keys: Keyring, addresses: Mapping[uuid.UUID, str]
) -> dict[uuid.UUID, bytes]:
    """Each event's address sealed under a key of its own; the keys' shares are kept in the
    key store first (it commits before the events are written).

    While the key store is away (or its disk is full) the addresses are sealed under the
    system key instead, as before 2026-12-06: an opt-out is honoured at once, and refusing it
    (503) until the store is back left the customer contactable meanwhile, and the sending
    tool without the address it must stop mailing. Such a copy is nulled as any other (once
    sent, at an erasure, by retention), but a backup taken while it waits can be read with the
    master key whatever erasure follows; logged by event count, never the address."""
    shares = [(event_id, new_share()) for event_id in addresses]
    try:
        kept = await keys.store_shares(shares)  # a run of this write that rolled back kept some
    except KeyStoreDown:
        log.warning("address_sealed_under_system_key", events=len(shares))
        return {
            event_id: keys.system.encrypt(_place(event_id), address)
            for event_id, address in addresses.items()
        }
    shares = [(event_id, kept.get(event_id, share)) for event_id, share in shares]
    return {
        event_id: keys.sealing_cipher(event_id, share).encrypt(
            _place(event_id), addresses[event_id]
        )
        for event_id, share in shares
    }


async def unseal_addresses(
    keys: Keyring, sealed: Iterable[tuple[uuid.UUID, bytes | None]]
) -> dict[uuid.UUID, str]:
    """The addresses that can still be opened, by event id; one whose key's share is gone
    (forgotten) is absent: it is sent as its blind index only."""
    rows = [(event_id, blob) for event_id, blob in sealed if blob is not None]
    shares = await keys.shares_of([event_id for event_id, _ in rows]) if rows else {}
    out: dict[uuid.UUID, str] = {}
    for event_id, blob in rows:
        share = shares.get(event_id)
        # no share: sealed under the system key before 2026-12-06, or forgotten (then the
        # system key does not open it either)
        cipher = keys.system if share is None else keys.sealing_cipher(event_id, share)
        try:
            address = cipher.decrypt(_place(event_id), blob)
        except CryptoError:
            continue
        if address:
            out[event_id] = address
    return out


async def forget_sent(
    conn: AsyncConnection,
    keys: Keyring,
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
    nulled = (await conn.execute(stmt.values(address_sealed=None).returning(oe.id))).scalars()
    await keys.destroy_shares(nulled)


async def forget_addresses(conn: AsyncConnection, keys: Keyring, bidxs: Iterable[bytes]) -> None:
    """Null every sealed copy of these addresses (an erasure of the customer holding them)."""
    wanted = sorted(set(bidxs))
    for start in range(0, len(wanted), 500):
        nulled = (
            await conn.execute(
                update(outbox_events)
                .where(
                    oe.address_bidx.in_(wanted[start : start + 500]),
                    oe.address_sealed.is_not(None),
                )
                .values(address_sealed=None)
                .returning(oe.id)
            )
        ).scalars()
        await keys.destroy_shares(nulled)
