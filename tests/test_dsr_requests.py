"""The erasure request lifecycle through the API: receipt, duplicates, extension, rejection,
listing with overdue flags, roles, and the customer-side entry with an unsubscribe token."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select, update

from cdp.ids import utcnow
from cdp.profiles.identifiers import parse_identifier
from consent import tokens
from consent.dsr import deadlines
from consent.dsr.requests import submit_erasure
from consent.dsr.worker import dsr_worker, run_pending
from consent.dsr_tables import dsr_requests, dsr_transitions
from tests.helpers import count
from tests.test_erasure import EMAIL, PHONE, create_anna


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def held_request(platform, **kwargs):  # type: ignore[no-untyped-def]
    """A request that stays open (no worker has run yet)."""
    ident = parse_identifier(platform.policy, platform.keys.indexer, email=EMAIL)
    args = {"requested_by": "operator", "actor": "test", **kwargs}
    return (await submit_erasure(platform, ident, **args)).request_id


async def test_a_duplicate_request_joins_the_open_one(client, keys, platform):
    ids = await create_anna(client, keys)
    first = await held_request(platform)
    # the same customer named by another identifier joins it
    ident = parse_identifier(platform.policy, platform.keys.indexer, phone=PHONE)
    second = await submit_erasure(platform, ident, requested_by="customer", actor="test")
    assert second.request_id == first and second.joined
    # and so does a request through the API (which then runs the open request at once)
    r = await client.post(
        "/v1/erasure-requests",
        json={"identifier": {"profile_id": ids["absorbed"]}, "requested_by": "operator"},
        headers=keys["ingest"],
    )
    assert r.status_code == 202, r.text
    assert r.json()["request_id"] == str(first)
    assert r.json()["joined_existing"] is True
    assert await count(platform, dsr_requests) == 1

    r = await client.get(f"/v1/erasure-requests/{first}", headers=keys["compliance"])
    events = [t["event"] for t in r.json()["transitions"]]
    assert events == ["created", "joined", "joined", "status", "status"]
    assert r.json()["status"] == "completed"

    # once completed, the customer is gone: a new request names nobody
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": EMAIL, "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 404
    r = await client.post(
        "/v1/erasure-requests",
        json={"profile_id": ids["survivor"], "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 410


async def move_anna(client, keys, jurisdiction: str) -> None:  # type: ignore[no-untyped-def]
    """Anna's profile comes to say she is under `jurisdiction` (RU until then)."""
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": EMAIL, "jurisdiction": jurisdiction},
        headers=keys["ingest"],
    )
    assert r.status_code == 200, r.text


async def test_due_date_follows_the_jurisdiction(client, keys, platform):
    await create_anna(client, keys)
    await move_anna(client, keys, "EU")
    eu = await held_request(platform, jurisdiction="EU")
    async with platform.db.read() as conn:
        row = (await conn.execute(select(dsr_requests).where(dsr_requests.c.id == eu))).one()
    assert row.jurisdiction == "EU"
    eu_deadline = platform.policy.deadline("EU", "erasure")
    assert row.due_at == deadlines.due_at(row.received_at, eu_deadline, "EU")
    assert row.due_at.month != row.received_at.month  # one calendar month

    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "ru.customer@example.com", "country": "RU"},
        headers=keys["ingest"],
    )
    assert r.status_code == 201
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": "ru.customer@example.com", "requested_by": "operator"},
        headers=keys["ingest"],
    )
    body = r.json()
    assert body["jurisdiction"] == "RU"  # the customer's own
    received, due = ts(body["received_at"]), ts(body["due_at"])
    # counted on Moscow's calendar (policies/jurisdictions/RU.toml `timezone`)
    moscow = deadlines.zone_of(platform.policy, "RU")
    assert moscow is not None
    assert due == deadlines.due_at(
        received, platform.policy.deadline("RU", "erasure"), "RU", moscow
    )
    assert (due - received).days >= 12  # ten working days


