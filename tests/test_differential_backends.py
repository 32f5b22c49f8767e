"""Differential test: the same random sequence of API calls on SQLite and on PostgreSQL, and every
answer compared between the two.

Each example starts from two empty databases (a fresh SQLite file, the session's PostgreSQL
database emptied) and sends both, through HTTP, the same operations: profile records (alone
and in batches, with overlapping emails, phones and external ids so that they merge; Cyrillic
and mixed-case names; cities in several cases and spellings; traits of every type), purchase
and other events (amounts with cents, categories in several spellings), consents granted and
withdrawn by address or by profile, opt-outs, SMS stop replies, one-click unsubscribes,
erasures, unmerges, segments over every field of API.md, and reads: profiles, consents,
members pages (walked with the cursor), stats, exports (NDJSON and CSV), ad-hoc queries,
audit events and verification, access requests. After every step, the status and body of the
two answers must be equal.

Only what is legitimately random is normalised (`Canon`): ids (UUIDs) are named by the order
in which each run first showed them, so the n-th new id of one run must be where the n-th of
the other is; tokens, cursors and hashes (which cover ids and times) are masked; and a
timestamp within minutes of now (a recording time) is masked. Times the test sends are whole
days in the past, at noon, so that no "days since" boundary falls between the two runs.

CI runs a fixed, derandomized set; `CDP_DIFF_EXAMPLES=500` hunts further with random seeds.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from api.app import create_app
from cdp.platform import Platform, open_platform
from tests.conftest import empty_postgres, make_settings, migrated_pg, role_keys
from tests.helpers import pg_admin

HUNT = int(os.environ.get("CDP_DIFF_EXAMPLES", "0"))
PG_LOCALE = os.environ.get("CDP_DIFF_PG_LOCALE", "ru-RU")
LOG = os.environ.get("CDP_DIFF_LOG")  # a file to append each failing sequence to
NOW = datetime.now(UTC)
TODAY_NOON = NOW.replace(hour=12, minute=0, second=0, microsecond=0)
if NOW - timedelta(minutes=10) < TODAY_NOON:  # never ahead of the servers' clock
    TODAY_NOON -= timedelta(days=1)

# ---------------------------------------------------------------------------------------------
# the vocabulary: few values, so that records overlap and merge
EMAILS = [
    "anna.ivanova@example.com",
    " Anna.Ivanova@Example.COM ",  # the same address
    "boris@example.ru",
    "vera@пример.рф",
    "gleb+tag@example.com",
]
PHONES = ["+7 916 123-45-67", "8 916 123 45 67", "+79031234567", "+1 415 555 2671"]
EXTERNAL = [("crm", "C-1"), ("crm", "c-1"), ("shop", "C-1"), ("crm", "C-2")]
SOURCES = ["crm", "shop", "pos"]
NAMES = ["Анна", "АННА", "анна", "Ёлка", "Boris", "boris", "Zoë", None]
CITIES = [
    None,
    "Moscow",
    "moscow",
    "МОСКВА",
    "Москва",
    " москва ",
    "São Paulo",
    "SAO PAULO",
    "Straße",
    "STRASSE",
    "İstanbul",
    "istanbul",
    "Ёлкино",
    "Елкино",
]
COUNTRIES = [None, "RU", "ru", "DE", "US"]
TRAIT_NAMES = ["tier", "score", "vip", "уровень", "Tier"]
NUMBERS_AND_TEXT = st.one_of(
    st.sampled_from(["gold", "Gold", "GOLD", "золото", "ЗОЛОТО", "5", "", "a%b_c", "ёлка"]),
    st.sampled_from([5, 5.0, 2.5, -1, 0, 0.1, 10**15, 2**53 + 1, -(2**63), 2**63 - 1]),
    st.sampled_from([1e300, -0.0, 1e-7, 1.5e16, 0.30000000000000004, 12345678.901, 2**64]),
    st.sampled_from(["gold ", " gold", "ЁЛКА", "ёлка", "e\u0301", "\u00e9", "5.0", "1e3"]),
    st.booleans(),
)
TRAIT_VALUES = st.one_of(NUMBERS_AND_TEXT, st.none())
CATEGORIES = ["Shoes", " shoes ", "SHOES", "ОБУВЬ", "обувь", "Straße", "strasse", "a%", "a_"]
AMOUNTS = ["0.01", "0.10", "0.20", "1999.90", "4500", "100.5", "9999999999999.99", "0.07"]
CURRENCIES = ["RUB", "rub", "USD"]
EVENT_TYPES = ["purchase", "Purchase ", "refund", "view"]
PURPOSES = ["marketing", "service"]
CHANNELS = ["email", "sms", "push", "phone"]
EVIDENCE = {"wording_id": "nl-v1", "method": "checkbox", "ip": "203.0.113.7"}

days_ago = st.integers(0, 800)
maybe_days_ago = st.one_of(st.none(), days_ago)


def at(days: int | None) -> str | None:
    return None if days is None else (TODAY_NOON - timedelta(days=days)).isoformat()


# ---------------------------------------------------------------------------------------------
# strategies
@st.composite
def records(draw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"source": draw(st.sampled_from(SOURCES))}
    email = draw(st.one_of(st.none(), st.sampled_from(EMAILS)))
    phone = draw(st.one_of(st.none(), st.sampled_from(PHONES)))
    ext = draw(st.one_of(st.none(), st.sampled_from(EXTERNAL)))
    if email is None and phone is None and ext is None:
        email = draw(st.sampled_from(EMAILS))
    if email is not None:
        rec["email"] = email
    if phone is not None:
        rec["phone"] = phone
    if ext is not None:
        rec["source"], rec["external_id"] = ext
    for key, values in (("first_name", NAMES), ("last_name", NAMES), ("city", CITIES)):
        value = draw(st.sampled_from(values))
        if value is not None:
            rec[key] = value
    country = draw(st.sampled_from(COUNTRIES))
    if country is not None:
        rec["country"] = country
    if draw(st.booleans()):
        rec["jurisdiction"] = draw(st.sampled_from(["RU", "EU", "US-CA"]))
    traits = draw(st.dictionaries(st.sampled_from(TRAIT_NAMES), TRAIT_VALUES, max_size=3))
    if traits:
        rec["traits"] = traits
    if draw(st.integers(0, 3)) == 0:
        channel = "email" if "email" in rec else ("sms" if "phone" in rec else "push")
        consent = {
            "purpose": "marketing",
            "channel": channel,
            "status": draw(st.sampled_from(["granted", "withdrawn"])),
            "source": rec["source"],
            "evidence": {"wording_id": "nl-v1", "method": "import"},
        }
        when = draw(maybe_days_ago)
        if when is not None:
            consent["occurred_at"] = at(when)
        rec["consents"] = [consent]
    return rec


# an identifier of a customer: an address, an external id, or the n-th profile id seen
identifier = st.one_of(
    st.tuples(st.just("email"), st.sampled_from(EMAILS)),
    st.tuples(st.just("phone"), st.sampled_from(PHONES)),
    st.tuples(st.just("external"), st.sampled_from(EXTERNAL)),
    st.tuples(st.just("profile"), st.integers(0, 9)),
)

LEAF_FIELDS = {
    "country": (["eq", "ne", "in", "exists"], st.sampled_from(["RU", "ru", "DE", "US"])),
    "city": (
        ["eq", "ne", "in", "exists"],
        st.sampled_from([c for c in CITIES if c] + ["MOSCOW", "москва", "sao paulo", "strasse"]),
    ),
    "jurisdiction": (["eq", "ne", "in", "exists"], st.sampled_from(["RU", "eu", "US-CA"])),
    "source": (["eq", "ne", "in"], st.sampled_from([*SOURCES, "CRM"])),
    "orders_count": (
        ["eq", "ne", "in", "gt", "gte", "lt", "lte"],
        st.integers(0, 4),
    ),
    "total_spent": (
        ["eq", "ne", "gt", "gte", "lt", "lte"],
        st.sampled_from(
            [
                "0",
                "0.01",
                "0.1",
                "0.30",
                "0.3",
                "1999.90",
                "2000",
                "4500.00",
                0.3,
                100.5,
                0,
                2000,
                "9999999999999.99",
                "-0.01",
                "0.11",
                "0.27",
                "0.17",
            ]
        ),
    ),
    "last_order_days": (["eq", "ne", "gt", "gte", "lt", "lte", "exists"], st.integers(0, 900)),
    "first_order_days": (["eq", "ne", "gt", "gte", "lt", "lte", "exists"], st.integers(0, 900)),
    "created_days": (["eq", "ne", "gt", "gte", "lt", "lte"], st.integers(0, 3)),
    "consent_days": (["eq", "ne", "gt", "gte", "lt", "lte", "exists"], st.integers(0, 900)),
    "categories": (["contains", "in", "exists"], st.sampled_from([*CATEGORIES, "shoe", "%"])),
}
TRAIT_RULE_VALUES = st.one_of(
    NUMBERS_AND_TEXT,
    st.sampled_from(["old", "GOL", "%", "_", "5.0", "ЗОЛ", "зол"]),
    st.sampled_from([4.999, 5.0000001, 2**53, 2**53 + 1, 1e300, -1e300, 0.30000000000000004]),
    st.sampled_from([1.8446744073709552e19, 9.223372036854776e18, -9.223372036854776e18, 1e20]),
)


@st.composite
def leaves(draw: Any) -> dict[str, Any]:
    name = draw(st.sampled_from([*LEAF_FIELDS, "traits"]))
    if name == "traits":
        fld = "traits." + draw(st.sampled_from([*TRAIT_NAMES, "missing"]))
        op = draw(
            st.sampled_from(["eq", "ne", "in", "gt", "gte", "lt", "lte", "contains", "exists"])
        )
        values = TRAIT_RULE_VALUES
    else:
        fld = name
        ops, values = LEAF_FIELDS[name]
        op = draw(st.sampled_from(ops))
    if op == "exists":
        return {"field": fld, "op": op, "value": draw(st.booleans())}
    if op == "in":
        return {"field": fld, "op": op, "value": draw(st.lists(values, min_size=1, max_size=3))}
    value = draw(values)
    if fld.startswith("traits."):  # make most values fit the op (the rest are 400s, compared)
        if op in ("gt", "gte", "lt", "lte") and (isinstance(value, str | bool)):
            value = draw(
                st.sampled_from([0, 2.5, 5, 4.999, 2**53, 1e300, -1, 1.8446744073709552e19])
            )
        if op == "contains" and not isinstance(value, str):
            value = draw(st.sampled_from(["ol", "OL", "зол", "%", "_", "5"]))
    return {"field": fld, "op": op, "value": value}


conditions = st.recursive(
    leaves(),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: {"all": xs}),
        st.lists(inner, max_size=3).map(lambda xs: {"any": xs}),
        inner.map(lambda x: {"not": x}),
    ),
    max_leaves=5,
)
segment_scope = st.tuples(st.sampled_from(PURPOSES), st.sampled_from(["email", "sms", "push"]))

op = st.one_of(
    st.tuples(st.just("record"), records()),
    st.tuples(st.just("record"), records()),
    st.tuples(st.just("record"), records()),
    st.tuples(st.just("batch"), st.lists(records(), min_size=1, max_size=4)),
    st.tuples(
        st.just("event"),
        identifier,
        st.sampled_from(["shop", "pos"]),
        st.integers(0, 5),  # event id: repeats are idempotent
        st.sampled_from(EVENT_TYPES),
        st.sampled_from(AMOUNTS),
        st.sampled_from(CURRENCIES),
        st.sampled_from(CATEGORIES),
        days_ago,
    ),
    st.tuples(
        st.just("consent"),
        identifier,
        st.sampled_from(PURPOSES),
        st.sampled_from([*CHANNELS, "*"]),
        st.sampled_from(["granted", "withdrawn"]),
        maybe_days_ago,
    ),
    st.tuples(st.just("opt_out"), identifier, st.sampled_from(["*", "email", "sms", "push"])),
    st.tuples(st.just("stop"), st.sampled_from(PHONES), st.sampled_from(["STOP", "стоп", "hi"])),
    st.tuples(st.just("unsubscribe"), st.integers(0, 5)),
    st.tuples(st.just("erase"), identifier),
    st.tuples(st.just("unmerge"), st.integers(0, 9)),
    st.tuples(st.just("segment"), segment_scope, conditions),
    st.tuples(st.just("query"), segment_scope, conditions, st.sampled_from([1, 2, 50])),
    st.tuples(st.just("read"), identifier),
    st.tuples(st.just("access"), identifier),
    st.tuples(st.just("audit"), identifier),
    st.tuples(st.just("audit_window"), identifier, days_ago, days_ago),
)


# ---------------------------------------------------------------------------------------------
# normalising what is legitimately random
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
MASKED = {
    "unsubscribe_token",
    "next_cursor",
    "hash",
    "prev_hash",
    "head_hash",
    "token",
    "manage_url",
    "unsubscribe_url",
}
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


@dataclass
class Side:
    name: str
    platform: Platform
    client: httpx.AsyncClient
    keys: dict[str, dict[str, str]]
    labels: dict[str, int] = field(default_factory=dict)  # uuid -> order first shown
    ids: list[str] = field(default_factory=list)  # the reverse
    profiles: list[str] = field(default_factory=list)  # profile ids, in order first shown
    tokens: list[str] = field(default_factory=list)  # unsubscribe tokens handed out

    def label(self, value: str) -> str:
        key = value.lower()
        if key not in self.labels:
            self.labels[key] = len(self.ids)
            self.ids.append(key)
        return f"<id{self.labels[key]}>"

    def canon(self, obj: Any, key: str | None = None) -> Any:
        if isinstance(obj, dict):
            return {k: self.canon(v, k) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.canon(v, key) for v in obj]
        if isinstance(obj, str):
            if key in MASKED:
                return "<masked>"
            if key == "profile_id" and UUID_RE.fullmatch(obj) and obj not in self.profiles:
                self.profiles.append(obj)
            if TIME_RE.match(obj):
                try:
                    moment = datetime.fromisoformat(obj.replace("Z", "+00:00"))
                except ValueError:
                    return obj
                if moment.tzinfo and abs(moment - datetime.now(UTC)) < timedelta(minutes=30):
                    return "<now>"
                if key in ("due_at", "deadline", "extended_due_at"):  # counted from now
                    return "<due>"
                return obj
            return UUID_RE.sub(lambda m: self.label(m.group(0)), obj)
        return obj

    def profile(self, n: int) -> str:
        if not self.profiles:
            return "00000000-0000-7000-8000-000000000000"
        return self.profiles[n % len(self.profiles)]

    def identify(self, ident: tuple) -> dict[str, Any]:
        kind, value = ident
        if kind == "email":
            return {"email": value}
        if kind == "phone":
            return {"phone": value}
        if kind == "external":
            return {"source": value[0], "external_id": value[1]}
        return {"profile_id": self.profile(value)}


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    content_type: str


async def call(side: Side, method: str, url: str, role: str, **kw: Any) -> Answer:
    r = await side.client.request(method, url, headers=side.keys[role], **kw)
    ctype = r.headers.get("content-type", "").split(";")[0]
    if "ndjson" in ctype:
        body: Any = {"items": [json.loads(line) for line in r.text.splitlines() if line]}
    elif ctype.endswith("json"):
        body = r.json()
    elif ctype == "text/csv":
        rows = list(csv.reader(io.StringIO(r.text)))
        body = {"header": rows[:1], "items": [dict(zip(rows[0], x, strict=True)) for x in rows[1:]]}
    else:
        body = r.text
    if ctype == "text/csv" or "ndjson" in ctype:  # the bytes too: quoting, number forms, order
        raw = r.text
        for item in body["items"]:
            raw = raw.replace(item.get("unsubscribe_token") or "\0", "<masked>")
        body["bytes"] = raw
    if isinstance(body, dict) and "items" in body:
        for item in body["items"]:
            if isinstance(item, dict) and "unsubscribe_token" in item:
                side.tokens.append(item["unsubscribe_token"])
    return Answer(r.status_code, side.canon(body), ctype)


class Diff:
    """Both sides, and what each step answered on each."""

    def __init__(self, sqlite: Side, postgres: Side) -> None:
        self.sides = (sqlite, postgres)
        self.segments: list[tuple[str, str]] = []  # (sqlite id, postgres id) of saved segments
        self.step = 0

    async def both(self, what: str, request: Any) -> tuple[Answer, Answer]:
        """`request(side)` -> (method, url, role, kwargs); the two answers, asserted equal."""
        answers = []
        for side in self.sides:
            method, url, role, kw = request(side)
            answers.append(await call(side, method, url, role, **kw))
        a, b = answers
        assert (a.status, a.content_type) == (b.status, b.content_type), (what, a, b)
        assert a.body == b.body, (what, a.status, _first_difference(a.body, b.body))
        # the keys of each object in one order too (a client may print or hash the answer)
        assert json.dumps(a.body) == json.dumps(b.body), (what, "key order", a.body, b.body)
        return a, b

    # -- reads ---------------------------------------------------------------------------------
    async def walk_members(self, what: str, url: str, limit: int) -> None:
        cursors: list[str | None] = [None, None]
        for _ in range(100):

            def req(side: Side, cursors: list = cursors) -> tuple:
                i = self.sides.index(side)
                params: dict[str, Any] = {"limit": limit}
                if cursors[i]:
                    params["cursor"] = cursors[i]
                return "GET", url.format(seg=self.seg_id(side)), "marketing", {"params": params}

            raws = []
            for i, side in enumerate(self.sides):
                method, u, role, kw = req(side)
                r = await side.client.request(method, u, headers=side.keys[role], **kw)
                raws.append(r)
                cursors[i] = r.json().get("next_cursor") if r.status_code == 200 else None
            a, b = (
                Answer(r.status_code, s.canon(r.json()), "")
                for r, s in zip(raws, self.sides, strict=True)
            )
            assert a.status == b.status, (what, a, b)
            assert a.body == b.body, (what, _first_difference(a.body, b.body))
            for r, s in zip(raws, self.sides, strict=True):
                if r.status_code == 200:
                    s.tokens.extend(x["unsubscribe_token"] for x in r.json()["items"])
            if cursors[0] is None or cursors[1] is None:
                assert cursors[0] is None and cursors[1] is None, (what, "one side has more")
                return

    def seg_id(self, side: Side) -> str:
        i = self.sides.index(side)
        return self.current_segment[i]

    current_segment: tuple[str, str] = ("", "")

    async def observe_segment(self, pair: tuple[str, str], limit: int = 2) -> None:
        self.current_segment = pair

        def get(path: str, **params: Any) -> Any:
            return lambda side: (
                "GET",
                f"/v1/segments/{self.seg_id(side)}{path}",
                "marketing",
                {"params": params},
            )

        await self.both("segment", get(""))
        await self.walk_members("members", "/v1/segments/{seg}/members", limit)
        await self.both("stats", get("/stats"))
        await self.both("export ndjson", get("/export", format="ndjson"))
        await self.both("export csv", get("/export", format="csv"))

    async def observe_all(self) -> None:
        for pair in self.segments:
            await self.observe_segment(pair, limit=2)
        for purpose, channel in (("marketing", "email"), ("marketing", "sms"), ("service", "push")):
            body = {"purpose": purpose, "channel": channel, "rules": {"all": []}}
            await self.both(
                "everyone",
                lambda side, body=body: ("POST", "/v1/segments/query", "marketing", {"json": body}),
            )
        n = max(len(s.profiles) for s in self.sides)
        for k in range(n):
            await self.both(
                f"profile {k}",
                lambda side, k=k: ("GET", f"/v1/profiles/{side.profile(k)}", "admin", {}),
            )
            await self.both(
                f"audit events {k}",
                lambda side, k=k: (
                    "GET",
                    "/v1/audit/consent-events",
                    "compliance",
                    {"params": {"profile_id": side.profile(k)}},
                ),
            )
            await self.both(
                f"access {k}",
                lambda side, k=k: (
                    "POST",
                    "/v1/access-requests",
                    "compliance",
                    {"json": {"profile_id": side.profile(k)}},
                ),
            )
            await self.both(
                f"consents {k}",
                lambda side, k=k: ("GET", f"/v1/profiles/{side.profile(k)}/consents", "admin", {}),
            )
        for email in EMAILS[1:]:
            await self.both(
                "audit events",
                lambda side, email=email: (
                    "GET",
                    "/v1/audit/consent-events",
                    "compliance",
                    {"params": {"email": email}},
                ),
            )
        await self.both("verify", lambda side: ("GET", "/v1/audit/verify", "compliance", {}))
        for path in ("/v1/audit/access-log", "/v1/segments", "/v1/merge-reviews"):
            await self.both(path, lambda side, path=path: ("GET", path, "admin", {}))
        for status in (None, "completed", "received"):
            await self.both(
                "erasure requests",
                lambda side, status=status: (
                    "GET",
                    "/v1/erasure-requests",
                    "compliance",
                    {"params": {"status": status} if status else {}},
                ),
            )

    # -- the operations ------------------------------------------------------------------------
    async def apply(self, o: tuple) -> None:
        self.step += 1
        kind = o[0]
        what = f"step {self.step}: {kind}"
        if kind == "record":
            await self.both(what, lambda s: ("POST", "/v1/profiles", "ingest", {"json": o[1]}))
        elif kind == "batch":
            body = {"records": o[1]}
            await self.both(
                what, lambda s: ("POST", "/v1/profiles/batch", "ingest", {"json": body})
            )
        elif kind == "event":
            _, ident, source, n, etype, amount, currency, category, when = o

            def ev(side: Side) -> tuple:
                body = {
                    "source": source,
                    "event_id": f"ord-{n}",
                    "type": etype,
                    "occurred_at": at(when),
                    "amount": amount,
                    "currency": currency,
                    "category": category,
                    **side.identify(ident),
                }
                if body.get("source") != source:  # an external id names its own source
                    pass
                return "POST", "/v1/events", "ingest", {"json": body}

            await self.both(what, ev)
        elif kind == "consent":
            _, ident, purpose, channel, status, when = o

            def co(side: Side) -> tuple:
                body = {
                    "purpose": purpose,
                    "channel": channel,
                    "status": status,
                    "source": "web_form",
                    "evidence": EVIDENCE,
                    **side.identify(ident),
                }
                if when is not None:
                    body["occurred_at"] = at(when)
                return "POST", "/v1/consents", "ingest", {"json": body}

            await self.both(what, co)
        elif kind == "opt_out":
            _, ident, channel = o
            await self.both(
                what,
                lambda s: (
                    "POST",
                    "/v1/opt-outs",
                    "ingest",
                    {"json": {**s.identify(ident), "channel": channel, "source": "api"}},
                ),
            )
        elif kind == "stop":
            body = {"from": o[1], "text": o[2]}
            await self.both(what, lambda s: ("POST", "/v1/inbound/sms", "ingest", {"json": body}))
        elif kind == "unsubscribe":
            n = o[1]
            if not self.sides[0].tokens:
                return
            assert len(self.sides[0].tokens) == len(self.sides[1].tokens)
            await self.both(
                what,
                lambda s: (
                    "POST",
                    f"/v1/unsubscribe/{s.tokens[n % len(s.tokens)]}",
                    "ingest",
                    {},
                ),
            )
        elif kind == "erase":
            body_of = lambda s: {**s.identify(o[1]), "requested_by": "operator"}  # noqa: E731
            await self.both(
                what,
                lambda s: ("POST", "/v1/erasure-requests", "compliance", {"json": body_of(s)}),
            )
        elif kind == "unmerge":
            await self.both(
                what,
                lambda s: ("POST", f"/v1/profiles/{s.profile(o[1])}/unmerge", "admin", {}),
            )
        elif kind == "segment":
            (purpose, channel), rules = o[1], o[2]
            body = {"name": f"s{self.step}", "purpose": purpose, "channel": channel, "rules": rules}
            note(f"{what} rules={json.dumps(rules, ensure_ascii=False)}")
            ids = []
            for side in self.sides:
                r = await side.client.post(
                    "/v1/segments", json=body, headers=side.keys["marketing"]
                )
                ids.append((r.status_code, r.json()))
            (sa, ba), (sb, bb) = ids
            assert sa == sb, (what, ids)
            assert self.sides[0].canon(ba) == self.sides[1].canon(bb), (what, ids)
            if sa == 201:
                pair = (ba["id"], bb["id"])
                self.segments.append(pair)
                await self.observe_segment(pair, limit=1)
        elif kind == "query":
            (purpose, channel), rules, limit = o[1], o[2], o[3]
            body = {"purpose": purpose, "channel": channel, "rules": rules, "limit": limit}
            note(f"{what} rules={json.dumps(rules, ensure_ascii=False)}")
            await self.both(
                what, lambda s: ("POST", "/v1/segments/query", "marketing", {"json": body})
            )
        elif kind == "read":
            await self.both(
                what,
                lambda s: ("GET", "/v1/profiles", "admin", {"params": lookup(s.identify(o[1]))}),
            )
        elif kind == "access":
            await self.both(
                what,
                lambda s: ("POST", "/v1/access-requests", "compliance", {"json": s.identify(o[1])}),
            )
        elif kind == "audit":
            await self.both(
                what,
                lambda s: (
                    "GET",
                    "/v1/audit/consent-events",
                    "compliance",
                    {"params": lookup(s.identify(o[1]))},
                ),
            )
        elif kind == "audit_window":
            since, until = at(max(o[2], o[3])), at(min(o[2], o[3]))
            await self.both(
                what,
                lambda s: (
                    "GET",
                    "/v1/audit/consent-events",
                    "compliance",
                    {"params": {**lookup(s.identify(o[1])), "since": since, "until": until}},
                ),
            )
        else:  # pragma: no cover
            raise AssertionError(kind)


def lookup(ident: dict[str, Any]) -> dict[str, Any]:
    if "profile_id" in ident:  # reads by id go through the path; by query, its id
        return {"profile_id": ident["profile_id"]}
    return ident


def _first_difference(a: Any, b: Any, path: str = "$") -> str:
    if type(a) is not type(b):
        return f"{path}: {a!r} != {b!r}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}.{k}: only on {'sqlite' if k in a else 'postgres'}"
            if a[k] != b[k]:
                return _first_difference(a[k], b[k], f"{path}.{k}")
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}: {a!r} != {b!r}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {a!r} != {b!r}"


# ---------------------------------------------------------------------------------------------
# two empty platforms
async def _side(name: str, url: str, tmp: Path) -> Side:
    p = await open_platform(make_settings(url, tmp), run_migrations=False)
    keys = await role_keys(p)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(platform=p)), base_url="http://testserver"
    )
    return Side(name, p, client, keys)


async def run_ops(sqlite_template: Path, pg_name: str, ops: list[tuple]) -> Diff:
    tmp = Path(tempfile.mkdtemp(prefix="cdp-diff-"))
    sides: list[Side] = []
    try:
        shutil.copy(sqlite_template, tmp / "cdp.db")
        sides.append(await _side("sqlite", f"sqlite+aiosqlite:///{tmp / 'cdp.db'}", tmp))
        sides.append(await _side("postgres", await empty_postgres(pg_name), tmp / "pg"))
        diff = Diff(*sides)
        for o in ops:
            await diff.apply(o)
        await diff.observe_all()
        return diff
    finally:
        for side in sides:
            await side.client.aclose()
            await side.platform.close()
        await asyncio.to_thread(shutil.rmtree, tmp, True)


@pytest.fixture(scope="session")
async def pg_name(pg_database: str | None) -> AsyncIterator[str]:
    """A PostgreSQL database of its own, sorting and folding text as a Russian production
    server does (ICU `ru-RU`, CDP_DIFF_PG_LOCALE; empty: the session's database, whose
    collation is the server's default, here C.UTF-8, which sorts as SQLite does)."""
    if pg_database is None:
        pytest.skip("PostgreSQL is not reachable")
    if not PG_LOCALE:
        yield pg_database
        return
    name = f"{pg_database}_icu"
    try:
        await pg_admin(
            f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
            f"ICU_LOCALE '{PG_LOCALE}' LOCALE 'C.UTF-8'"
        )
    except Exception:  # a server before 15, or built without ICU: its default collation
        yield pg_database
        return
    async with migrated_pg(name):
        yield name


@settings(
    max_examples=HUNT or 12,
    deadline=None,
    derandomize=not HUNT,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(ops=st.lists(op, min_size=4, max_size=30 if HUNT else 18))
@pytest.mark.slow
async def test_sqlite_and_postgres_answer_alike(sqlite_template, pg_name, ops):
    try:
        await run_ops(sqlite_template, pg_name, ops)
    except AssertionError as exc:
        if LOG:  # while hunting: every failing sequence, before shrinking takes its time
            with open(LOG, "a") as out:
                out.write(f"{ops!r}\n{str(exc)[:3000]}\n\n")
        raise


def test_canon_names_ids_by_first_appearance():
    """The normalisation itself: the same shape with other ids is equal; another order is not."""
    a, b = (Side("a", None, None, {}), Side("b", None, None, {}))  # type: ignore[arg-type]
    x, y = str(uuid.uuid4()), str(uuid.uuid4())
    u, v = str(uuid.uuid4()), str(uuid.uuid4())
    assert a.canon({"profile_id": x, "merged": [y]}) == b.canon({"profile_id": u, "merged": [v]})
    assert a.canon([x, y]) != b.canon([v, u])
    assert a.canon({"at": "2020-01-01T12:00:00Z"}) == {"at": "2020-01-01T12:00:00Z"}
