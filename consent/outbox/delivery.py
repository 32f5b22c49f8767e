"""Claiming due deliveries, sending them signed, and recording what the receiver answered.

Claim: a short write transaction picks due deliveries that are the head of their queue (no
earlier pending delivery of the same subscription and customer), so a customer's events reach
a receiver in order, and leases them (`lease_until`, `claim_token`). On PostgreSQL the pick is
SELECT ... FOR UPDATE SKIP LOCKED, so several dispatchers share the work; on SQLite writers are
serialised anyway. A dispatcher that dies holding a lease leaves the delivery to whoever comes
after the lease ends: delivery is at least once, and receivers dedupe on the event id.

Send: POST of the JSON body with the Standard Webhooks headers (`signing`), no redirects. Any
2xx is success. Otherwise the delivery is retried after an exponential delay with jitter, and
after `max_attempts` tries it is dead (kept, visible, replayable). Each try is recorded with its
status code or error type, never a response body.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import msgspec
import structlog
from sqlalchemy import bindparam, exists, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.access_log import log_access
from cdp.apikeys import Principal
from cdp.crypto.fields import CryptoError
from cdp.db.partial import equals, is_not
from cdp.db.tables import identities
from cdp.db.types import UTCDateTime
from cdp.ids import new_id, utcnow
from cdp.keyring import Keyring
from cdp.platform import Platform
from consent.outbox import signing
from consent.outbox.config import DispatchConfig
from consent.outbox.payload import (
    erased_profiles,
    event_payload,
    resolve_addresses,
    with_address,
)
from consent.outbox.sealed import forget_sent, unseal_addresses
from consent.outbox.subscriptions import decrypt_secret, previous_key
from consent.outbox.tables import (
    outbox_events,
    webhook_attempts,
    webhook_deliveries,
    webhook_subscriptions,
)

log = structlog.get_logger(__name__)
d = webhook_deliveries.c
USER_AGENT = "cdp-webhooks/1"
MAX_RESPONSE_READ = 64 * 1024
SECRET_UNREADABLE = "secret unreadable"


@dataclass(slots=True)
class Claimed:
    id: uuid.UUID
    token: uuid.UUID
    event_id: uuid.UUID
    subscription_id: uuid.UUID
    attempts: int
    url: str
    key: bytes
    body: bytes
    address_included: bool
    # a rotated secret's key, signing beside `key` while its overlap lasts
    old_key: bytes | None = None
    # the event carries a sealed address (consent.outbox.sealed), forgotten once sent
    sealed: bool = False
    # why no request can be made (recorded as the try's error), e.g. an unreadable secret
    unsendable: str | None = None
    # whose address the body carries: the profile holding it when the body was made (else
    # the event's), so the access log can tell the customer who received it
    profile_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def retry_delay(attempt: int, cfg: DispatchConfig, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed try number `attempt` (1-based): exponential, capped, with
    "equal jitter" (half fixed, half random) so failed receivers are not hit in lockstep."""
    full = min(cfg.retry_cap, cfg.retry_base * cfg.retry_factor ** (attempt - 1))
    return full / 2 + (rng or random).uniform(0, full / 2)


def _due(now):  # type: ignore[no-untyped-def]
    return (
        equals(d.status, "pending")
        & (d.next_attempt_at <= now)
        & or_(d.lease_until.is_(None), d.lease_until < now)
    )


async def work_waiting(p: Platform) -> bool:
    """One cheap read: is there an event to fan out or a delivery due?"""
    now = utcnow()
    unfanned = exists().where(is_not(outbox_events.c.fanned_out))
    async with p.db.read() as conn:
        return bool((await conn.execute(select(or_(unfanned, exists().where(_due(now)))))).scalar())


async def claim(p: Platform, cfg: DispatchConfig, limit: int) -> list[Claimed]:
    """Lease up to `limit` due heads of queues and prepare their signed bodies."""
    async with p.db.write() as conn:
        ids, token = await claim_in(conn, cfg, limit)
    return await prepare(p, ids, token) if ids else []


