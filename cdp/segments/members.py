"""Pages of a segment's members: members, export and ad-hoc query all go through `select_rows`
(the one SQL query of `audience.members_query`) and `render`.

The database evaluates the rule and the contactability rule and returns at most `limit` rows
after the keyset position, each with its profile's wrapped data key (the same statement, so
one round trip and one snapshot; a key destroyed by an erasure is NULL and its member is left
out); rendering the page, Python unwraps the keys the key ring has not cached, decrypts only
those rows and signs an unsubscribe token per member, with the constant parts of the token
prepared once per page.
Each page is evaluated afresh, so an opt-out made between two pages removes the customer from
the later ones.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

import msgspec
from sqlalchemy import Select, and_, select, true
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.engine import DISCARD
from cdp.db.tables import profile_keys, profiles
from cdp.ids import utcnow
from cdp.key_store import FIRST_KEY_ID, share_id
from cdp.platform import Platform
from cdp.segments.audience import (
    AFTER,
    FIRST_ID,
    LAST_ID,
    UNTIL,
    Audience,
    members_query,
    tune,
)
from cdp.segments.conditions import Compiled, compile_condition
from cdp.segments.rules import Condition, to_json
from consent.policy import Policy
from consent.subjects import profile_subject
from consent.tokens import TokenSigner


@dataclass(frozen=True, slots=True)
class Definition:
    purpose: str
    channel: str
    condition: Condition
    automated: bool = False  # sent by automatic dialling or mailing (consent.rule)

    def canonical(self) -> bytes:
        """The definition as canonical JSON: equal bytes, the same audience. (`automated` is
        added only where set: a definition saved before it keeps its digest.)"""
        parts: list[Any] = [self.purpose, self.channel, to_json(self.condition)]
        if self.automated:
            parts.append("automated")
        return msgspec.json.encode(parts, order="sorted")


class Member(msgspec.Struct, gc=False):  # strings only: nothing for the collector to walk
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
class PageRows:
    """What the database returned for one page: rows (profile id, first name, address bidx,
    address, identity id, data key id, wrapped data key half, whether the key is split; the
    key NULL where it is gone: the profile was erased), and the key store's halves of the
    split keys (absent where an erasure destroyed them). Unwrapping the keys is left to
    rendering, so that an export unwraps one page while the database selects the next."""

    rows: list[Row]
    kind: str
    next_after: uuid.UUID | None
    shares: dict[uuid.UUID, bytes]
    # the consent ledger's head when the rows were selected, where the caller read it (an
    # export, which may send them later: cdp.segments.pages)
    ledger_seq: int | None = None
    # an export's: the range of profile ids (after, until] the rows were selected from and
    # when, by its own clock of selections (cdp.segments.pages.Selected)
    selected: Any = None


def _with_data_keys(query: Select, dialect: str) -> Select:
    """The members query's rows followed by (key id, wrapped data key) of the key the profile's
    fields are encrypted under; NULLs where it was destroyed.

    On PostgreSQL the key is a LATERAL primary-key lookup per member. As a plain outer join,
    at 100,000 customers the planner hashed the whole profile_keys table for every page: a
    sequential scan of every customer's key took 14 of a 2,000-row page's 38 ms (26 ms
    now). At 1,000,000 both forms ran alike. SQLite joins by nested loops over the primary key
    either way."""
    pk = profile_keys.c
    members = query.add_columns(profiles.c.key_id.label("data_key_id")).subquery("members")
    m = members.c
    on = and_(pk.profile_id == m.id, pk.key_id == m.data_key_id)
    if dialect == "postgresql":
        key = select(pk.key_id, pk.wrapped, pk.split).where(on).limit(1).lateral("data_key")
        source = members.outerjoin(key, true())
        key_id, wrapped, split = key.c.key_id, key.c.wrapped, key.c.split
    else:
        source = members.outerjoin(profile_keys, on)
        key_id, wrapped, split = pk.key_id, pk.wrapped, pk.split
    return (
        select(m.id, m.first_name, m.bidx, m.value, m.identity_id, key_id, wrapped, split)
        .select_from(source)
        .order_by(m.id)
    )


async def select_rows(
    conn: AsyncConnection,
    p: Platform,
    d: Definition,
    *,
    after: uuid.UUID | None,
    until: uuid.UUID = LAST_ID,
    limit: int,
    now: datetime | None,
) -> PageRows:
    await tune(conn)
    query, compiled, kind = _statement(p.policy, d, conn.dialect.name, limit + 1)
    now = now or utcnow()
    audience = Audience(p.policy, d.purpose, d.channel, conn.dialect.name, d.automated)
    params = {
        AFTER: after or FIRST_ID,
        UNTIL: until,
        **compiled.params(now),
        **audience.params(now),
    }
    options = compile_options(conn, d.canonical())
    rows = list((await conn.execute(query, params, execution_options=options)).all())
    more = len(rows) > limit
    del rows[limit:]
    # each split key's share by profile (a later key's is kept under an id of its own)
    asked = {r[0] if r[5] == FIRST_KEY_ID else share_id(r[0], r[5]): r[0] for r in rows if r[7]}
    got = await p.keys.store.get(asked) if asked and p.keys.store else {}
    shares = {asked[sid]: share for sid, share in got.items()}
    return PageRows(rows, kind, rows[-1][0] if more else None, shares)


# Building the members statement (several nested subqueries) cost as much Python time as
# decrypting a page of 100 members. A statement depends only on the policy, the definition,
# the dialect and the page size (the keyset position, the "days since" cutoffs and the times
# before which a grant has lapsed, `Audience.params`, are bind parameters given at execution),
# so the statements of recent definitions are kept.
#
# A statement's memory grows with its definition: about 136 KiB for one condition, 800 KiB for
# 300, 2 MiB for the largest definition the rules allow (500 parts, 20,000 `in` values), and
# SQLAlchemy keeps a compiled copy of each statement of a new shape as well (its engine's
# compiled cache, 500 entries), and the driver keeps the statement prepared from it in each
# connection (sqlite3's cache of 128 statements, about 2 MB each for the largest; SQLAlchemy's
# asyncpg adapter's cache of 100, about 0.6 MB each): distinct large definitions sent to
# `POST /v1/segments/query` could grow a process by gigabytes. A definition over
# LARGE_DEFINITION bytes of canonical JSON (about 40 conditions) is therefore built for each
# page and compiled without SQLAlchemy's cache, and the connection that ran it is closed after
# its read transaction instead of going back to the pool (`compile_options`): its query costs
# much more than building it, or than opening a connection, does.
_STATEMENTS: OrderedDict[tuple, tuple[Select, Compiled, str, Policy]] = OrderedDict()
_STATEMENTS_KEPT = 256
LARGE_DEFINITION = 4096


def compile_options(conn: AsyncConnection, canonical: bytes) -> dict[str, Any]:
    """Execution options of a statement made from a definition of this canonical JSON, to be
    run on `conn` in a `Database.read` transaction: when the definition is large, kept out of
    SQLAlchemy's compiled cache, and the connection is closed after the transaction."""
    if len(canonical) <= LARGE_DEFINITION:
        return {}
    conn.info[DISCARD] = True
    return {"compiled_cache": None}


