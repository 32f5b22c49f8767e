"""Segment export records and "members who have since opted out" (SQLite and PostgreSQL).

Every export is on record under the id of its `X-Export-Id` header, with whom it handed out;
its stats count the members who may no longer be contacted because they opted out, withdrew
or were erased after the export, each judged by the contactability rule.
"""

from __future__ import annotations

import functools
import json
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from cdp.apikeys import Principal
from cdp.db.tables import access_log, identities, segment_export_chunks, segment_exports
from cdp.segments import service
from cdp.segments.export import export_chunks
from cdp.segments.exports import prune_exports
from consent.dsr.worker import run_pending
from tests.helpers import count

NOW = datetime.now(UTC).replace(microsecond=0)
RU = {"field": "country", "op": "eq", "value": "RU"}
NO_ONE = {"withdrawn": 0, "suppressed": 0, "erased": 0}


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


async def add(client, keys, name: str, **body) -> str:  # type: ignore[no-untyped-def]
    body = {"email": f"{name}@ex.com", "country": "RU", "consents": [grant()]} | body
    body = {k: v for k, v in body.items() if v is not None}
    r = await client.post(
        "/v1/profiles", json={"source": "crm", "first_name": name, **body}, headers=keys["ingest"]
    )
    assert r.status_code in (200, 201), r.text
    return r.json()["profile_id"]


async def post(client, keys, path: str, **body) -> dict:  # type: ignore[no-untyped-def]
    r = await client.post(path, json=body, headers=keys["ingest"])
    assert r.status_code in (200, 201, 202), r.text
    return r.json()


async def opt_out(client, keys, name: str) -> None:  # type: ignore[no-untyped-def]
    await post(client, keys, "/v1/opt-outs", email=f"{name}@ex.com", source="esp")


async def consent(client, keys, name: str, status: str) -> None:  # type: ignore[no-untyped-def]
    event = grant(0) | {"status": status, "occurred_at": datetime.now(UTC).isoformat()}
    await post(client, keys, "/v1/consents", email=f"{name}@ex.com", source="web", **event)


async def erase(client, keys, platform, name: str) -> None:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": f"{name}@ex.com", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    await run_pending(platform)
    r = await client.get(f"/v1/erasure-requests/{r.json()['request_id']}", headers=keys["admin"])
    assert r.json()["status"] == "completed"


async def create(client, keys, channel: str = "email", rules: dict = RU) -> str:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/segments",
        json={"name": "newsletter", "purpose": "marketing", "channel": channel, "rules": rules},
        headers=keys["marketing"],
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def export(client, keys, sid: str, role: str = "marketing") -> tuple[str, list[dict]]:  # type: ignore[no-untyped-def]
    r = await client.get(f"/v1/segments/{sid}/export", headers=keys[role])
    assert r.status_code == 200, r.text
    return r.headers["x-export-id"], [json.loads(line) for line in r.text.splitlines()]


async def record(client, keys, sid: str, eid: str) -> dict:  # type: ignore[no-untyped-def]
    r = await client.get(f"/v1/segments/{sid}/exports/{eid}", headers=keys["marketing"])
    assert r.status_code == 200, r.text
    return r.json()


