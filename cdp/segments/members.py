"""One page of a segment's members: the one function that members, export and ad-hoc query
all go through.

The database evaluates the rule and the contactability rule and returns at most `limit` rows
after the keyset position; Python decrypts only those (one `ciphers` call per page) and signs
an unsubscribe token per member. Each page is evaluated afresh, so an opt-out made between two
pages removes the customer from the later ones.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.ids import utcnow
from cdp.platform import Platform
from cdp.segments.audience import Audience, members_query
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


async def members_page(
    conn: AsyncConnection,
    p: Platform,
    d: Definition,
    *,
    after: uuid.UUID | None,
    limit: int,
    now: datetime | None = None,
) -> Page:
    audience = Audience(p.policy, d.purpose, d.channel, conn.dialect.name)
    compiled = compile_condition(d.condition, conn.dialect.name, now or utcnow())
    query = members_query(audience, compiled, after=after, limit=limit + 1)
    rows = (await conn.execute(query)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    ciphers = await p.keys.ciphers(conn, [r[0] for r in rows])
    key, kind, purpose, channel = p.keys.token_key, audience.kind, d.purpose, d.channel
    items: list[Member] = []
    for pid, first_name, bidx, value in rows:
        cipher = ciphers.get(pid)
        if cipher is None:  # erased since the query ran: its data key is gone
            continue
        if kind == "profile":
            address, subject = str(pid), profile_subject(pid)
        else:
            address, subject = cipher.decrypt("identities.value", value), bidx
        token = issue(key, TokenClaims(pid, kind, subject, purpose, channel))
        name = cipher.decrypt("profiles.first_name", first_name) if first_name else None
        items.append(Member(str(pid), address, token, name))  # type: ignore[arg-type]
    return Page(items, rows[-1][0] if more else None)
