"""Minimised cases of differences between SQLite and PostgreSQL that the differential test
(tests/test_differential_backends.py) found: each asserts what a user sees, on both databases.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from cdp.segments.traits import SQLITE_JSON_TEXT

EMAILS = [f"shopper{i}@example.com" for i in range(6)]


async def opted_out_everywhere(client, keys, external_id: str) -> str:  # type: ignore[no-untyped-def]
    """A customer holding every address of EMAILS, in that order, opted out of every channel
    at once (one opt-out, one moment for every address); their profile id."""
    for email in EMAILS:
        r = await client.post(
            "/v1/profiles",
            json={"source": "crm", "external_id": external_id, "email": email},
            headers=keys["ingest"],
        )
        assert r.status_code in (200, 201), r.text
    pid = r.json()["profile_id"]
    r = await client.post(
        "/v1/opt-outs",
        json={"profile_id": pid, "channel": "*", "source": "api"},
        headers=keys["ingest"],
    )
    assert r.status_code == 200, r.text
    return pid


async def test_a_customers_consents_list_their_addresses_in_the_profiles_order(client, keys):
    """Six addresses withdrawn at one moment (an opt-out of every channel) are listed as the
    profile lists its identities, on both databases. Before, ties of purpose, channel and time
    came in the order the database returned the rows: by blind index on SQLite (a different
    order for every master key), by heap position on PostgreSQL."""
    pid = await opted_out_everywhere(client, keys, "C-7")

    r = await client.get(f"/v1/profiles/{pid}/consents", headers=keys["admin"])
    assert r.status_code == 200, r.text
    email_items = [
        i["address"]
        for i in r.json()["items"]
        if (i["purpose"], i["channel"]) == ("marketing", "email")
    ]
    assert email_items == EMAILS  # as received, the profile's identities' order

    r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
    assert [i["value"] for i in r.json()["identities"] if i["kind"] == "email"] == EMAILS
    in_profile = [
        i["address"]
        for i in r.json()["consents"]["items"]
        if (i["purpose"], i["channel"]) == ("marketing", "email")
    ]
    assert in_profile == EMAILS


async def test_an_access_request_lists_suppressions_of_one_moment_in_the_profiles_order(
    client, keys
):
    """The suppressions one opt-out wrote for each of the customer's addresses come in the
    order the access request lists the identities, on both databases (they came by blind
    index, or by heap position)."""
    pid = await opted_out_everywhere(client, keys, "C-8")

    r = await client.post("/v1/access-requests", json={"profile_id": pid}, headers=keys["admin"])
    assert r.status_code == 200, r.text
    body = r.json()
    suppressed = [s["address"] for s in body["suppressions"] if s["address"] in EMAILS]
    assert suppressed == EMAILS


async def test_an_access_request_names_the_merged_profiles_oldest_first(client, keys):
    """Three profiles (created a, b, c) merged into the oldest, c before b: the access
    request's `profile_ids` is the surviving one, then the merged ones oldest first, on both
    databases. Before, they came as the database returned them: by rowid on SQLite (a, b, c),
    by where the merge's update left each row on PostgreSQL (a, c, b)."""
    made = []
    for n in range(3):
        r = await client.post(
            "/v1/profiles",
            json={"source": "crm", "email": f"merged{n}@example.com"},
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text
        made.append(r.json()["profile_id"])
    for n in (2, 1):  # c first, then b
        r = await client.post(
            "/v1/profiles",
            json={"source": "crm", "email": "merged0@example.com", "phone": f"+7916123456{n}"},
            headers=keys["ingest"],
        )
        assert r.status_code == 200, r.text
        r = await client.post(
            "/v1/profiles",
            json={
                "source": "crm",
                "email": f"merged{n}@example.com",
                "phone": f"+7916123456{n}",
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 200, r.text
        assert r.json()["merged_profile_ids"] == [made[n]], r.text

    r = await client.post(
        "/v1/access-requests", json={"profile_id": made[0]}, headers=keys["admin"]
    )
    assert r.status_code == 200, r.text
    assert r.json()["profile_ids"] == made


async def test_an_access_requests_merge_snapshots_list_sources_alike(client, keys):
    """What a merge kept of each side, as the access request shows it, lists the sources in
    one order on both databases: the survivor's by name (only names are kept), the absorbed
    profile's by when each first sent them, as the request's own `sources` are. Before, each
    came in the database's row order: by name on SQLite (the key), by insertion on
    PostgreSQL."""
    for source in ("shop", "crm"):
        r = await client.post(
            "/v1/profiles",
            json={"source": source, "email": "a@example.com"},
            headers=keys["ingest"],
        )
        assert r.status_code in (200, 201), r.text
    survivor = r.json()["profile_id"]
    for source in ("web", "app"):
        r = await client.post(
            "/v1/profiles",
            json={"source": source, "email": "b@example.com"},
            headers=keys["ingest"],
        )
        assert r.status_code in (200, 201), r.text
    absorbed = r.json()["profile_id"]
    for email in ("a@example.com", "b@example.com"):
        r = await client.post(
            "/v1/profiles",
            json={"source": "shop", "email": email, "phone": "+79160000001"},
            headers=keys["ingest"],
        )
        assert r.status_code == 200, r.text
    assert r.json()["merged_profile_ids"] == [absorbed]

    r = await client.post(
        "/v1/access-requests", json={"profile_id": survivor}, headers=keys["admin"]
    )
    assert r.status_code == 200, r.text
    sides = {s["as"]: s["values"] for s in r.json()["merge_snapshots"]}
    assert [s["source"] for s in sides["survivor"]["sources"]] == ["crm", "shop"]
    assert [s["source"] for s in sides["absorbed"]["sources"]] == ["web", "app"]


async def test_a_number_trait_beyond_64_bits_is_compared_exactly_on_both_databases(
    client, keys, backend
):
    """A trait of 2^64 - 1 (a 20-digit card number sent as a number) was below the rule's
    number 18446744073709551616.0 on PostgreSQL, which compares the exact integer, and equal
    to it on SQLite, which read the trait as the nearest double (2^64): the customer was in
    the segment on one database only. A rule's number is the decimal it is written as, on
    both. (SQLite before 3.38 has no `->` to read the integer as written: there it stays the
    nearest double, as cdp.segments.traits says.)"""
    if backend == "sqlite" and not SQLITE_JSON_TEXT:
        pytest.skip(f"SQLite {sqlite3.sqlite_version} reads such an integer as a double")
    cards = {"a": 2**64 - 1, "b": 2**64, "c": 2**63, "d": -(2**64), "e": 10**20, "f": 5}
    for name, card in cards.items():
        r = await client.post(
            "/v1/profiles",
            json={"source": "crm", "email": f"{name}@example.com", "traits": {"card": card}},
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text

    async def selected(op: str, value: object) -> set[str]:
        rule = {"field": "traits.card", "op": op, "value": value}
        r = await client.post(
            "/v1/segments/query",
            json={"purpose": "service", "channel": "email", "rules": rule},
            headers=keys["marketing"],
        )
        assert r.status_code == 200, r.text
        return {i["address"].split("@")[0] for i in r.json()["items"]}

    two_64 = 18446744073709551616.0  # written 1.8446744073709552e+19: 18446744073709552000
    assert await selected("lt", two_64) == {"a", "b", "c", "d", "f"}
    assert await selected("eq", two_64) == set()
    assert await selected("gte", two_64) == {"e"}
    assert await selected("eq", 1e20) == {"e"}
    assert await selected("in", [1e20, 5]) == {"e", "f"}
    assert await selected("in", [9.223372036854776e18]) == set()  # 9223372036854776000
    assert await selected("gt", 2**63 - 1) == {"a", "b", "c", "e"}
    assert await selected("lt", -1.8446744073709552e19) == set()  # -2^64 is above it
    assert await selected("lt", -1.8e19) == {"d"}
    assert await selected("ne", 1e20) == {"a", "b", "c", "d", "f"}


async def test_an_in_list_of_a_thousand_numbers_beyond_64_bits_is_read_on_both_databases(
    client, keys, backend
):
    """On SQLite a trait beyond 64 bits was matched against an `in` list by one nested
    comparison per value, OR-ed: SQLite refuses an expression deeper than 1,000 levels, so a
    saved segment with an `in` list of 1,000 numbers of 20 digits (card numbers) was accepted
    and every members page and stats read of it was a 503 "database not reachable", its export
    cut short. Such a list is now one IN over the numbers as written."""
    if backend == "sqlite" and not SQLITE_JSON_TEXT:
        pytest.skip(f"SQLite {sqlite3.sqlite_version} reads such an integer as a double")
    for name, card in {"e": 10**20, "a": 2**64 - 1}.items():
        r = await client.post(
            "/v1/profiles",
            json={"source": "crm", "email": f"{name}@example.com", "traits": {"card": card}},
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text
    cards = [1e19 + i * 4096.0 for i in range(999)] + [1e20]  # 1e20 is 10^20 exactly
    rules = {"field": "traits.card", "op": "in", "value": cards}
    segment = {"name": "cards", "purpose": "service", "channel": "email", "rules": rules}
    r = await client.post("/v1/segments", json=segment, headers=keys["marketing"])
    assert r.status_code == 201, r.text[:300]
    sid = r.json()["id"]
    r = await client.get(f"/v1/segments/{sid}/members", headers=keys["marketing"])
    assert r.status_code == 200, r.text[:300]
    assert [m["address"] for m in r.json()["items"]] == ["e@example.com"]
    r = await client.get(f"/v1/segments/{sid}/stats", headers=keys["marketing"])
    assert r.status_code == 200 and r.json()["matched"] == 1, r.text[:300]
    r = await client.get(f"/v1/segments/{sid}/export?format=ndjson", headers=keys["marketing"])
    assert [json.loads(line)["address"] for line in r.text.splitlines()] == ["e@example.com"]