async def test_an_export_is_recorded_and_counts_who_opted_out_since(client, keys, platform):
    names = ["anna", "boris", "vera", "gleb", "dina", "egor"]
    ids = {n: await add(client, keys, n) for n in names}
    await add(client, keys, "pavel")
    await opt_out(client, keys, "pavel")  # opted out before the export: not in it
    await add(client, keys, "kira", country="DE")  # outside the rule
    sid = await create(client, keys)

    eid, members = await export(client, keys, sid)
    assert sorted(m["profile_id"] for m in members) == sorted(ids.values())
    r = await client.get(f"/v1/segments/{sid}/exports", headers=keys["admin"])
    assert r.status_code == 200
    listed = r.json()
    assert [e["export_id"] for e in listed["items"]] == [eid]
    assert listed["next_cursor"] is None
    item = listed["items"][0]
    assert item["segment_id"] == sid
    assert (item["purpose"], item["channel"], item["format"]) == ("marketing", "email", "ndjson")
    assert item["exported_by"] == "marketing-key"
    assert item["rows"] == 6
    assert item["started_at"] <= item["finished_at"]
    assert await record(client, keys, sid, eid) == item | {
        "opted_out_since": 0,
        "opted_out_since_by_reason": NO_ONE,
    }

    await opt_out(client, keys, "anna")  # API opt-out: suppressed
    await consent(client, keys, "boris", "withdrawn")  # a consent withdrawal
    await erase(client, keys, platform, "vera")
    await consent(client, keys, "gleb", "withdrawn")  # withdrew, then granted again: contactable
    await consent(client, keys, "gleb", "granted")
    await opt_out(client, keys, "kira")  # not in the export
    await opt_out(client, keys, "pavel")  # again: he was never handed out

    # the record holds ids only; vera's identity is gone, so it leads to no address any more
    async with platform.db.read() as conn:
        blobs = await conn.execute(
            select(segment_export_chunks.c.members).where(
                segment_export_chunks.c.export_id == uuid.UUID(eid)
            )
        )
        packed = b"".join(m for (m,) in blobs)
        sent = {
            uuid.UUID(bytes=packed[at : at + 16]): uuid.UUID(bytes=packed[at + 16 : at + 32])
            for at in range(0, len(packed), 32)
        }
        live = {i for (i,) in await conn.execute(select(identities.c.id))}
    assert {str(pid) for pid in sent} == set(ids.values())
    assert {pid for pid, iid in sent.items() if iid not in live} == {uuid.UUID(ids["vera"])}

    stats = await record(client, keys, sid, eid)
    assert stats["opted_out_since"] == 3
    assert stats["opted_out_since_by_reason"] == {"withdrawn": 1, "suppressed": 1, "erased": 1}
    assert stats["rows"] == 6

    r = await client.get(f"/v1/segments/{sid}/stats", headers=keys["marketing"])
    body = r.json()
    assert body["contactable"] == 3  # the API.md fields are unchanged
    assert set(body) == {"matched", "contactable", "excluded", "last_export"}
    assert body["last_export"] == stats

    # a later export hands out the three left; it is the latest now, and nobody left it yet
    eid2, members = await export(client, keys, sid, role="admin")
    assert sorted(m["profile_id"] for m in members) == sorted(
        ids[n] for n in ("gleb", "dina", "egor")
    )
    r = await client.get(f"/v1/segments/{sid}/stats", headers=keys["marketing"])
    last = r.json()["last_export"]
    assert (last["export_id"], last["rows"], last["exported_by"]) == (eid2, 3, "admin-key")
    assert last["opted_out_since"] == 0
    r = await client.get(f"/v1/segments/{sid}/exports", params={"limit": 1}, headers=keys["admin"])
    assert [e["export_id"] for e in r.json()["items"]] == [eid2]  # newest first
    r = await client.get(
        f"/v1/segments/{sid}/exports",
        params={"limit": 1, "cursor": r.json()["next_cursor"]},
        headers=keys["admin"],
    )
    assert [e["export_id"] for e in r.json()["items"]] == [eid]
    assert r.json()["next_cursor"] is None

    async with platform.db.read() as conn:
        logged = (
            await conn.execute(
                select(access_log.c.action, access_log.c.rows, access_log.c.detail).where(
                    access_log.c.action.like("segment.export%")
                )
            )
        ).all()
    assert sorted((row.action, row.rows, row.detail["export_id"]) for row in logged) == sorted(
        [
            ("segment.export_started", 0, eid),
            ("segment.export", 6, eid),
            ("segment.export_started", 0, eid2),
            ("segment.export", 3, eid2),
        ]
    )


async def test_members_are_followed_through_merges_across_pages(
    client, keys, platform, monkeypatch
):
    monkeypatch.setattr(service, "export_chunks", functools.partial(export_chunks, page_size=2))
    older = await add(client, keys, "old", email=None, external_id="X-1", consents=[])  # no member
    ids = {n: await add(client, keys, n) for n in ("a", "b", "c", "d", "e")}
    sid = await create(client, keys)
    eid, members = await export(client, keys, sid)
    assert len(members) == 5
    async with platform.db.read() as conn:
        chunks = (
            await conn.execute(
                select(segment_export_chunks.c.seq, segment_export_chunks.c.rows)
                .where(segment_export_chunks.c.export_id == uuid.UUID(eid))
                .order_by(segment_export_chunks.c.seq)
            )
        ).all()
    # one chunk per page: a range of 2 profiles ("old" has no email)
    assert [tuple(c) for c in chunks] == [(0, 1), (1, 2), (2, 2)]

    # c's profile is merged into an older one; the address c was sent moves with it
    await add(client, keys, "c", external_id="X-1", consents=[])
    r = await client.get(f"/v1/profiles/{ids['c']}", headers=keys["admin"])
    assert r.json()["profile_id"] == older
    assert (await record(client, keys, sid, eid))["opted_out_since"] == 0
    await opt_out(client, keys, "c")
    await consent(client, keys, "e", "withdrawn")
    stats = await record(client, keys, sid, eid)
    assert stats["opted_out_since"] == 2
    assert stats["opted_out_since_by_reason"] == {"withdrawn": 1, "suppressed": 1, "erased": 0}