async def test_extension_is_its_own_transition_with_a_reason(client, keys, platform):
    await create_anna(client, keys)
    await move_anna(client, keys, "US-CA")
    rid = await held_request(platform, jurisdiction="US-CA")
    before = (await client.get(f"/v1/erasure-requests/{rid}", headers=keys["admin"])).json()
    assert ts(before["due_at"]) - ts(before["received_at"]) == timedelta(days=45)

    r = await client.post(
        f"/v1/erasure-requests/{rid}/extend",
        json={"reason": "records spread over several systems"},
        headers=keys["compliance"],
    )
    assert r.status_code == 200, r.text
    after = r.json()
    assert ts(after["due_at"]) - ts(after["received_at"]) == timedelta(days=90)
    assert after["extended"] is True
    last = after["transitions"][-1]
    assert last["event"] == "extension"
    assert (last["from"], last["to"]) == ("received", "received")
    assert last["reason"] == "records spread over several systems"
    assert last["actor"] == "compliance-key"
    assert last["due_at"] == after["due_at"]

    again = await client.post(
        f"/v1/erasure-requests/{rid}/extend", json={"reason": "more"}, headers=keys["admin"]
    )
    assert again.status_code == 409
    empty = await client.post(
        f"/v1/erasure-requests/{rid}/extend", json={"reason": ""}, headers=keys["admin"]
    )
    assert empty.status_code == 400
    assert empty.json()["errors"][0]["field"] == "reason"
    blank = await client.post(
        f"/v1/erasure-requests/{rid}/extend", json={"reason": " \n\t"}, headers=keys["admin"]
    )
    assert blank.status_code == 400
    assert blank.json()["errors"] == [{"field": "reason", "message": "must not be blank"}]

    await run_pending(platform)
    done = await client.post(
        f"/v1/erasure-requests/{rid}/extend", json={"reason": "late"}, headers=keys["admin"]
    )
    assert done.status_code == 409


async def test_naming_a_laxer_jurisdiction_does_not_put_off_the_customers_own_deadline(
    client, keys, platform
):
    """A Russian customer's request named as under US-CA (45 days + 45) is still due by Russian
    law (10 working days + 5, within 30 days); the request keeps the jurisdiction it names, and
    says which one binds its dates and under which policy version."""
    await create_anna(client, keys)
    rid = await held_request(platform, jurisdiction="US-CA")
    got = (await client.get(f"/v1/erasure-requests/{rid}", headers=keys["compliance"])).json()
    received = ts(got["received_at"])
    moscow = deadlines.zone_of(platform.policy, "RU")
    ru = platform.policy.deadline("RU", "erasure")
    assert ts(got["due_at"]) == deadlines.due_at(received, ru, "RU", moscow)
    assert (got["jurisdiction"], got["deadline_jurisdiction"]) == ("US-CA", "RU")
    assert got["policy_version"] == platform.policy.version

    r = await client.post(
        f"/v1/erasure-requests/{rid}/extend", json={"reason": "backups"}, headers=keys["admin"]
    )
    assert r.status_code == 200, r.text
    extended = ts(r.json()["due_at"])
    assert extended == deadlines.erasure_due(platform.policy, "RU", received, extended=True)
    assert extended - received <= timedelta(days=30)  # 152-FZ art. 21(5), not US-CA's 90 days


async def test_naming_a_stricter_jurisdiction_binds_its_dates(client, keys, platform):
    await create_anna(client, keys)
    await move_anna(client, keys, "US-CA")
    rid = await held_request(platform, jurisdiction="RU")
    got = (await client.get(f"/v1/erasure-requests/{rid}", headers=keys["compliance"])).json()
    assert (got["jurisdiction"], got["deadline_jurisdiction"]) == ("RU", "RU")
    assert ts(got["due_at"]) - ts(got["received_at"]) < timedelta(days=45)


async def test_an_overdue_request_cannot_be_extended_after_the_fact(
    client, keys, platform, monkeypatch
):
    await create_anna(client, keys)
    rid = await held_request(platform, jurisdiction="EU")
    row = (await client.get(f"/v1/erasure-requests/{rid}", headers=keys["admin"])).json()
    late = ts(row["due_at"]) + timedelta(seconds=1)
    monkeypatch.setattr("consent.dsr.requests.utcnow", lambda: late)
    r = await client.post(
        f"/v1/erasure-requests/{rid}/extend",
        json={"reason": "too busy"},
        headers=keys["compliance"],
    )
    assert r.status_code == 409, r.text
    monkeypatch.undo()
    after = (await client.get(f"/v1/erasure-requests/{rid}", headers=keys["admin"])).json()
    assert after["due_at"] == row["due_at"] and after["extended"] is False
    assert [t["event"] for t in after["transitions"]] == ["created"]


