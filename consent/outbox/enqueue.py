"""Writing outbox events inside the caller's transaction.

Call these with the connection of the transaction that makes the consent change: the event
then commits, or rolls back, with the change. Nothing here talks to the network.

    await enqueue(conn, "erasure.completed", profile_id=pid, occurred_at=now,
                  addresses=[("email", bidx), ...])
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.bulk import bulk_insert
from cdp.ids import new_id, utcnow
from consent.outbox.tables import outbox_events
from consent.subjects import profile_subject

if TYPE_CHECKING:
    from cdp.keyring import Keyring

# The consent changes: what a subscription created without `kinds` gets. Kinds added later
# are asked for by name, so that a receiver written before them never meets one it may refuse
# (a refused delivery holds back that customer's later events until it is dead).
DEFAULT_KINDS = (
    "consent.withdrawn",
    "consent.granted",
    "opt_out",
    "erasure.completed",
    "suppression.added",
)
MERGE_KINDS = ("profile.merged", "profile.unmerged")
# a grant older than its validity period (consent.outbox.lapses): asked for by name too
LAPSED = "consent.lapsed"
KINDS = DEFAULT_KINDS + MERGE_KINDS + (LAPSED,)
ADDRESS_KINDS = ("email", "phone", "profile", "external_id")  # external_id: erasure


def order_key(
    profile_id: uuid.UUID | None, address_bidx: bytes | None, subject: bytes | None = None
) -> bytes:
    """Deliveries sharing a key go out in order: the address, else the profile."""
    if address_bidx is not None:
        return address_bidx
    if subject is not None:
        return subject
    if profile_id is not None:
        return profile_subject(profile_id)
    return b"-"


def event_row(
    kind: str,
    *,
    occurred_at: datetime,
    profile_id: uuid.UUID | None = None,
    address_kind: str | None = None,
    address_bidx: bytes | None = None,
    purpose: str | None = None,
    channel: str | None = None,
    source: str | None = None,
    subject: bytes | None = None,
    recorded_at: datetime | None = None,
    absorbed_profile_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"unknown outbox event kind {kind!r}")
    if address_kind is not None and address_kind not in ADDRESS_KINDS:
        raise ValueError(f"unknown address kind {address_kind!r}")
    if address_kind == "profile":
        address_bidx = None  # a profile subject is not an address
    return {
        "id": new_id(),
        "kind": kind,
        "order_key": order_key(profile_id, address_bidx, subject),
        "profile_id": profile_id,
        "absorbed_profile_id": absorbed_profile_id,
        "address_kind": address_kind,
        "address_bidx": address_bidx,
        "address_sealed": None,
        "purpose": purpose,
        "channel": channel,
        "source": source,
        "occurred_at": occurred_at,
        "recorded_at": recorded_at or utcnow(),
        "fanned_out": False,
    }


async def write_rows(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> list[uuid.UUID]:
    await bulk_insert(conn, outbox_events, rows)
    return [r["id"] for r in rows]


async def enqueue(
    conn: AsyncConnection,
    kind: str,
    *,
    occurred_at: datetime,
    profile_id: uuid.UUID | None = None,
    address_kind: str | None = None,
    address_bidx: bytes | None = None,
    addresses: Iterable[tuple[str, bytes]] | None = None,
    purpose: str | None = None,
    channel: str | None = None,
    source: str | None = None,
) -> list[uuid.UUID]:
    """Write one event (or, given `addresses` [(kind, blind index)], one per address).

    An erasure passes the customer's surviving profile id and every email and phone blind
    index it had; with no addresses it is one event about the profile. Returns the event ids.
    """
    common = {
        "occurred_at": occurred_at,
        "profile_id": profile_id,
        "purpose": purpose,
        "channel": channel,
        "source": source,
    }
    if addresses is None:
        rows = [event_row(kind, address_kind=address_kind, address_bidx=address_bidx, **common)]
    else:
        pairs = sorted(set(addresses))
        rows = [event_row(kind, address_kind=k, address_bidx=b, **common) for k, b in pairs]
        if not rows:
            rows = [event_row(kind, address_kind="profile", **common)]
    return await write_rows(conn, rows)


def ledger_event_row(entry: Any, recorded_at: datetime) -> dict[str, Any]:
    """consent.granted / consent.withdrawn for one effective consent_ledger entry."""
    profile = entry.subject_kind == "profile"
    return event_row(
        "consent.granted" if entry.status == "granted" else "consent.withdrawn",
        occurred_at=entry.occurred_at,
        profile_id=entry.profile_id,
        address_kind=entry.subject_kind,
        address_bidx=None if profile else entry.subject,
        subject=entry.subject,
        purpose=entry.purpose,
        channel=entry.channel,
        source=entry.source,
        recorded_at=recorded_at,
    )


async def opt_out_rows(
    entries: Sequence[Any],
    unseen: Mapping[bytes, str] | None = None,
    keys: Keyring | None = None,
) -> list[dict[str, Any]]:
    """One opt_out event per subject an opt-out withdrew (consent.ledger.Entry objects), as
    outbox rows for the caller to write; those of `unseen` addresses sealed (`seal_unseen`)."""
    rows = []
    for e in entries:
        row = ledger_event_row(e, utcnow())
        row["kind"] = "opt_out"
        rows.append(row)
    if unseen and keys is not None:
        await seal_unseen(rows, unseen, keys)
    return rows


async def seal_unseen(
    rows: list[dict[str, Any]], unseen: Mapping[bytes, str], keys: Keyring
) -> None:
    """`unseen`: blind index -> address, for the addresses no customer held. Their events (the
    outbox `rows` of no profile) carry the address sealed under a key of its own, kept by
    `keys` (consent.outbox.sealed): there is no identity to decrypt it from at delivery."""
    from consent.outbox.sealed import seal_addresses

    addresses = {
        row["id"]: unseen[row["address_bidx"]]
        for row in rows
        if row["profile_id"] is None and row["address_bidx"] in unseen
    }
    if addresses:
        sealed = await seal_addresses(keys, addresses)
        for row in rows:
            row["address_sealed"] = sealed.get(row["id"], row["address_sealed"])


async def enqueue_profile_withdrawals(
    conn: AsyncConnection, profile_id: uuid.UUID, states: Iterable[Mapping[str, Any]]
) -> None:
    """consent.withdrawn for withdrawn states of a profile's own consent (push, messenger) that
    a merge or an unmerge put in force without a ledger entry (`states`: consent_state rows,
    or their merge snapshots with `since` as text). With the time and source the state keeps."""
    rows = [
        event_row(
            "consent.withdrawn",
            occurred_at=_as_time(s["since"]),
            profile_id=profile_id,
            address_kind="profile",
            subject=profile_subject(profile_id),
            purpose=s["purpose"],
            channel=s["channel"],
            source=s["source"],
        )
        for s in states
        if s["status"] == "withdrawn"
    ]
    if rows:
        await write_rows(conn, rows)


def _as_time(value: datetime | str) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


async def enqueue_merge(
    conn: AsyncConnection,
    kind: str,
    *,
    survivor_id: uuid.UUID,
    absorbed_id: uuid.UUID,
    source: str,
) -> uuid.UUID:
    """profile.merged (absorbed into survivor) or profile.unmerged (absorbed split back out of
    survivor). Ordered with the absorbed profile's own events: a receiver hears that B became A
    after everything said about B before, and that B is B again before anything said after."""
    if kind not in MERGE_KINDS:
        raise ValueError(f"not a merge event kind {kind!r}")
    row = event_row(
        kind,
        occurred_at=utcnow(),
        profile_id=survivor_id,
        absorbed_profile_id=absorbed_id,
        subject=profile_subject(absorbed_id),
        source=source,
    )
    (event_id,) = await write_rows(conn, [row])
    return event_id