async def test_profile_channels_count_withdrawals_of_the_profile(client, keys):
    pid = await add(client, keys, "pia", consents=[grant(channel="push")])
    await add(client, keys, "quin", consents=[grant(channel="push")])
    sid = await create(client, keys, channel="push")
    eid, members = await export(client, keys, sid)
    assert len(members) == 2
    token = next(m["unsubscribe_token"] for m in members if m["profile_id"] == pid)
    r = await client.post(f"/v1/unsubscribe/{token}")
    assert r.status_code == 200
    stats = await record(client, keys, sid, eid)
    assert stats["opted_out_since_by_reason"] == {"withdrawn": 1, "suppressed": 0, "erased": 0}


async def test_an_export_cut_short_keeps_what_was_sent(client, keys, platform):
    for n in ("a", "b", "c"):
        await add(client, keys, n)
    sid = await create(client, keys)
    who = Principal("exporter", "marketing")

    started = await service.start_export(platform, who, sid, "ndjson")
    first = await anext(started.chunks)  # the one page: 3 members
    assert len(first.splitlines()) == 3
    await started.chunks.aclose()  # the client went away before the end of the stream
    early = await service.start_export(platform, who, sid, "csv")
    assert (await anext(early.chunks)).startswith(b"profile_id,")  # the CSV header only
    await early.chunks.aclose()

    r = await client.get(f"/v1/segments/{sid}/exports", headers=keys["marketing"])
    rows = {e["export_id"]: e for e in r.json()["items"]}
    cut, header_only = rows[str(started.export_id)], rows[str(early.export_id)]
    assert (cut["rows"], cut["finished_at"], cut["exported_by"]) == (3, None, "exporter")
    assert (header_only["rows"], header_only["finished_at"]) == (0, None)
    await opt_out(client, keys, "b")
    assert (await record(client, keys, sid, cut["export_id"]))["opted_out_since"] == 1
    assert (await record(client, keys, sid, header_only["export_id"]))["opted_out_since"] == 0


async def test_export_records_are_for_marketing_and_admin_only(client, keys):
    await add(client, keys, "anna")
    sid = await create(client, keys)
    eid, _ = await export(client, keys, sid)
    other = await create(client, keys)
    for path in (f"/v1/segments/{sid}/exports", f"/v1/segments/{sid}/exports/{eid}"):
        for role in ("ingest", "compliance"):
            r = await client.get(path, headers=keys[role])
            assert r.status_code == 403, (path, role)
        r = await client.get(path)
        assert r.status_code == 401, path
    for path in (
        f"/v1/segments/{other}/exports/{eid}",  # an export of another segment
        f"/v1/segments/{sid}/exports/not-an-id",
        f"/v1/segments/{sid}/exports/{other}",
        f"/v1/segments/{eid}/exports",
    ):
        r = await client.get(path, headers=keys["marketing"])
        assert r.status_code == 404, path
    r = await client.get(f"/v1/segments/{sid}/exports?cursor=junk", headers=keys["marketing"])
    assert r.status_code == 400
    assert r.json()["errors"][0]["field"] == "cursor"
    r = await client.get(f"/v1/segments/{other}/stats", headers=keys["marketing"])
    assert r.json()["last_export"] is None
    r = await client.get("/schema/openapi.json")
    assert "/v1/segments/{segment_id}/exports/{export_id}" in r.json()["paths"]


async def test_old_export_records_are_pruned(client, keys, platform):
    await add(client, keys, "anna")
    sid = await create(client, keys)
    old, _ = await export(client, keys, sid)
    assert await prune_exports(platform) == 0  # recent: kept
    later = datetime.now(UTC) + timedelta(days=181)
    await export(client, keys, sid)
    async with platform.db.write() as conn:  # the second export was made 180 days later
        await conn.execute(
            update(segment_exports)
            .where(segment_exports.c.id != uuid.UUID(old))
            .values(started_at=later - timedelta(days=1))
        )
    assert await prune_exports(platform, now=later) == 1
    r = await client.get(f"/v1/segments/{sid}/exports", headers=keys["marketing"])
    assert old not in [e["export_id"] for e in r.json()["items"]]
    assert len(r.json()["items"]) == 1
    assert await count(platform, segment_export_chunks) == 1


async def test_an_erasure_completed_during_an_export_is_honoured_by_the_rest_of_it(
    client, keys, platform
):
    """The export selects the next range of customers while it sends one: a customer whose
    erasure completes meanwhile was in a range already selected, with their data key, and their
    address and name were still sent after the erasure had completed."""
    for n in ("a", "b", "c", "d"):
        await add(client, keys, n)
    sid = await create(client, keys)
    _, definition = await service._load(platform, sid)
    chunks = export_chunks(platform, definition, "ndjson", page_size=1)
    first = await anext(chunks)
    assert b"a@ex.com" in first
    await erase(client, keys, platform, "b")  # in the range selected ahead
    await erase(client, keys, platform, "d")  # in a range not selected yet
    rest = b"".join([c async for c in chunks])
    assert b"c@ex.com" in rest
    assert b"b@ex.com" not in rest and b'"first_name":"b"' not in rest
    assert b"d@ex.com" not in rest
