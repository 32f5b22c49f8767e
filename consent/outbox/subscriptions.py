"""Webhook subscriptions: create (the secret is shown once), list, read, rotate, delete.

The signing secret is stored encrypted under the system key, bound to the subscription's id;
the dispatcher decrypts it to sign. A rotation replaces it (the new one is shown once) and
keeps the replaced one, encrypted the same way, signing beside it until the overlap ends;
housekeeping then forgets it (`forget_expired_secrets`). Deleting a subscription keeps its
delivery history but cancels what was still pending; it receives nothing more.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta

import httpx
import structlog
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.access_log import log_access
from cdp.apikeys import Principal
from cdp.crypto.fields import CryptoError, FieldCipher
from cdp.db.partial import is_not
from cdp.errors import InvalidInput, NotFound
from cdp.ids import new_id, parse_uuid, utcnow
from cdp.platform import Platform
from cdp.segments.cursor import check_limit, decode_cursor, encode_cursor
from consent.outbox import signing
from consent.outbox.config import DispatchConfig
from consent.outbox.enqueue import DEFAULT_KINDS, KINDS
from consent.outbox.fanout import hold_fan_out
from consent.outbox.schemas import (
    DeliveryCounts,
    RotateIn,
    SubscriptionIn,
    SubscriptionList,
    SubscriptionOut,
)
from consent.outbox.sealed import forget_sent
from consent.outbox.tables import outbox_events, webhook_deliveries, webhook_subscriptions
from consent.outbox.targets import ip_literal, private_allowed, refuse_private_literal

log = structlog.get_logger(__name__)
ws = webhook_subscriptions.c
# a host name as sent on the wire (international names in their IDNA form)
_HOST_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


def secret_place(subscription_id: uuid.UUID) -> str:
    return f"webhook_subscriptions.secret|{subscription_id}"


def previous_place(subscription_id: uuid.UUID) -> str:
    return f"webhook_subscriptions.previous_secret|{subscription_id}"


def decrypt_secret(system: FieldCipher, subscription_id: uuid.UUID, blob: bytes) -> bytes:
    return system.decrypt_bytes(secret_place(subscription_id), blob)


def previous_key(
    system: FieldCipher,
    subscription_id: uuid.UUID,
    blob: bytes | None,
    until: datetime | None,
    now: datetime | None = None,
) -> bytes | None:
    """The replaced secret's key while its overlap lasts (None after it, or unreadable)."""
    if blob is None or until is None or until <= (now or utcnow()):
        return None
    try:
        return system.decrypt_bytes(previous_place(subscription_id), blob)
    except CryptoError:
        log.error("webhook_previous_secret_unreadable", subscription_id=str(subscription_id))
        return None


def check_kinds(kinds: list[str] | None) -> list[str]:
    if kinds is None:
        return list(DEFAULT_KINDS)
    if not kinds:
        raise InvalidInput.field("kinds", "name at least one event kind")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise InvalidInput.field("kinds", "unknown event kind; one of " + ", ".join(KINDS))
    return [k for k in KINDS if k in kinds]


def check_url(url: str, *, production: bool, allow_private: bool | None = None) -> str:
    """The URL as given, if the dispatcher's HTTP client can send to it (parsed by that very
    client, httpx, so a URL that passes here is one a delivery can be attempted on)."""
    text = url.strip()
    try:
        parsed = httpx.Request("POST", text).url  # the Host header too: IDNA is checked here
        port = parsed.port
        host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError):  # also an invalid international name (IDNA)
        raise InvalidInput.field("url", "must be an absolute http or https URL") from None
    if parsed.scheme not in ("http", "https") or not host:
        raise InvalidInput.field("url", "must be an absolute http or https URL")
    if port is not None and not 1 <= port <= 65535:
        raise InvalidInput.field("url", "the port must be a number from 1 to 65535")
    if ip_literal(host) is None and not _HOST_NAME.fullmatch(host):
        raise InvalidInput.field("url", "the host is not a valid name or address")
    if not private_allowed(allow_private, production=production):
        refuse_private_literal(host)
    if parsed.userinfo:
        raise InvalidInput.field("url", "must not carry credentials; receivers check signatures")
    if production and parsed.scheme != "https":
        raise InvalidInput.field("url", "must use https in production")
    return text


def _out(row, counts: DeliveryCounts | None = None, secret: str | None = None) -> SubscriptionOut:  # type: ignore[no-untyped-def]
    until = row.previous_secret_until
    return SubscriptionOut(
        id=str(row.id),
        url=row.url,
        kinds=list(row.kinds),
        include_address=row.include_address,
        description=row.description,
        created_at=row.created_at,
        created_by=row.created_by,
        secret=secret,
        deliveries=counts,
        previous_secret_expires_at=until if until is not None and until > utcnow() else None,
    )


async def create(p: Platform, who: Principal, body: SubscriptionIn) -> SubscriptionOut:
    kinds = check_kinds(body.kinds)
    url = check_url(
        body.url,
        production=p.settings.is_production,
        allow_private=DispatchConfig.from_env().allow_private,
    )
    sid = new_id()
    secret = signing.new_secret()
    row = {
        "id": sid,
        "url": url,
        "kinds": kinds,
        "include_address": body.include_address,
        "description": body.description,
        "secret": p.keys.system.encrypt(secret_place(sid), signing.secret_key(secret)),
        "created_by": who.name,
        "deleted_at": None,
    }
    async with p.db.write() as conn:
        # The subscription gets the events recorded from its creation on. Its time is taken
        # with fan-out held off until it commits: taken before, a fan-out could pass an event
        # recorded after it while the subscription was not yet visible, and it was missed.
        await hold_fan_out(conn)
        row["created_at"] = utcnow()
        await conn.execute(insert(webhook_subscriptions).values(**row))
        await log_access(
            conn,
            who,
            "webhook_subscribe",
            object_type="webhook",
            object_id=str(sid),
            rows=0,
            detail={"kinds": kinds, "include_address": body.include_address},
        )
        stored = (await conn.execute(select(webhook_subscriptions).where(ws.id == sid))).one()
    return _out(stored, DeliveryCounts(), secret)


