"""Erasure: complete (no plaintext, keys destroyed, 410, no lookup), provable (the ledger still
verifies), suppressing (re-ingest is not contactable until a new grant), and crash-safe."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cdp.db.tables import events, identities, profile_keys, profiles
from cdp.ids import utcnow
from cdp.profiles.identifiers import parse_identifier
from consent.chain import verify_chain
from consent.dsr.requests import submit_erasure
from consent.dsr.worker import run_pending
from consent.dsr_tables import dsr_requests, dsr_transitions
from consent.tables import consent_ledger, suppressions
from tests.conftest import TEST_MASTER_KEY
from tests.helpers import count, holds_plaintext, raw_database_bytes

ROOT = Path(__file__).resolve().parent.parent

ANNA = {
    "source": "crm",
    "external_id": "C-1001",
    "email": "Anna.Erasure@Example.com",
    "first_name": "Анна",
    "last_name": "Стирающаяся",
    "birth_date": "1990-05-01",
    "postal_address": "ул. Забвения, 7, кв. 42",
    "postcode": "101000",
    "city": "Moscow",
    "country": "RU",
    "traits": {"vip": True},
}
EMAIL = "anna.erasure@example.com"
PHONE = "+79161230042"
SECRETS = [
    EMAIL,
    PHONE,
    PHONE.lstrip("+"),
    "Анна",
    "Стирающаяся",
    "ул. Забвения, 7, кв. 42",
    "203.0.113.77",
    "AnnaBrowser/1.0",
]


def iso(dt: Any) -> str:
    return dt.isoformat().replace("+00:00", "Z")


async def create_anna(client, keys) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Anna in two profiles merged into one, with consent evidence, events and a read."""
    crm = await client.post("/v1/profiles", json=ANNA, headers=keys["ingest"])
    assert crm.status_code == 201, crm.text
    shop = await client.post(
        "/v1/profiles",
        json={"source": "shop", "phone": "8 916 123-00-42", "country": "RU", "last_name": "Ст."},
        headers=keys["ingest"],
    )
    assert shop.status_code == 201, shop.text
    link = await client.post(
        "/v1/profiles",
        json={"source": "callcenter", "email": EMAIL, "phone": PHONE},
        headers=keys["ingest"],
    )
    assert link.json()["merged_profile_ids"] == [shop.json()["profile_id"]]
    for channel, ident in (("email", {"email": EMAIL}), ("sms", {"phone": PHONE})):
        r = await client.post(
            "/v1/consents",
            json={
                **ident,
                "purpose": "marketing",
                "channel": channel,
                "status": "granted",
                "source": "web_form",
                "occurred_at": iso(utcnow() - timedelta(days=1)),
                "evidence": {
                    "wording_id": "newsletter-v3",
                    "method": "double_opt_in",
                    "ip": "203.0.113.77",
                    "user_agent": "AnnaBrowser/1.0",
                },
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/events",
        json={
            "source": "shop",
            "event_id": "ord-erase-1",
            "type": "purchase",
            "occurred_at": iso(utcnow() - timedelta(days=2)),
            "email": EMAIL,
            "amount": "4500.00",
            "currency": "RUB",
            "category": "shoes",
            "properties": {"size": "38"},
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    survivor = crm.json()["profile_id"]
    r = await client.get(f"/v1/profiles/{survivor}/consents", headers=keys["compliance"])
    assert r.json()["contactable"]["marketing"] == {
        "email": True,
        "sms": True,
        "phone": False,
        "push": False,
        "messenger": False,
    }
    return {"survivor": survivor, "absorbed": shop.json()["profile_id"]}


async def wrapped_keys(platform, pids: list[str]) -> list[bytes]:  # type: ignore[no-untyped-def]
    async with platform.db.read() as conn:
        rows = await conn.execute(
            select(profile_keys.c.wrapped).where(
                profile_keys.c.profile_id.in_([uuid.UUID(x) for x in pids])
            )
        )
        return [w for (w,) in rows]


async def assert_erased(client, keys, platform, ids: dict[str, str], key_blobs: list[bytes]):  # type: ignore[no-untyped-def]
    for pid in ids.values():
        r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
        assert r.status_code == 410, r.text
        assert "Анна" not in r.text
    for query in (
        {"email": EMAIL},
        {"phone": PHONE},
        {"source": "crm", "external_id": "C-1001"},
    ):
        r = await client.get("/v1/profiles", params=query, headers=keys["admin"])
        assert r.status_code == 404, (query, r.text)
    r = await client.post("/v1/access-requests", json={"email": EMAIL}, headers=keys["compliance"])
    assert r.status_code == 404
    r = await client.post(
        "/v1/access-requests", json={"profile_id": ids["survivor"]}, headers=keys["compliance"]
    )
    assert r.status_code == 410

    all_ids = [uuid.UUID(x) for x in ids.values()]
    async with platform.db.read() as conn:
        statuses = {
            s
            for (s,) in await conn.execute(
                select(profiles.c.status).where(profiles.c.id.in_(all_ids))
            )
        }
        assert statuses == {"erased"}
        for table in (identities, events, profile_keys):
            left = await conn.execute(select(table).where(table.c.profile_id.in_(all_ids)))
            assert left.first() is None, table.name
        assert (await verify_chain(conn)).ok

    raw = await raw_database_bytes(platform)
    for secret in SECRETS:
        assert not holds_plaintext(raw, secret), secret
    for blob in key_blobs:  # the wrapped data keys are gone from the file / the dump
        assert blob not in raw and blob.hex().encode() not in raw.lower()


async def test_erasure_is_complete_and_the_ledger_still_verifies(client, keys, platform):
    ids = await create_anna(client, keys)
    key_blobs = await wrapped_keys(platform, [ids["survivor"]])
    assert key_blobs
    ledger_entries = await count(platform, consent_ledger)
    raw = await raw_database_bytes(platform)
    assert not holds_plaintext(raw, EMAIL)  # encrypted at rest even before the erasure

    r = await client.post(
        "/v1/erasure-requests",
        json={"email": EMAIL, "requested_by": "customer", "note": "Анна asked by phone"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "received"
    assert set(body) >= {"request_id", "status", "received_at", "due_at"}
    assert body["due_at"] > body["received_at"]

    # the erasure ran right after the answer
    r = await client.get(f"/v1/erasure-requests/{body['request_id']}", headers=keys["compliance"])
    request = r.json()
    assert request["status"] == "completed", request
    assert request["note"] is None  # it was encrypted under the destroyed key
    assert [(t["from"], t["to"]) for t in request["transitions"]] == [
        (None, "received"),
        ("received", "in_progress"),
        ("in_progress", "completed"),
    ]
    assert request["result"]["profiles"] == 2
    assert request["result"]["identities"] == 3
    assert request["result"]["events"] == 1

    await assert_erased(client, keys, platform, ids, key_blobs)
    assert await count(platform, consent_ledger) == ledger_entries  # the ledger keeps its entries
    r = await client.get(f"/v1/profiles/{ids['survivor']}/consents", headers=keys["admin"])
    assert r.status_code == 410


async def test_reingesting_the_address_gives_a_fresh_profile_not_contactable_until_a_new_grant(
    client, keys, platform
):
    ids = await create_anna(client, keys)
    before = utcnow()
    r = await client.post(
        "/v1/erasure-requests",
        json={"profile_id": ids["absorbed"], "requested_by": "operator"},
        headers=keys["admin"],
    )
    assert r.status_code == 202

    async with platform.db.read() as conn:
        rows = (await conn.execute(select(suppressions))).all()
    erasure = {(r.purpose, r.channel) for r in rows if r.reason == "erasure"}
    assert erasure == {("marketing", "*")}
    # the email, the phone and the CRM's customer number
    assert len([r for r in rows if r.reason == "erasure"]) == 3

    # a stale import carrying the old grant does not make the address contactable again
    again = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": EMAIL,
            "phone": PHONE,
            "consents": [
                {
                    "purpose": "marketing",
                    "channel": "email",
                    "status": "granted",
                    "occurred_at": iso(before - timedelta(days=1)),
                    "evidence": {"wording_id": "newsletter-v3", "method": "import"},
                }
            ],
        },
        headers=keys["ingest"],
    )
    assert again.status_code == 201, again.text
    fresh = again.json()["profile_id"]
    assert fresh not in ids.values()
    r = await client.get(f"/v1/profiles/{fresh}", headers=keys["admin"])
    assert r.status_code == 200
    assert r.json()["first_name"] is None and r.json()["merged_from"] == []
    matrix = (await client.get(f"/v1/profiles/{fresh}/consents", headers=keys["admin"])).json()
    assert matrix["contactable"]["marketing"]["email"] is False
    assert matrix["contactable"]["marketing"]["sms"] is False
    assert matrix["contactable"]["service"]["email"] is True  # service needs no consent

    # a new evidenced grant that occurred after the erasure does
    r = await client.post(
        "/v1/consents",
        json={
            "email": EMAIL,
            "purpose": "marketing",
            "channel": "email",
            "status": "granted",
            "source": "web_form",
            "evidence": {"wording_id": "newsletter-v4", "method": "double_opt_in"},
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    matrix = (await client.get(f"/v1/profiles/{fresh}/consents", headers=keys["admin"])).json()
    assert matrix["contactable"]["marketing"]["email"] is True
    assert matrix["contactable"]["marketing"]["sms"] is False
    async with platform.db.read() as conn:
        assert (await verify_chain(conn)).ok


def run_worker(db_url: str, tmp_path: Path, crash_at: str | None = None):  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "CDP_DATABASE_URL": db_url,
        "CDP_MASTER_KEY": TEST_MASTER_KEY,
        "CDP_DEFAULT_JURISDICTION": "RU",
        "CDP_DEV_KEY_DIR": str(tmp_path / "keys"),
    }
    env.pop("CDP_DSR_CRASH_AT", None)
    if crash_at:
        env["CDP_DSR_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "cdp.cli", "dsr", "run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_a_worker_killed_mid_erasure_is_completed_by_the_next_run(
    client, keys, platform, db_url, tmp_path
):
    ids = await create_anna(client, keys)
    key_blobs = await wrapped_keys(platform, [ids["survivor"]])
    ident = parse_identifier(platform.policy, platform.keys.indexer, email=EMAIL)
    submitted = await submit_erasure(platform, ident, requested_by="operator", actor="test")

    killed = run_worker(db_url, tmp_path, crash_at="after_identities")
    assert killed.returncode == -9, killed.stderr  # SIGKILL inside the erasure transaction

    # the request stays in progress, and the customer is untouched, not half-erased
    async with platform.db.read() as conn:
        status = (
            await conn.execute(
                select(dsr_requests.c.status).where(dsr_requests.c.id == submitted.request_id)
            )
        ).scalar_one()
    assert status == "in_progress"
    r = await client.get("/v1/profiles", params={"email": EMAIL}, headers=keys["admin"])
    assert r.status_code == 200 and r.json()["first_name"] == "Анна"
    assert r.json()["consents"]["contactable"]["marketing"]["email"] is True
    async with platform.db.read() as conn:
        reasons = {r for (r,) in await conn.execute(select(suppressions.c.reason))}
    assert "erasure" not in reasons

    # the key store's tombstone was written: the next process erases her as it starts and
    # completes the request with that erasure (consent.dsr.restore), before its worker runs
    finished = run_worker(db_url, tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "completed: 0" in finished.stdout

    r = await client.get(f"/v1/erasure-requests/{submitted.request_id}", headers=keys["admin"])
    request = r.json()
    assert request["status"] == "completed"
    assert [(t["event"], t["to"]) for t in request["transitions"]] == [
        ("created", "received"),
        ("status", "in_progress"),
        ("status", "completed"),
    ]
    await assert_erased(client, keys, platform, ids, key_blobs)
    verify = (await client.get("/v1/audit/verify", headers=keys["admin"])).json()
    assert verify["ok"] is True, verify


async def test_a_failing_step_rolls_back_and_the_worker_finishes_later(
    client, keys, platform, monkeypatch
):
    ids = await create_anna(client, keys)
    ident = parse_identifier(platform.policy, platform.keys.indexer, phone=PHONE)
    submitted = await submit_erasure(platform, ident, requested_by="customer", actor="test")

    import consent.dsr.erasure as erasure

    def boom(name: str) -> None:
        if name == "after_suppressions":
            raise RuntimeError("disk full")

    monkeypatch.setattr(erasure, "crash_point", boom)
    summary = await run_pending(platform)
    assert summary.failed == 1 and summary.completed == 0
    r = await client.get(f"/v1/erasure-requests/{submitted.request_id}", headers=keys["admin"])
    assert r.json()["status"] == "in_progress"
    assert r.json()["last_error"] == "RuntimeError"
    r = await client.get(f"/v1/profiles/{ids['survivor']}", headers=keys["admin"])
    assert r.status_code == 200 and r.json()["first_name"] == "Анна"
    assert await count(platform, suppressions) == 0

    monkeypatch.undo()
    summary = await run_pending(platform)
    assert summary.completed == 1
    await assert_erased(client, keys, platform, ids, [])
    # a further run finds nothing to do
    assert (await run_pending(platform)).completed == 0
    async with platform.db.read() as conn:
        n = await conn.execute(
            select(dsr_transitions.c.id).where(dsr_transitions.c.request_id == submitted.request_id)
        )
        assert len(n.all()) == 4  # created, started, resumed, completed


async def test_one_pass_of_the_worker_reaches_every_open_request_past_a_page_of_failures(
    client, keys, platform, monkeypatch
):
    """A pass used to take the 500 oldest open requests and stop: `cdp dsr run` after a
    retention run of thousands said "failed: 0" and left the rest open, and 500 requests that
    kept failing (retried first, being the oldest) kept every newer one from being erased."""
    import consent.dsr.erasure as erasure
    import consent.dsr.worker as worker

    requests = []
    for n in range(5):
        email = f"page.{n}@example.com"
        r = await client.post(
            "/v1/profiles", json={"source": "crm", "email": email}, headers=keys["ingest"]
        )
        assert r.status_code == 201, r.text
        ident = parse_identifier(platform.policy, platform.keys.indexer, email=email)
        submitted = await submit_erasure(platform, ident, requested_by="customer", actor="test")
        requests.append(submitted.request_id)
    failing = set(requests[:2])  # the two oldest fail, as a page of them would
    erase = erasure.erase

    async def erase_or_fail(p, request_id, actor=erasure.WORKER):  # type: ignore[no-untyped-def]
        if request_id in failing:
            raise RuntimeError("key store refused")
        return await erase(p, request_id, actor)

    monkeypatch.setattr(erasure, "erase", erase_or_fail)
    monkeypatch.setattr(worker, "PAGE", 2)
    summary = await run_pending(platform)
    assert (summary.completed, summary.failed) == (3, 2)
    assert set(summary.failed_ids) == failing
    async with platform.db.read() as conn:
        statuses = dict(
            (await conn.execute(select(dsr_requests.c.id, dsr_requests.c.status))).all()
        )
    assert [statuses[rid] for rid in requests] == ["in_progress"] * 2 + ["completed"] * 3

    monkeypatch.setattr(erasure, "erase", erase)
    assert (await run_pending(platform)).completed == 2


async def test_no_segment_member_list_or_export_returns_an_erased_customer(client, keys):
    ids = await create_anna(client, keys)
    definition = {
        "purpose": "marketing",
        "channel": "email",
        "rules": {"field": "jurisdiction", "op": "eq", "value": "RU"},
    }
    seg = await client.post(
        "/v1/segments", json={"name": "all RU", **definition}, headers=keys["marketing"]
    )
    assert seg.status_code == 201, seg.text
    sid = seg.json()["id"]

    async def reached() -> tuple[set[str], bytes]:
        query = await client.post("/v1/segments/query", json=definition, headers=keys["marketing"])
        members = await client.get(f"/v1/segments/{sid}/members", headers=keys["marketing"])
        export = await client.get(
            f"/v1/segments/{sid}/export", params={"format": "ndjson"}, headers=keys["marketing"]
        )
        assert query.status_code == members.status_code == export.status_code == 200
        found = {m["profile_id"] for m in query.json()["items"] + members.json()["items"]}
        return found, export.content

    found, export = await reached()
    assert found == {ids["survivor"]} and EMAIL.encode() in export

    r = await client.post(
        "/v1/erasure-requests",
        json={"email": EMAIL, "requested_by": "customer"},
        headers=keys["admin"],
    )
    assert r.status_code == 202
    found, export = await reached()
    assert found == set()
    assert EMAIL.encode() not in export and ids["survivor"].encode() not in export
    stats = await client.get(f"/v1/segments/{sid}/stats", headers=keys["marketing"])
    assert stats.json()["contactable"] == 0


async def test_no_earlier_page_of_an_erased_customer_stays_in_the_sqlite_wal(
    client, keys, platform
):
    """The plaintext columns (city, traits, categories) of an erased customer are not in the
    database files as they lie on disk, -wal file included, without any checkpoint of ours:
    a backup or a snapshot of the directory copies both."""
    if not platform.db.is_sqlite:
        return
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "zorg@example.com",
            "city": "Zorgcity",
            "traits": {"note": "Zorgtrait"},
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": "zorg@example.com", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202
    status = await client.get(
        f"/v1/erasure-requests/{r.json()['request_id']}", headers=keys["compliance"]
    )
    assert status.json()["status"] == "completed"
    path = Path(platform.settings.database_url.split(":///", 1)[1])
    wal = path.with_name(path.name + "-wal")
    on_disk = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    for value in (b"Zorgcity", b"Zorgtrait"):
        assert value not in on_disk


async def test_an_erasure_by_another_process_is_honoured_at_once_by_this_one(
    client, keys, platform, db_url, tmp_path
):
    """The API runs as several processes (and `cdp dsr run` beside them): once an erasure has
    committed anywhere, no process may still decrypt the customer's data with a key it had
    cached. Before, another process read the evidence (IP, user agent) for up to a minute."""
    from tests.conftest import make_settings

    ids = await create_anna(client, keys)

    async def evidence_shown() -> list:  # type: ignore[type-arg]
        r = await client.get(
            "/v1/audit/consent-events", params={"email": EMAIL}, headers=keys["compliance"]
        )
        assert r.status_code == 200, r.text
        return [e["evidence"] for e in r.json()["items"] if e["evidence"]]

    assert any(e.get("ip") == "203.0.113.77" for e in await evidence_shown())
    ident = parse_identifier(platform.policy, platform.keys.indexer, email=EMAIL)
    await submit_erasure(platform, ident, requested_by="operator", actor="test")

    from cdp.platform import open_platform

    other = await open_platform(make_settings(db_url, tmp_path), run_migrations=False)
    try:
        assert (await run_pending(other)).completed == 1  # the erasure runs in another process
    finally:
        await other.close()

    assert await evidence_shown() == []
    r = await client.get(
        "/v1/audit/consent-events", params={"email": EMAIL}, headers=keys["compliance"]
    )
    assert "203.0.113.77" not in r.text and "AnnaBrowser" not in r.text
    await assert_erased(client, keys, platform, ids, [])


def test_every_process_that_erases_runs_the_matching_cleanup():
    """The cleanup of match suggestions, merge reviews and snapshots registered itself when
    something imported `cdp.matching`: a worker importing only the erasure worker (as its
    docstring shows) erased customers and left their suggestions, with per-field scores."""
    import subprocess
    import sys

    code = (
        "import consent.dsr.worker\n"
        "from consent.dsr.hooks import erasure_hooks\n"
        "print(sorted(h.__module__ for h in erasure_hooks()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert "cdp.matching.erasure" in out, out