async def test_a_request_that_has_not_started_can_be_rejected(client, keys, platform):
    ids = await create_anna(client, keys)
    rid = await held_request(platform)
    r = await client.post(
        f"/v1/erasure-requests/{rid}/reject",
        json={"reason": "the requester could not prove the address"},
        headers=keys["compliance"],
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "rejected"
    assert r.json()["transitions"][-1]["reason"] == "the requester could not prove the address"
    assert (await run_pending(platform)).completed == 0
    r = await client.get(f"/v1/profiles/{ids['survivor']}", headers=keys["admin"])
    assert r.status_code == 200  # nothing was erased

    r = await client.post(
        f"/v1/erasure-requests/{rid}/reject", json={"reason": "again"}, headers=keys["admin"]
    )
    assert r.status_code == 409


async def test_list_filters_by_status_paginates_and_flags_overdue(client, keys, platform):
    await create_anna(client, keys)
    held = await held_request(platform)
    for i in range(3):
        r = await client.post(
            "/v1/profiles",
            json={"source": "crm", "email": f"list{i}@example.com"},
            headers=keys["ingest"],
        )
        assert r.status_code == 201
        r = await client.post(
            "/v1/erasure-requests",
            json={"email": f"list{i}@example.com", "requested_by": "operator"},
            headers=keys["admin"],
        )
        assert r.status_code == 202
    async with platform.db.write() as conn:  # time passes: the held request is now late
        await conn.execute(
            update(dsr_requests)
            .where(dsr_requests.c.id == held)
            .values(due_at=utcnow() - timedelta(days=1))
        )

    r = await client.get("/v1/erasure-requests", headers=keys["compliance"])
    items = r.json()["items"]
    assert len(items) == 4 and r.json()["next_cursor"] is None
    by_id = {i["request_id"]: i for i in items}
    assert by_id[str(held)]["overdue"] is True
    assert by_id[str(held)]["status"] == "received"
    assert sum(i["overdue"] for i in items) == 1  # completed ones are never overdue

    r = await client.get(
        "/v1/erasure-requests", params={"status": "received"}, headers=keys["admin"]
    )
    assert [i["request_id"] for i in r.json()["items"]] == [str(held)]
    r = await client.get("/v1/erasure-requests", params={"overdue": "true"}, headers=keys["admin"])
    assert [i["request_id"] for i in r.json()["items"]] == [str(held)]

    seen: list[str] = []
    cursor = None
    while True:
        params = {"status": "completed", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (
            await client.get("/v1/erasure-requests", params=params, headers=keys["admin"])
        ).json()
        seen.extend(i["request_id"] for i in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 3 and len(set(seen)) == 3

    bad = await client.get("/v1/erasure-requests", params={"status": "done"}, headers=keys["admin"])
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "status"
    bad = await client.get("/v1/erasure-requests", params={"limit": 0}, headers=keys["admin"])
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "limit"
    bad = await client.get("/v1/erasure-requests", params={"cursor": "@@"}, headers=keys["admin"])
    assert bad.status_code == 400


async def test_roles_and_invalid_requests_store_nothing(client, keys, platform):
    await create_anna(client, keys)
    r = await client.post("/v1/erasure-requests", json={"email": EMAIL, "requested_by": "customer"})
    assert r.status_code == 401
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": EMAIL, "requested_by": "customer"},
        headers=keys["marketing"],
    )
    assert r.status_code == 403
    for body, field in [
        ({"email": "not-an-email", "requested_by": "customer"}, "email"),
        ({"email": EMAIL, "requested_by": "robot"}, "requested_by"),
        ({"email": EMAIL}, "requested_by"),
        ({"email": EMAIL, "requested_by": "customer", "jurisdiction": "XX"}, "jurisdiction"),
        ({"requested_by": "customer"}, "email"),
        ({"email": EMAIL, "phone": PHONE, "requested_by": "customer"}, "phone"),
        ({"identifier": {"email": "bad"}, "requested_by": "customer"}, "identifier.email"),
    ]:
        r = await client.post("/v1/erasure-requests", json=body, headers=keys["admin"])
        assert r.status_code == 400, (body, r.text)
        assert field in [e["field"] for e in r.json()["errors"]], (body, r.json())
        assert EMAIL not in r.text and "not-an-email" not in r.text
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": "nobody@example.com", "requested_by": "customer"},
        headers=keys["admin"],
    )
    assert r.status_code == 404
    assert await count(platform, dsr_requests) == 0
    assert await count(platform, dsr_transitions) == 0

    rid = str(uuid.uuid4())
    assert (
        await client.get(f"/v1/erasure-requests/{rid}", headers=keys["admin"])
    ).status_code == 404
    assert (await client.get("/v1/erasure-requests/x", headers=keys["admin"])).status_code == 404
    assert (await client.get("/v1/erasure-requests", headers=keys["ingest"])).status_code == 403


async def test_a_customer_erases_themselves_with_a_manage_link(client, keys, platform):
    ids = await create_anna(client, keys)
    ident = parse_identifier(platform.policy, platform.keys.indexer, email=EMAIL)
    unsubscribe = tokens.issue(
        platform.keys.token_key,
        tokens.TokenClaims(uuid.UUID(ids["survivor"]), "email", ident.bidx, "marketing", "email"),
    )
    r = await client.post(f"/v1/erasure-requests/by-token/{unsubscribe}")
    assert r.status_code == 403  # the sending tools hold that one too
    link = await client.post("/v1/preference-links", json={"email": EMAIL}, headers=keys["ingest"])
    token = link.json()["token"]
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    r = await client.post(f"/v1/erasure-requests/by-token/{forged}")
    assert r.status_code in (400, 404)
    assert await count(platform, dsr_requests) == 0

    r = await client.post(f"/v1/erasure-requests/by-token/{token}")  # no API key
    assert r.status_code == 202, r.text
    rid = r.json()["request_id"]
    request = (await client.get(f"/v1/erasure-requests/{rid}", headers=keys["admin"])).json()
    assert request["requested_by"] == "customer"
    assert request["status"] == "completed"
    assert request["transitions"][0]["actor"] == "customer"
    r = await client.get(f"/v1/profiles/{ids['absorbed']}", headers=keys["admin"])
    assert r.status_code == 410

    again = await client.post(f"/v1/erasure-requests/by-token/{token}")
    assert again.status_code == 410  # already erased


async def test_the_schema_documents_the_endpoints(client):
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    assert "/v1/erasure-requests" in paths
    assert "/v1/erasure-requests/{request_id}/extend" in paths
    assert "/v1/erasure-requests/by-token/{token}" in paths
    assert "/v1/access-requests" in paths


async def test_the_background_worker_finishes_requests_inside_the_app_process(
    client, keys, platform
):
    ids = await create_anna(client, keys)
    rid = await held_request(platform)
    async with dsr_worker(platform, interval=0.01):
        for _ in range(1000):  # wait for the worker's pass, not for a time
            async with platform.db.read() as conn:
                status = (
                    await conn.execute(
                        select(dsr_requests.c.status).where(dsr_requests.c.id == rid)
                    )
                ).scalar_one()
            if status == "completed":
                break
            await asyncio.sleep(0.01)
    assert status == "completed"
    r = await client.get(f"/v1/profiles/{ids['survivor']}", headers=keys["admin"])
    assert r.status_code == 410


async def test_cdp_dsr_list_prints_a_line_per_request_and_says_when_there_is_none(
    client, keys, platform, tmp_path
):
    """It printed nothing at all where nothing matched: an officer could not tell an empty
    list from a command that did nothing."""
    from tests.test_import import run_cli

    url = platform.settings.database_url
    empty = await asyncio.to_thread(run_cli, ["dsr", "list"], url, tmp_path)
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout == "" and "no erasure requests" in empty.stderr

    await create_anna(client, keys)
    rid = await held_request(platform)
    listed = await asyncio.to_thread(run_cli, ["dsr", "list"], url, tmp_path)
    (line,) = listed.stdout.splitlines()
    assert line.startswith(f"{rid}\treceived\tRU\treceived ") and "no erasure" not in listed.stderr
    none = await asyncio.to_thread(run_cli, ["dsr", "list", "--overdue"], url, tmp_path)
    assert none.stdout == "" and "no erasure requests match" in none.stderr


def test_cdp_dsr_list_shows_the_days_the_deadline_counts():
    """A Russian request's dates are Moscow's days, as its deadline counts them: received at
    22:30 UTC on Friday 4 December 2026 (01:30 on Saturday in Moscow) and due at 01:30 Moscow
    time on Friday 18 December, it read 'received 2026-12-04' and 'due 2026-12-17'. Other
    jurisdictions count UTC days."""
    from datetime import UTC, datetime

    from cdp.settings import DEFAULT_POLICY_DIR
    from consent.dsr.cli import list_line
    from consent.dsr.deadlines import erasure_due
    from consent.policy import load_policy

    policy = load_policy(DEFAULT_POLICY_DIR)
    received = datetime(2026, 12, 4, 22, 30, tzinfo=UTC)
    due = erasure_due(policy, "RU", received)
    assert due == datetime(2026, 12, 17, 22, 30, tzinfo=UTC)  # 10 Moscow working days
    item = {
        "request_id": "r",
        "status": "received",
        "jurisdiction": "RU",
        "deadline_jurisdiction": "RU",
        "received_at": received,
        "due_at": due,
        "overdue": False,
    }
    assert list_line(item, policy) == "r\treceived\tRU\treceived 2026-12-05\tdue 2026-12-18"
    eu = {**item, "jurisdiction": "EU", "deadline_jurisdiction": "EU"}
    assert list_line(eu, policy).endswith("received 2026-12-04\tdue 2026-12-17")