async def claim_in(
    conn: AsyncConnection,
    cfg: DispatchConfig,
    limit: int,
    queued: int = 0,
    busy: Mapping[uuid.UUID, int] | None = None,
) -> tuple[list[uuid.UUID], uuid.UUID]:
    """`claim` inside the caller's write transaction: the leased ids and the claim token.

    `busy`: how many deliveries of each subscription this dispatcher holds unanswered. No
    subscription gets more than `cfg.per_subscription` of them, so a receiver that hangs or
    answers slowly cannot take every request slot and hold up the other subscriptions.
    The lease covers the time these may wait behind `queued` others for one of `concurrency`
    request slots, each taking up to the timeout, plus `cfg.lease`."""
    token = new_id()
    if limit <= 0:
        return [], token
    room = {sid: cfg.per_subscription - n for sid, n in (busy or {}).items()}
    now = utcnow()
    earlier = webhook_deliveries.alias("earlier")
    e = earlier.c
    blocked = exists().where(
        e.subscription_id == d.subscription_id,
        e.order_key == d.order_key,
        equals(e.status, "pending"),
        e.event_seq < d.event_seq,
    )
    query = select(d.id, d.subscription_id).where(_due(now), ~blocked)
    full = [sid for sid, n in room.items() if n <= 0]
    if full:
        query = query.where(d.subscription_id.notin_(full))
    # ordered by `event_seq + 0`, not by its index: walking that index in order, SQLite read
    # every delivery kept (the delivered ones of the retention period) to reach the few due
    # ones, which the partial index of due deliveries finds and a sort puts in order
    query = query.order_by(d.event_seq + 0).limit(limit)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=webhook_deliveries)
    ids = []
    for i, sid in await conn.execute(query):  # rows left out stay due for the next pass
        if room.setdefault(sid, cfg.per_subscription) > 0:
            room[sid] -= 1
            ids.append(i)
    lease = cfg.lease + (queued + len(ids)) / max(cfg.concurrency, 1) * cfg.timeout
    if ids:
        await conn.execute(
            update(webhook_deliveries)
            .where(d.id.in_(ids))
            .values(lease_until=now + timedelta(seconds=lease), claim_token=token)
        )
    return ids, token


async def prepare(p: Platform, ids: list[uuid.UUID], token: uuid.UUID) -> list[Claimed]:
    oe, ws = outbox_events.c, webhook_subscriptions.c
    async with p.db.read() as conn:
        rows = (
            await conn.execute(
                select(
                    d.id.label("delivery_id"),
                    d.attempts,
                    d.subscription_id,
                    ws.url,
                    ws.secret,
                    ws.previous_secret,
                    ws.previous_secret_until,
                    ws.include_address,
                    *outbox_events.c,
                )
                .join(outbox_events, oe.seq == d.event_seq)
                .join(webhook_subscriptions, ws.id == d.subscription_id)
                .where(
                    d.id.in_(ids),
                    d.claim_token == token,  # a deleted subscription's are cleared
                    d.status == "pending",
                    ws.deleted_at.is_(None),
                )
            )
        ).all()
        shown = [r for r in rows if r.include_address and r.address_bidx]
        gone = await erased_profiles(conn, [r.profile_id for r in shown])
        shown = [r for r in shown if r.profile_id not in gone]
        addresses = await resolve_addresses(conn, p, [r.address_bidx for r in shown])
        holders = await _holders(conn, list(addresses))
        shown_ids = {r.delivery_id for r in shown}
    unsealed = await unseal_addresses(
        p.keys, [(r.id, r.address_sealed) for r in shown if r.address_bidx not in addresses]
    )
    out: list[Claimed] = []
    for r in rows:
        unsendable = None
        try:
            key = decrypt_secret(p.keys.system, r.subscription_id, r.secret)
        except CryptoError:  # a failed try like any other: retried, then dead and listed
            log.error("webhook_secret_unreadable", subscription_id=str(r.subscription_id))
            key, unsendable = b"", SECRET_UNREADABLE
        old_key = previous_key(
            p.keys.system, r.subscription_id, r.previous_secret, r.previous_secret_until
        )
        address = None
        if r.delivery_id in shown_ids:
            address = addresses.get(r.address_bidx) or unsealed.get(r.id)
        holder = holders.get(r.address_bidx) if address is not None else None
        body = msgspec.json.encode(with_address(event_payload(r), address))
        out.append(
            Claimed(
                id=r.delivery_id,
                token=token,
                event_id=r.id,
                subscription_id=r.subscription_id,
                attempts=r.attempts,
                url=r.url,
                key=key,
                body=body,
                old_key=old_key,
                address_included=address is not None and unsendable is None,
                sealed=r.address_sealed is not None,
                unsendable=unsendable,
                profile_id=holder or r.profile_id,
            )
        )
    return out


async def _holders(conn: AsyncConnection, bidxs: list[bytes]) -> dict[bytes, uuid.UUID]:
    """Blind index -> the profile holding that address now (one indexed query per 500)."""
    i = identities.c
    out: dict[bytes, uuid.UUID] = {}
    for start in range(0, len(bidxs), 500):
        rows = await conn.execute(
            select(i.bidx, i.profile_id).where(
                i.bidx.in_(bidxs[start : start + 500]), i.kind.in_(("email", "phone"))
            )
        )
        out.update({bidx: pid for bidx, pid in rows})
    return out


