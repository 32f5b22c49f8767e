"""Customers' requests that arrive while `cdp import` runs, on both databases.

An import brings grants to advertising by email, dated before the requests. Customers opt out
or ask for erasure through the API while it runs: some before the import reaches their row,
some while the chunk that holds it is being stored (on SQLite, in an open transaction of several
chunks), some after it was stored. Whatever the order, the request wins over the older grant:
afterwards no segment reaches their address, and every other address is reached.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from cdp import importer
from cdp.ids import utcnow
from cdp.importer import ImportSummary, run_import

ROWS = 240
CHUNK = 12


def address(i: int) -> str:
    return f"race{i}@example.com"


def grant_row(i: int, granted_at: str, **fields: str) -> str:
    return json.dumps(
        {
            "email": address(i),
            "country": "RU",
            **fields,
            "consent.marketing.email": "granted",
            "consent.marketing.email.wording_id": "newsletter-v1",
            "consent.marketing.email.occurred_at": granted_at,
        }
    )


def two_days_ago() -> str:
    return (utcnow() - timedelta(days=2)).isoformat()


async def reached(client, keys) -> set[str]:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/segments/query",
        json={
            "purpose": "marketing",
            "channel": "email",
            "rules": {"field": "country", "op": "eq", "value": "RU"},
            "limit": 1000,
        },
        headers=keys["marketing"],
    )
    assert r.status_code == 200, r.text
    return {m["address"] for m in r.json()["items"]}


async def import_while(
    platform,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    src: Path,
    due: list[tuple[int, int]],
    send: Callable[[int], Awaitable[None]],
) -> tuple[ImportSummary, dict[str, int]]:
    """Import `src` in chunks of CHUNK rows; `due`: (file position, row) pairs: `send(row)`
    starts once the import is about to store the chunk that reaches that position, and runs
    beside it. Also counts whether each was sent before, during or after its row's chunk."""
    monkeypatch.setattr("cdp.importer.CHUNK", CHUNK)
    monkeypatch.setattr("cdp.importer.TXN_ROWS", 3 * CHUNK)  # SQLite: a transaction of 3 chunks
    due = sorted(due)
    sent: list[asyncio.Future] = []
    orders = {"before": 0, "during": 0, "after": 0}
    real = importer.store_prepared_in
    position = [0]  # rows handed to storage so far

    async def store_prepared_in(conn, p, prepared, actor):  # type: ignore[no-untyped-def]
        at = position[0]
        while due and due[0][0] <= at:
            row = due.pop(0)[1]
            upto = at + len(prepared)
            orders["before" if row >= upto else "during" if row >= at else "after"] += 1
            sent.append(asyncio.ensure_future(send(row)))
        await asyncio.sleep(0.002)  # let them start: on PostgreSQL they run beside the chunk
        position[0] += len(prepared)
        return await real(conn, p, prepared, actor)

    monkeypatch.setattr(importer, "store_prepared_in", store_prepared_in)
    summary = await run_import(platform, src, "crm", workers=0)
    sent.extend(asyncio.ensure_future(send(row)) for _, row in due)
    await asyncio.gather(*sent)
    return summary, orders


def around(rng: random.Random, rows: list[int], top: int) -> list[tuple[int, int]]:
    """Each row with a position up to two chunks before or after it."""
    return [(min(top, max(0, r + rng.randint(-2 * CHUNK, 2 * CHUNK))), r) for r in rows]


async def audit_ok(client, keys) -> None:  # type: ignore[no-untyped-def]
    verify = await client.get("/v1/audit/verify", headers=keys["compliance"])
    assert verify.json()["ok"] is True


