"""Pages of a segment's members: members, export and ad-hoc query all go through `_select`
(the one SQL query of `audience.members_query`) and `_render`.

The database evaluates the rule and the contactability rule and returns at most `limit` rows
after the keyset position; Python decrypts only those (one `ciphers` call per page) and signs
an unsubscribe token per member. Each page is evaluated afresh, so an opt-out made between two
pages removes the customer from the later ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.fields import FieldCipher
from cdp.ids import utcnow
from cdp.platform import Platform
from cdp.segments.audience import Audience, members_query, tune
from cdp.segments.conditions import compile_condition
from cdp.segments.rules import Condition
from consent.subjects import profile_subject
from consent.tokens import TokenClaims, issue


@dataclass(frozen=True, slots=True)
class Definition:
    purpose: str
    channel: str
    condition: Condition


class Member(msgspec.Struct):
    profile_id: str
    address: str
    unsubscribe_token: str
    first_name: str | None


MEMBER_FIELDS = Member.__struct_fields__


@dataclass(slots=True)
class Page:
    items: list[Member]
    next_after: uuid.UUID | None  # keyset position of the next page; None on the last page
    # per item, in order: (profile id, id of the identity whose address was sent as the driver
    # returned it, or None for push/messenger): what an export records of whom it handed out
    handed: list[tuple[uuid.UUID, Any]]


@dataclass(slots=True)
class _Rows:
    """What the database returned for one page, with the data keys of its profiles."""

    rows: list[Row]
    ciphers: dict[uuid.UUID, FieldCipher]
    kind: str
    next_after: uuid.UUID | None


async def _select(
    conn: AsyncConnection,
    p: Platform,
    d: Definition,
    *,
    after: uuid.UUID | None,
    limit: int,
    now: datetime | None,
) -> _Rows:
    await tune(conn)
    audience = Audience(p.policy, d.purpose, d.channel, conn.dialect.name)
    compiled = compile_condition(d.condition, conn.dialect.name, now or utcnow())
    query = members_query(audience, compiled, after=after, limit=limit + 1)
    rows = list((await conn.execute(query)).all())
    more = len(rows) > limit
    del rows[limit:]
    ciphers = await p.keys.ciphers(conn, [r[0] for r in rows])
    return _Rows(rows, ciphers, audience.kind, rows[-1][0] if more else None)


def _render(p: Platform, d: Definition, got: _Rows) -> Page:
    """Decrypt the page and sign a token per member (pure CPU: no database)."""
    key, kind, purpose, channel = p.keys.token_key, got.kind, d.purpose, d.channel
    items: list[Member] = []
    handed: list[tuple[uuid.UUID, Any]] = []
    for pid, first_name, bidx, value, identity_id in got.rows:
        cipher = got.ciphers.get(pid)
        if cipher is None:  # erased since the query ran: its data key is gone
            continue
        if kind == "profile":
            address, subject = str(pid), profile_subject(pid)
        else:
            address, subject = cipher.decrypt("identities.value", value), bidx
        token = issue(key, TokenClaims(pid, kind, subject, purpose, channel))
        name = cipher.decrypt("profiles.first_name", first_name) if first_name else None
        items.append(Member(str(pid), address, token, name))  # type: ignore[arg-type]
        handed.append((pid, identity_id))
    return Page(items, got.next_after, handed)


async def members_page(
    conn: AsyncConnection,
    p: Platform,
    d: Definition,
    *,
    after: uuid.UUID | None,
    limit: int,
    now: datetime | None = None,
) -> Page:
    """At most `limit` members after the keyset position `after`, in profile id order."""
    got = await _select(conn, p, d, after=after, limit=limit, now=now)
    return _render(p, d, got)


async def member_pages(
    p: Platform, d: Definition, *, page_size: int, now: datetime | None = None
) -> AsyncIterator[Page]:
    """Every page of the segment in order, each selected in its own read transaction exactly
    as `members_page` does. The next page's query runs while this page is decrypted."""
    now = now or utcnow()

    async def select_after(after: uuid.UUID | None) -> _Rows:
        async with p.db.read() as conn:
            return await _select(conn, p, d, after=after, limit=page_size, now=now)

    pending: asyncio.Task[_Rows] | None = asyncio.ensure_future(select_after(None))
    try:
        while pending is not None:
            got = await pending
            pending = None
            if got.next_after is not None:
                pending = asyncio.ensure_future(select_after(got.next_after))
            yield _render(p, d, got)
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