async def send(http: httpx.AsyncClient, cfg: DispatchConfig, item: Claimed) -> Outcome:
    if item.unsendable is not None:
        return Outcome(None, item.unsendable, 0)
    also = () if item.old_key is None else (item.old_key,)
    headers = signing.headers(item.key, str(item.event_id), item.body, also=also)
    headers["content-type"] = "application/json"
    headers["user-agent"] = USER_AGENT
    started = time.perf_counter()
    code: int | None = None
    error: str | None = None
    try:
        # the timeout bounds the whole try, as well as each read (httpx's own): a receiver
        # that answers a byte at a time within each read's timeout held the request for as
        # long as it liked (a request slot, its customer's later events, past its lease)
        async with (
            asyncio.timeout(cfg.timeout),
            http.stream(
                "POST", item.url, content=item.body, headers=headers, timeout=cfg.timeout
            ) as response,
        ):
            code = response.status_code
            size = int(response.headers.get("content-length") or MAX_RESPONSE_READ + 1)
            if size <= MAX_RESPONSE_READ:
                await response.aread()  # lets the connection be reused
    except Exception as exc:  # whatever the client raises is a failed try:
        # httpx's own errors, and those it lets through before sending (InvalidURL, an IDNA
        # error). Unrecorded, the delivery would be leased again and again, never dead, and
        # hold back its customer's later events for good.
        error = type(exc).__name__[:64]
    if code is not None and not 200 <= code < 300:
        error = f"http {code}"
    return Outcome(code, error, int((time.perf_counter() - started) * 1000))


def _new_state(
    cfg: DispatchConfig,
    item: Claimed,
    outcome: Outcome,
    now: datetime,
    rng: random.Random | None,
) -> tuple[str, dict[str, Any]]:
    number = item.attempts + 1
    values: dict[str, Any] = {
        "attempts": number,
        "last_status_code": outcome.status_code,
        "last_error": outcome.error,
        "delivered_at": None,
        "next_attempt_at": None,
    }
    if outcome.ok:
        return "delivered", {**values, "status": "delivered", "delivered_at": now}
    if number >= cfg.max_attempts:
        return "dead", {**values, "status": "dead"}
    later = now + timedelta(seconds=retry_delay(number, cfg, rng))
    return "pending", {**values, "status": "pending", "next_attempt_at": later}


async def record(
    p: Platform,
    cfg: DispatchConfig,
    results: list[tuple[Claimed, Outcome]],
    rng: random.Random | None = None,
) -> list[str]:
    """Store the tries and the deliveries' new states, in one transaction; returns the states.
    An answer for a delivery that is no longer this claim's (its lease ran out and another
    dispatcher took it, or it was cancelled) is kept as a try but changes nothing."""
    if not results:
        return []
    async with p.db.write() as conn:
        return await record_in(conn, p.keys, cfg, results, rng)


async def record_in(
    conn: AsyncConnection,
    keys: Keyring,
    cfg: DispatchConfig,
    results: list[tuple[Claimed, Outcome]],
    rng: random.Random | None = None,
) -> list[str]:
    """`record` inside the caller's write transaction (`keys` forgets the sealed addresses
    sent to everyone allowed to see them)."""
    if not results:
        return []
    now = utcnow()
    planned = [
        (item, outcome, *_new_state(cfg, item, outcome, now, rng)) for item, outcome in results
    ]
    stmt = (
        update(webhook_deliveries)
        .where(d.id == bindparam("b_id"), d.claim_token == bindparam("b_token"))
        .values(
            status=bindparam("n_status"),
            attempts=bindparam("n_attempts"),
            total_attempts=d.total_attempts + 1,
            lease_until=None,
            claim_token=None,
            last_status_code=bindparam("n_last_status_code"),
            last_error=bindparam("n_last_error"),
            delivered_at=func.coalesce(
                bindparam("n_delivered_at", type_=UTCDateTime), d.delivered_at
            ),
            next_attempt_at=func.coalesce(
                bindparam("n_next_attempt_at", type_=UTCDateTime), d.next_attempt_at
            ),
        )
    )
    # an answer for a delivery that is no longer ours (lease ran out, cancelled) changes nothing
    await conn.execute(
        stmt,
        [
            {"b_id": item.id, "b_token": item.token, **{f"n_{k}": v for k, v in values.items()}}
            for item, _outcome, _state, values in planned
        ],
    )
    await conn.execute(
        insert(webhook_attempts),
        [
            {
                "id": new_id(),
                "delivery_id": item.id,
                "number": item.attempts + 1,
                "at": now,
                "status_code": outcome.status_code,
                "error": outcome.error,
                "duration_ms": outcome.duration_ms,
            }
            for item, outcome, _state, _values in planned
        ],
    )
    sealed = [item.event_id for item, _outcome, _state, _values in planned if item.sealed]
    if sealed:
        await forget_sent(conn, keys, event_ids=sealed)
    for item, outcome, _state, _values in planned:
        if item.address_included:  # an address left the platform: a disclosure
            await log_access(
                conn,
                Principal(name=f"webhook:{item.subscription_id}", role="system"),
                "webhook_delivery",
                object_type="webhook",
                object_id=str(item.subscription_id),
                profile_id=item.profile_id,  # whose address: her access request lists it
                rows=1,
                detail={"event_id": str(item.event_id), "status_code": outcome.status_code},
            )
    for item, _outcome, state, values in planned:
        if state == "dead":
            log.warning(
                "webhook_dead_letter",
                delivery_id=str(item.id),
                subscription_id=str(item.subscription_id),
                attempts=values["attempts"],
            )
    return [state for _item, _outcome, state, _values in planned]