@pytest.mark.parametrize("seed", [1, 2])
async def test_an_opt_out_made_while_an_import_runs_wins_over_its_older_grant(
    client, keys, platform, tmp_path, monkeypatch, seed
):
    at = two_days_ago()
    src = tmp_path / "crm.ndjson"
    src.write_text("".join(grant_row(i, at) + "\n" for i in range(ROWS)), "utf-8")
    rng = random.Random(seed)
    leaving = sorted(rng.sample(range(ROWS), ROWS // 3))

    async def opt_out(i: int) -> None:
        r = await client.post(
            "/v1/opt-outs", json={"email": address(i), "source": "esp"}, headers=keys["ingest"]
        )
        assert r.status_code == 200, r.text

    summary, orders = await import_while(
        platform, monkeypatch, src, around(rng, leaving, ROWS), opt_out
    )
    assert summary.created == ROWS and summary.consents_recorded == ROWS
    assert min(orders.values()) > 0, orders  # each order happened

    assert await reached(client, keys) == {address(i) for i in range(ROWS) if i not in leaving}
    await audit_ok(client, keys)


@pytest.mark.parametrize("seed", [1, 2])
async def test_an_erasure_made_while_an_import_brings_the_customer_again_is_not_undone(
    client, keys, platform, tmp_path, monkeypatch, seed
):
    """The first half of the file brings each customer; the second half brings them again,
    with a phone and a city, while some of them ask for erasure. Their profile is erased: a
    row stored after the erasure starts a fresh profile, but the older grant it carries does
    not make the address contactable again."""
    half = ROWS // 2
    at = two_days_ago()
    first = [grant_row(i, at, first_name="Анна") for i in range(half)]
    again = [grant_row(i, at, phone=f"+7916{i:07d}", city="Казань") for i in range(half)]
    src = tmp_path / "crm.ndjson"
    src.write_text("".join(line + "\n" for line in first + again), "utf-8")
    rng = random.Random(seed)
    leaving = sorted(rng.sample(range(half), half // 3))
    profile_of = {}

    async def erase(row: int) -> None:
        i = row - half  # the customer's second row
        found = await client.get(
            "/v1/profiles", params={"email": address(i)}, headers=keys["admin"]
        )
        assert found.status_code == 200, found.text
        profile_of[i] = found.json()["profile_id"]
        r = await client.post(
            "/v1/erasure-requests",
            json={"profile_id": profile_of[i], "requested_by": "customer"},
            headers=keys["compliance"],
        )
        assert r.status_code == 202, r.text
        done = await client.get(
            f"/v1/erasure-requests/{r.json()['request_id']}", headers=keys["compliance"]
        )
        assert done.json()["status"] == "completed", done.json()

    # each once the first half is stored, around the customer's second row
    due = [(max(half, pos), row) for pos, row in around(rng, [half + i for i in leaving], ROWS)]
    summary, orders = await import_while(platform, monkeypatch, src, due, erase)
    assert summary.rejected_rows == 0
    assert min(orders.values()) > 0, orders

    assert await reached(client, keys) == {address(i) for i in range(half) if i not in leaving}
    for i in leaving:
        gone = await client.get(f"/v1/profiles/{profile_of[i]}", headers=keys["admin"])
        assert gone.status_code == 410, gone.text
        now = await client.get("/v1/profiles", params={"email": address(i)}, headers=keys["admin"])
        if now.status_code == 200:  # the second row came after the erasure: a fresh profile
            fresh = now.json()
            assert fresh["profile_id"] != profile_of[i]
            assert fresh["first_name"] is None and fresh["city"] == "Казань"
        else:
            assert now.status_code == 404, now.text
    await audit_ok(client, keys)


def phone(i: int) -> str:
    return f"+7925{i:07d}"


@pytest.mark.parametrize("seed", [1, 2])
async def test_records_posted_while_an_import_runs_join_its_customers_as_one_after_another(
    client, keys, platform, tmp_path, monkeypatch, seed
):
    """The import brings each customer's email. Beside it, the shop posts some customers' email
    with their phone, and the call centre a phone with another customer's email, which links
    the two. Whatever the interleaving, the profiles are the connected customers."""
    at = two_days_ago()
    src = tmp_path / "crm.ndjson"
    src.write_text("".join(grant_row(i, at, first_name="Анна") + "\n" for i in range(ROWS)))
    rng = random.Random(seed)
    picked = rng.sample(range(ROWS), ROWS // 2)
    shop = picked[: ROWS // 4]
    pairs = list(zip(picked[ROWS // 4 :: 2], picked[ROWS // 4 + 1 :: 2], strict=False))
    bodies = [{"source": "shop", "email": address(i), "phone": phone(i)} for i in shop]
    bodies += [{"source": "call", "phone": phone(i), "email": address(j)} for i, j in pairs]
    rows = [*shop, *(max(i, j) for i, j in pairs)]

    async def post(n: int) -> None:
        r = await client.post("/v1/profiles", json=bodies[n], headers=keys["ingest"])
        assert r.status_code in (200, 201), r.text
        assert not r.json().get("ignored"), r.text

    # `send` takes the body's number; its position is around the customer's row
    due = [(pos, n) for n, (pos, _) in enumerate(around(rng, rows, ROWS))]
    await import_while(platform, monkeypatch, src, due, post)

    links = [
        (("phone", int(b["phone"][5:])), ("email", int(b["email"][4:].split("@")[0])))
        for b in bodies
    ]
    await assert_connected(client, keys, links)
    await audit_ok(client, keys)


@pytest.mark.parametrize("seed", [1, 2])
async def test_two_imports_at_once_that_share_customers_both_finish_with_them_joined(
    client, keys, platform, tmp_path, monkeypatch, seed
):
    """The CRM and the shop import at the same time, in their own orders; the shop's rows
    bring some CRM customers' phones, and some phones with another customer's email. Both
    imports store every row (neither fails on the other's locks), and the profiles are the
    connected customers."""
    monkeypatch.setattr("cdp.importer.CHUNK", CHUNK)
    monkeypatch.setattr("cdp.importer.TXN_ROWS", 3 * CHUNK)
    rng = random.Random(seed)
    at = two_days_ago()
    crm = [grant_row(i, at, first_name="Анна") for i in range(ROWS)]
    rng.shuffle(crm)
    picked = rng.sample(range(ROWS), ROWS // 2)
    pairs = [(i, i) for i in picked[: ROWS // 4]] + list(
        zip(picked[ROWS // 4 :: 2], picked[ROWS // 4 + 1 :: 2], strict=False)
    )
    rng.shuffle(pairs)
    shop = [json.dumps({"phone": phone(i), "email": address(j)}) for i, j in pairs]
    (tmp_path / "crm.ndjson").write_text("".join(line + "\n" for line in crm), "utf-8")
    (tmp_path / "shop.ndjson").write_text("".join(line + "\n" for line in shop), "utf-8")

    a, b = await asyncio.gather(
        run_import(platform, tmp_path / "crm.ndjson", "crm", workers=0),
        run_import(platform, tmp_path / "shop.ndjson", "shop", workers=0),
    )
    assert (a.rows, a.rejected_rows, a.identifiers_ignored) == (ROWS, 0, 0)
    assert (b.rows, b.rejected_rows, b.identifiers_ignored) == (len(pairs), 0, 0)
    links = [(("phone", i), ("email", j)) for i, j in pairs]
    await assert_connected(client, keys, links)
    await audit_ok(client, keys)


async def assert_connected(client, keys, links: list[tuple[tuple[str, int], tuple[str, int]]]):  # type: ignore[no-untyped-def]
    """Every customer's email, and the phones `links` join to emails, are held by one profile
    per connected group."""
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(x: tuple[str, int]) -> tuple[str, int]:
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for i in range(ROWS):
        find(("email", i))
    for x, y in links:
        parent[find(x)] = find(y)
    expected: dict[tuple[str, int], set[tuple[str, int]]] = {}
    for x in list(parent):
        expected.setdefault(find(x), set()).add(x)

    got: dict[str, set[tuple[str, int]]] = {}
    for kind, n in parent:
        value = address(n) if kind == "email" else phone(n)
        r = await client.get("/v1/profiles", params={kind: value}, headers=keys["admin"])
        assert r.status_code == 200, r.text
        got.setdefault(r.json()["profile_id"], set()).add((kind, n))
    assert sorted(map(sorted, got.values())) == sorted(map(sorted, expected.values()))
