"""Segment members hand out only contactable customers, one address each (SQLite and PostgreSQL).

The base: customers with and without consent, opted out, suppressed before they were known,
withdrawn, with consent on one of two emails, with two consented emails, without an email, and
outside the rule. Everything is built through the public API.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import msgspec
from sqlalchemy import select

from cdp.db.tables import access_log
from cdp.segments import service
from cdp.segments.pages import member_pages
from consent.tokens import verify

NOW = datetime.now(UTC).replace(microsecond=0)
RU = {"all": [{"field": "country", "op": "eq", "value": "RU"}]}


def at(minutes_ago: int) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).isoformat()


def grant(minutes_ago: int = 60, channel: str = "email") -> dict:
    return {
        "purpose": "marketing",
        "channel": channel,
        "status": "granted",
        "occurred_at": at(minutes_ago),
        "evidence": {"wording_id": "newsletter-v3", "method": "double_opt_in"},
    }


async def add(client, keys, **body) -> str:  # type: ignore[no-untyped-def]
    r = await client.post("/v1/profiles", json={"source": "crm", **body}, headers=keys["ingest"])
    assert r.status_code in (200, 201), r.text
    return r.json()["profile_id"]


async def post(client, keys, path, **body) -> dict:  # type: ignore[no-untyped-def]
    r = await client.post(path, json=body, headers=keys["ingest"])
    assert r.status_code in (200, 201), r.text
    return r.json()


async def build_base(client, keys) -> dict[str, str]:  # type: ignore[no-untyped-def]
    ids = {}
    ids["anna"] = await add(
        client, keys, email="anna@ex.com", first_name="Анна", country="RU", consents=[grant()]
    )
    ids["boris"] = await add(client, keys, email="boris@ex.com", first_name="Boris", country="RU")
    ids["vera"] = await add(
        client, keys, email="vera@ex.com", first_name="Vera", country="RU", consents=[grant()]
    )
    await post(client, keys, "/v1/opt-outs", email="vera@ex.com", source="esp")
    ids["gleb"] = await add(
        client, keys, email="gleb@ex.com", first_name="Gleb", country="RU", consents=[grant(90)]
    )
    await post(
        client,
        keys,
        "/v1/consents",
        email="gleb@ex.com",
        purpose="marketing",
        channel="email",
        status="withdrawn",
        source="web",
        occurred_at=at(30),
    )
    # suppressed before the platform knew her; a stale import with an older grant follows
    await post(client, keys, "/v1/opt-outs", email="dina@ex.com", source="esp", occurred_at=at(50))
    ids["dina"] = await add(
        client, keys, email="dina@ex.com", first_name="Dina", country="RU", consents=[grant(80)]
    )
    # two emails, consent on the first only (the second is newer)
    ids["egor"] = await add(
        client,
        keys,
        external_id="E-1",
        email="egor1@ex.com",
        first_name="Egor",
        country="RU",
        consents=[grant()],
    )
    assert await add(client, keys, external_id="E-1", email="egor2@ex.com") == ids["egor"]
    # two consented emails: the more recently confirmed one is chosen
    ids["zoya"] = await add(
        client,
        keys,
        external_id="Z-1",
        email="zoya2@ex.com",
        first_name="Zoya",
        country="RU",
        consents=[grant(10)],
    )
    assert (
        await add(client, keys, external_id="Z-1", email="zoya1@ex.com", consents=[grant(40)])
        == ids["zoya"]
    )
    ids["ivan"] = await add(
        client, keys, phone="+7 916 000-11-22", first_name="Ivan", country="RU", consents=[]
    )
    ids["kira"] = await add(
        client, keys, email="kira@ex.de", first_name="Kira", country="DE", consents=[grant()]
    )
    return ids


async def create(client, keys, purpose="marketing", channel="email", rules=RU) -> str:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/segments",
        json={"name": "test", "purpose": purpose, "channel": channel, "rules": rules},
        headers=keys["marketing"],
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def walk(client, keys, sid, limit) -> list[dict]:  # type: ignore[no-untyped-def]
    items, cursor = [], None
    while True:
        params = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        r = await client.get(
            f"/v1/segments/{sid}/members", params=params, headers=keys["marketing"]
        )
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


def pairs(items: list[dict]) -> set[tuple[str, str]]:
    return {(m["first_name"], m["address"]) for m in items}


async def test_members_are_exactly_the_contactable_addresses(client, keys, platform):
    ids = await build_base(client, keys)
    sid = await create(client, keys)
    items = await walk(client, keys, sid, 1000)
    assert pairs(items) == {
        ("Анна", "anna@ex.com"),
        ("Egor", "egor1@ex.com"),
        ("Zoya", "zoya2@ex.com"),
    }
    assert [m["profile_id"] for m in items] == sorted(m["profile_id"] for m in items)
    assert {m["profile_id"] for m in items} == {ids["anna"], ids["egor"], ids["zoya"]}

    for m in items:
        claims = verify(platform.keys.token_key, m["unsubscribe_token"])
        assert str(claims.profile_id) == m["profile_id"]
        assert claims.subject == platform.keys.indexer.email(m["address"])
        assert (claims.subject_kind, claims.purpose, claims.channel) == (
            "email",
            "marketing",
            "email",
        )

    r = await client.get(f"/v1/segments/{sid}/stats", headers=keys["marketing"])
    stats = r.json()
    assert (stats["matched"], stats["contactable"]) == (8, 3)
    excluded = {k: v for k, v in stats["excluded"].items() if v}
    assert excluded == {"no_consent": 1, "suppressed": 2, "withdrawn": 1, "no_address": 1}
    assert sum(stats["excluded"].values()) == stats["matched"] - stats["contactable"]

    # one click on a member's link takes them out at once
    anna = next(m for m in items if m["profile_id"] == ids["anna"])
    r = await client.post(f"/v1/unsubscribe/{anna['unsubscribe_token']}")
    assert r.status_code == 200
    assert ids["anna"] not in {m["profile_id"] for m in await walk(client, keys, sid, 100)}


async def test_the_same_segment_for_service_returns_more(client, keys):
    await build_base(client, keys)
    marketing = await walk(client, keys, await create(client, keys), 100)
    service = await walk(client, keys, await create(client, keys, purpose="service"), 100)
    assert pairs(marketing) < pairs(service)
    assert pairs(service) == {
        ("Анна", "anna@ex.com"),
        ("Boris", "boris@ex.com"),
        ("Vera", "vera@ex.com"),
        ("Gleb", "gleb@ex.com"),
        ("Dina", "dina@ex.com"),
        ("Egor", "egor1@ex.com"),
        ("Zoya", "zoya2@ex.com"),
    }
    r = await client.post(
        "/v1/segments/query",
        json={"purpose": "service", "channel": "sms", "rules": RU, "limit": 10},
        headers=keys["marketing"],
    )
    assert [(m["first_name"], m["address"]) for m in r.json()["items"]] == [
        ("Ivan", "+79160001122")
    ]


async def test_an_opt_out_between_pages_removes_the_customer_from_later_pages(client, keys):
    for n in range(7):
        await add(
            client, keys, email=f"c{n}@ex.com", first_name=f"C{n}", country="RU", consents=[grant()]
        )
    sid = await create(client, keys)
    everyone = await walk(client, keys, sid, 1000)
    assert len(everyone) == 7
    last = everyone[-1]

    r = await client.get(f"/v1/segments/{sid}/members?limit=3", headers=keys["marketing"])
    first = r.json()
    await post(client, keys, "/v1/opt-outs", email=last["address"], source="esp")
    seen = list(first["items"])
    cursor = first["next_cursor"]
    while cursor:
        r = await client.get(
            f"/v1/segments/{sid}/members",
            params={"limit": 3, "cursor": cursor},
            headers=keys["marketing"],
        )
        seen += r.json()["items"]
        cursor = r.json()["next_cursor"]
    assert seen == everyone[:-1]


async def test_export_equals_the_concatenated_pages(client, keys, platform):
    await build_base(client, keys)
    for n in range(5):
        await add(
            client,
            keys,
            email=f"x{n}@ex.com",
            first_name=f'X,{n}"',
            country="RU",
            consents=[grant()],
        )
    sid = await create(client, keys)
    pages = await walk(client, keys, sid, 2)
    assert len(pages) == 8

    r = await client.get(f"/v1/segments/{sid}/export", headers=keys["marketing"])
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in r.text.splitlines()] == pages

    r = await client.get(f"/v1/segments/{sid}/export?format=csv", headers=keys["marketing"])
    assert r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows == [{k: v or "" for k, v in m.items()} for m in pages]

    r = await client.get(f"/v1/segments/{sid}/export?format=xml", headers=keys["marketing"])
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "format"

    async with platform.db.read() as conn:
        log = (
            await conn.execute(
                select(
                    access_log.c.action,
                    access_log.c.actor,
                    access_log.c.object_id,
                    access_log.c.rows,
                )
                .where(access_log.c.action.like("segment.%"))
                .order_by(access_log.c.at)
            )
        ).all()
    exports = [row for row in log if row.action == "segment.export"]
    assert [(row.actor, row.object_id, row.rows) for row in exports] == [
        ("marketing-key", sid, 8),
        ("marketing-key", sid, 8),
    ]
    member_reads = [row for row in log if row.action == "segment.members"]
    assert [row.rows for row in member_reads] == [2, 2, 2, 2]


async def test_an_export_leaves_the_data_key_cache_to_member_pages(client, keys, platform):
    """An export reads each member once, so the data keys it unwraps are not cached: a large
    export cannot evict the keys that member pages read again. Pages still fill the cache."""
    await build_base(client, keys)
    sid = await create(client, keys)
    platform.keys._keys.clear()  # as in a new process
    r = await client.get(f"/v1/segments/{sid}/export", headers=keys["marketing"])
    exported = [json.loads(line) for line in r.text.splitlines()]
    assert len(exported) == 3
    assert len(platform.keys._keys) == 0
    assert await walk(client, keys, sid, 100) == exported
    assert len(platform.keys._keys) == 3


async def test_an_export_range_holding_more_than_a_page_is_read_whole(client, keys, platform):
    """An export reads ranges of profile ids; a range can hold more members than a page when
    profiles were stored into it after its bounds were read. Ranges of 7 profiles read in pages
    of 2 members give every member once, in order, as the members pages do."""
    await build_base(client, keys)
    for n in range(5):
        await add(client, keys, email=f"x{n}@ex.com", country="RU", consents=[grant()])
    sid = await create(client, keys)
    walked = await walk(client, keys, sid, 100)
    assert len(walked) == 8
    d = service.build_definition(platform, "marketing", "email", RU)
    pages = [page async for page in member_pages(platform, d, page_size=2, span=7)]
    assert [msgspec.structs.asdict(m) for page in pages for m in page.items] == walked
    assert max(len(page.items) for page in pages) == 2


async def test_adhoc_query_returns_the_same_members_and_is_logged(client, keys, platform):
    await build_base(client, keys)
    sid = await create(client, keys)
    saved = await walk(client, keys, sid, 100)
    r = await client.post(
        "/v1/segments/query",
        json={"purpose": "marketing", "channel": "email", "rules": RU, "limit": 2},
        headers=keys["admin"],
    )
    assert r.status_code == 200, r.text
    first = r.json()
    r = await client.post(
        "/v1/segments/query",
        json={
            "purpose": "marketing",
            "channel": "email",
            "rules": RU,
            "limit": 2,
            "cursor": first["next_cursor"],
        },
        headers=keys["admin"],
    )
    assert first["items"] + r.json()["items"] == saved
    assert r.json()["next_cursor"] is None
    async with platform.db.read() as conn:
        log = (
            await conn.execute(
                select(access_log.c.actor, access_log.c.object_id, access_log.c.rows).where(
                    access_log.c.action == "segment.query"
                )
            )
        ).all()
    assert sorted(tuple(row) for row in log) == [
        ("admin-key", "adhoc", 1),
        ("admin-key", "adhoc", 2),
    ]


async def test_profile_channels_address_the_profile(client, keys):
    pid = await add(
        client,
        keys,
        email="pia@ex.com",
        first_name="Pia",
        country="RU",
        consents=[grant(channel="push")],
    )
    await add(client, keys, email="quin@ex.com", first_name="Quin", country="RU")
    r = await client.post(
        "/v1/segments/query",
        json={"purpose": "marketing", "channel": "push", "rules": RU},
        headers=keys["marketing"],
    )
    items = r.json()["items"]
    assert [(m["profile_id"], m["address"], m["first_name"]) for m in items] == [(pid, pid, "Pia")]
    r = await client.post(f"/v1/unsubscribe/{items[0]['unsubscribe_token']}")
    assert r.status_code == 200
    r = await client.post(
        "/v1/segments/query",
        json={"purpose": "marketing", "channel": "push", "rules": RU},
        headers=keys["marketing"],
    )
    assert r.json()["items"] == []
    r = await client.post(
        "/v1/segments/query",
        json={"purpose": "service", "channel": "messenger", "rules": RU},
        headers=keys["marketing"],
    )
    assert {m["first_name"] for m in r.json()["items"]} == {"Pia", "Quin"}


async def test_a_merged_customer_appears_once(client, keys, platform):
    a = await add(client, keys, external_id="M-1", first_name="Mia", country="RU")
    b = await add(client, keys, email="mia@ex.com", country="RU", consents=[grant()])
    # a record naming both merges them: one customer, once
    await add(client, keys, external_id="M-1", email="mia@ex.com")
    r = await client.post(
        "/v1/segments/query",
        json={"purpose": "marketing", "channel": "email", "rules": RU},
        headers=keys["marketing"],
    )
    items = r.json()["items"]
    assert len(items) == 1
    assert items[0]["profile_id"] in {a, b}
    assert items[0]["address"] == "mia@ex.com"


async def test_an_abandoned_export_is_still_on_record(client, keys, platform):
    from cdp.apikeys import Principal
    from cdp.segments.service import open_export

    await build_base(client, keys)
    sid = await create(client, keys)
    who = Principal("exporter", "marketing")
    _, chunks = await open_export(platform, who, sid, "csv")
    assert (await anext(chunks)).startswith(b"profile_id,address")  # the header only
    await chunks.aclose()  # the client went away
    async with platform.db.read() as conn:
        log = (
            await conn.execute(
                select(access_log.c.action, access_log.c.rows, access_log.c.detail)
                .where(access_log.c.actor == "exporter")
                .order_by(access_log.c.at)
            )
        ).all()
    assert [
        (row.action, row.rows, row.detail["complete"] if row.action == "segment.export" else None)
        for row in log
    ] == [
        ("segment.export_started", 0, None),
        ("segment.export", 0, False),
    ]


async def test_csv_export_defuses_formulas_in_names_and_keeps_addresses_exact(client, keys):
    await add(
        client,
        keys,
        email="f1@ex.com",
        first_name="=HYPERLINK(1)",
        country="RU",
        consents=[grant()],
    )
    await add(client, keys, email="f2@ex.com", first_name="@SUM(A1)", country="RU")
    await add(client, keys, phone="+79161234500", first_name="+Anna", country="RU")
    await post(
        client,
        keys,
        "/v1/consents",
        phone="+79161234500",
        source="web_form",
        **grant(channel="sms"),
    )
    sid = await create(client, keys)
    r = await client.get(f"/v1/segments/{sid}/export?format=csv", headers=keys["marketing"])
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(row["address"], row["first_name"]) for row in rows] == [
        ("f1@ex.com", "'=HYPERLINK(1)")
    ]
    sms = await create(client, keys, channel="sms")
    r = await client.get(f"/v1/segments/{sms}/export?format=csv", headers=keys["marketing"])
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [(row["address"], row["first_name"]) for row in rows] == [("+79161234500", "'+Anna")]
    r = await client.get(f"/v1/segments/{sms}/export", headers=keys["marketing"])
    assert json.loads(r.text.splitlines()[0])["first_name"] == "+Anna"  # NDJSON is exact


async def test_csv_export_defuses_a_formula_in_an_email_address(client, keys):
    """An email's local part may begin with = + - (RFC 5322 atext, accepted by the API): a
    sign-up form is enough to put `=cmd|'/C calc'!A0@...` into the export that marketing opens
    in a spreadsheet. Such an address gets the leading apostrophe too; phones stay exact."""
    dde = "=cmd|'/ccalc'!a0@ex.com"
    for email in (dde, "-2+3@ex.com", "+x@ex.com"):
        await add(client, keys, email=email, country="RU", consents=[grant()])
    sid = await create(client, keys)
    r = await client.get(f"/v1/segments/{sid}/export?format=csv", headers=keys["marketing"])
    addresses = sorted(row["address"] for row in csv.DictReader(io.StringIO(r.text)))
    assert addresses == sorted(["'" + dde, "'-2+3@ex.com", "'+x@ex.com"])
    r = await client.get(f"/v1/segments/{sid}/export", headers=keys["marketing"])
    assert dde in {json.loads(line)["address"] for line in r.text.splitlines()}  # NDJSON exact


async def test_sqlite_pages_walk_the_id_index_without_statistics(client, keys, platform):
    """Without ANALYZE statistics SQLite would filter by the status index and sort the whole
    table for every page; a members page must walk profiles in id order and stop early."""
    if not platform.db.is_sqlite:
        return  # PostgreSQL plans by its own statistics (autovacuum)
    from cdp.segments.audience import Audience, members_query
    from cdp.segments.conditions import compile_condition
    from cdp.segments.rules import parse_rules

    await build_base(client, keys)
    async with platform.db.read() as conn:
        await conn.exec_driver_sql("DROP TABLE IF EXISTS sqlite_stat1")
        audience = Audience(platform.policy, "marketing", "email", "sqlite")
        rule = parse_rules(RU, jurisdictions=platform.policy.jurisdictions)
        query = members_query(
            audience, compile_condition(rule, "sqlite", NOW), after=None, limit=101
        )
        sql = str(query.compile(conn.sync_connection, compile_kwargs={"literal_binds": True}))
        plan = [row[-1] for row in await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)]
    # the keyset position and the range's upper bound (LAST_ID for a members page)
    assert any("profiles USING" in step and "(id>? AND id<?)" in step for step in plan), plan


async def test_concurrent_member_reads_are_each_logged(client, keys, platform):
    """Members pages read at the same time are each in the access log before they are answered;
    their entries share write transactions (group commit) instead of queueing for one each."""
    import asyncio

    await build_base(client, keys)
    sid = await create(client, keys)

    async def read() -> int:
        r = await client.get(
            f"/v1/segments/{sid}/members", params={"limit": 2}, headers=keys["marketing"]
        )
        assert r.status_code == 200, r.text
        return len(r.json()["items"])

    sizes = await asyncio.gather(*(read() for _ in range(20)))
    async with platform.db.read() as conn:
        logged = (
            await conn.execute(
                select(access_log.c.rows).where(
                    access_log.c.action == "segment.members", access_log.c.object_id == sid
                )
            )
        ).all()
    assert sorted(r.rows for r in logged) == sorted(sizes) and len(logged) == 20
    assert platform.db.group_commit("access-log", None).batches < 20  # type: ignore[arg-type]


async def test_a_customer_merged_mid_walk_is_not_sent_twice(client, keys, platform):
    """Two profiles of one customer (say the shop and the CRM sent the new customer at the
    same moment: each request took its time before the other made its id, so the profile
    created first has the later id). A sending tool walks the members with a cursor; between
    its pages a record links the two. The merge went into the profile of the earlier
    `created_at`, the one with the later id, which is still ahead of the cursor: the
    customer got the campaign on page 1 under one id and again on page 2 under the other.
    The survivor is now the profile of the lowest id, so the walk never meets them again."""
    from uuid import UUID

    from sqlalchemy import update

    from cdp.db.tables import profiles

    first = await add(client, keys, email="lev@shop.ex", country="RU", consents=[grant(50)])
    second = await add(client, keys, email="lev@crm.ex", country="RU", consents=[grant(40)])
    assert first < second
    async with platform.db.write() as conn:  # created a moment before, as above
        await conn.execute(
            update(profiles)
            .where(profiles.c.id == UUID(second))
            .values(created_at=NOW - timedelta(days=1))
        )
    sid = await create(client, keys)
    r = await client.get(f"/v1/segments/{sid}/members?limit=1", headers=keys["marketing"])
    sent, cursor = r.json()["items"], r.json()["next_cursor"]
    assert [m["profile_id"] for m in sent] == [first]
    # between page 1 and page 2: records link the two addresses (one phone)
    await add(client, keys, email="lev@shop.ex", phone="+7 916 555-01-02")
    await add(client, keys, email="lev@crm.ex", phone="+7 916 555-01-02")
    while cursor:
        params = {"limit": 1, "cursor": cursor}
        r = await client.get(
            f"/v1/segments/{sid}/members", params=params, headers=keys["marketing"]
        )
        assert r.status_code == 200, r.text
        sent += r.json()["items"]
        cursor = r.json()["next_cursor"]
    customers = []
    for m in sent:  # a merged-away id answers with the customer's surviving profile
        r = await client.get(f"/v1/profiles/{m['profile_id']}", headers=keys["admin"])
        customers.append(r.json()["profile_id"])
    assert len(customers) == len(set(customers)) == 1, sent