def _statement(
    policy: Policy, d: Definition, dialect: str, limit: int
) -> tuple[Select, Compiled, str]:
    """(members statement with data keys, its compiled condition, address kind). Kept by the
    definition's canonical JSON, not the parsed rule: in Python True == 1, in a rule they
    are different values."""
    canonical = d.canonical()
    key = (id(policy), canonical, dialect, limit)
    hit = _STATEMENTS.get(key)
    if hit is not None and hit[3] is policy:
        _STATEMENTS.move_to_end(key)
        return hit[:3]
    audience = Audience(policy, d.purpose, d.channel, dialect, d.automated)
    compiled = compile_condition(d.condition, dialect, utcnow(), audience.scope)
    query = _with_data_keys(members_query(audience, compiled, after=None, limit=limit), dialect)
    if len(canonical) > LARGE_DEFINITION:
        return query, compiled, audience.kind
    _STATEMENTS[key] = (query, compiled, audience.kind, policy)
    if len(_STATEMENTS) > _STATEMENTS_KEPT:
        _STATEMENTS.popitem(last=False)
    return query, compiled, audience.kind


class _Renderer:
    """Decrypts a page and signs a token per member (pure CPU: no database), in slices."""

    __slots__ = ("_by_profile", "_cipher", "_got", "_shares", "_sign", "handed", "items")

    def __init__(self, p: Platform, d: Definition, got: PageRows, *, scan: bool = False) -> None:
        self._got = got
        self._shares = got.shares
        # the key ring's cache first, else unwrap; a scan (an export) leaves the cache as it was
        self._cipher = partial(p.keys.cipher_from_row, remember=not scan)
        self._sign = TokenSigner(p.keys.token_key, got.kind, d.purpose, d.channel).issue
        self._by_profile = got.kind == "profile"
        self.items: list[Member] = []
        self.handed: list[tuple[uuid.UUID, Any]] = []

    def rows(self, start: int, stop: int) -> None:
        sign, by_profile, data_key = self._sign, self._by_profile, self._cipher
        shares = self._shares
        add_item, add_handed = self.items.append, self.handed.append
        for row in self._got.rows[start:stop]:
            pid, first_name, bidx, value, identity_id, key_id, wrapped, split = row
            if wrapped is None:  # erased: its data key is gone
                continue
            share = shares.get(pid) if split else None
            if split and share is None:  # erased: its share is gone from the key store
                continue
            cipher = data_key(pid, key_id, wrapped, share)
            profile_id = str(pid)
            if by_profile:
                address, subject = profile_id, profile_subject(pid)
            else:
                address, subject = cipher.decrypt("identities.value", value), bidx
            name = cipher.decrypt("profiles.first_name", first_name) if first_name else None
            add_item(Member(profile_id, address, sign(pid, subject), name))
            add_handed((pid, identity_id))

    def page(self) -> Page:
        return Page(self.items, self._got.next_after, self.handed)


def render(p: Platform, d: Definition, got: PageRows) -> Page:
    r = _Renderer(p, d, got)
    r.rows(0, len(got.rows))
    return r.page()


_SLICE = 50  # rows decrypted between two turns of the event loop (under half a millisecond)


async def render_for_export(p: Platform, d: Definition, got: PageRows) -> Page:
    """`render` for an export, giving the event loop a turn between slices: the next page's
    query, already started, makes its round trips (connection, BEGIN, SET, the query)
    meanwhile instead of waiting for the whole page to be decrypted. An export reads each
    member once, so the data keys it unwraps are not cached."""
    r = _Renderer(p, d, got, scan=True)
    for start in range(0, len(got.rows), _SLICE):
        if start:
            await asyncio.sleep(0)
        r.rows(start, start + _SLICE)
    return r.page()


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
    got = await select_rows(conn, p, d, after=after, limit=limit, now=now)
    return render(p, d, got)