async def load(
    conn: AsyncConnection, subscription_id: str | uuid.UUID, *, for_update: bool = False
):  # type: ignore[no-untyped-def]
    """The live subscription; `for_update`: its row locked until the commit (PostgreSQL), for
    a change computed from what it holds."""
    sid = subscription_id if isinstance(subscription_id, uuid.UUID) else parse_uuid(subscription_id)
    row = None
    if sid is not None:
        query = select(webhook_subscriptions).where(ws.id == sid, ws.deleted_at.is_(None))
        if for_update:
            query = query.with_for_update()
        row = (await conn.execute(query)).first()
    if row is None:
        raise NotFound("no such webhook subscription")
    return row


async def counts(conn: AsyncConnection, sid: uuid.UUID) -> DeliveryCounts:
    d = webhook_deliveries.c
    rows = await conn.execute(
        select(d.status, func.count()).where(d.subscription_id == sid).group_by(d.status)
    )
    return DeliveryCounts(**{status: n for status, n in rows})


async def get(p: Platform, subscription_id: str) -> SubscriptionOut:
    async with p.db.read() as conn:
        row = await load(conn, subscription_id)
        out = _out(row, await counts(conn, row.id))
        out.unqueued_since = (await conn.execute(_OLDEST_UNQUEUED)).scalar()
        return out


# events the fan-out has not queued yet: their subscriptions cannot list them yet
_OLDEST_UNQUEUED = select(func.min(outbox_events.c.recorded_at)).where(
    is_not(outbox_events.c.fanned_out)
)


async def list_all(p: Platform, *, limit: int | None, cursor: str | None) -> SubscriptionList:
    n = check_limit(limit)
    after = decode_cursor(cursor, scope="webhooks")
    query = select(webhook_subscriptions).where(ws.deleted_at.is_(None))
    if after is not None:
        query = query.where(ws.id > after)
    async with p.db.read() as conn:
        rows = (await conn.execute(query.order_by(ws.id).limit(n + 1))).all()
    more = len(rows) > n
    rows = rows[:n]
    return SubscriptionList(
        items=[_out(r) for r in rows],
        next_cursor=encode_cursor(rows[-1].id, scope="webhooks") if more else None,
    )


async def rotate(
    p: Platform, who: Principal, subscription_id: str, body: RotateIn | None
) -> SubscriptionOut:
    """A new secret (returned once); the replaced one signs too for `overlap_seconds`. A
    rotation during an overlap keeps only the secret it replaces: at most two ever sign."""
    overlap = (body or RotateIn()).overlap_seconds
    secret = signing.new_secret()
    now = utcnow()
    async with p.db.write() as conn:
        # locked: a rotation at the same time replaces this one's secret, not the one it read
        row = await load(conn, subscription_id, for_update=True)
        previous, until = None, None
        if overlap > 0:
            try:
                key = decrypt_secret(p.keys.system, row.id, row.secret)
                previous = p.keys.system.encrypt(previous_place(row.id), key)
                until = now + timedelta(seconds=overlap)
            except CryptoError:  # nothing to overlap with: it could not sign anyway
                log.error("webhook_secret_unreadable", subscription_id=str(row.id))
        await conn.execute(
            update(webhook_subscriptions)
            .where(ws.id == row.id)
            .values(
                secret=p.keys.system.encrypt(secret_place(row.id), signing.secret_key(secret)),
                previous_secret=previous,
                previous_secret_until=until,
            )
        )
        await log_access(
            conn,
            who,
            "webhook_rotate_secret",
            object_type="webhook",
            object_id=str(row.id),
            rows=0,
            detail={"overlap_seconds": overlap if previous is not None else 0},
        )
        stored = (await conn.execute(select(webhook_subscriptions).where(ws.id == row.id))).one()
        return _out(stored, await counts(conn, row.id), secret)


async def forget_expired_secrets(conn: AsyncConnection, now: datetime | None = None) -> None:
    """Drop the replaced secrets whose overlap has ended (housekeeping)."""
    await conn.execute(
        update(webhook_subscriptions)
        .where(ws.previous_secret_until <= (now or utcnow()))
        .values(previous_secret=None, previous_secret_until=None)
    )


async def delete(p: Platform, who: Principal, subscription_id: str) -> None:
    d = webhook_deliveries.c
    async with p.db.write() as conn:
        # no fan-out meanwhile: one that ran beside it locked the deliveries (recording their
        # answers), then waited for the subscription's row this holds, while this waited for
        # those deliveries (PostgreSQL: a deadlock, one of the two undone)
        await hold_fan_out(conn)
        row = await load(conn, subscription_id)
        await conn.execute(
            update(webhook_subscriptions).where(ws.id == row.id).values(deleted_at=utcnow())
        )
        await conn.execute(
            update(webhook_deliveries)
            .where(d.subscription_id == row.id, d.status == "pending")
            .values(status="cancelled", lease_until=None, claim_token=None)
        )
        if row.include_address:  # what only it still had to be sent
            await forget_sent(conn, p.keys)
        await log_access(
            conn, who, "webhook_unsubscribe", object_type="webhook", object_id=str(row.id), rows=0
        )
