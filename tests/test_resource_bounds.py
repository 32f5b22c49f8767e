"""Resource bounds of a long-running process: what it keeps in memory between requests is bounded,
and what a client sends cannot grow it (docs/testing.md, "Resource bounds"). Asserted by behaviour:
how much a structure holds after many distinct inputs, what is left after a request ends."""

from __future__ import annotations

import asyncio
import functools
import json
import uuid
from collections import OrderedDict
from pathlib import Path

import httpx
import pytest

from cdp import keyring
from cdp.platform import Platform, open_platform
from cdp.profiles.identifiers import parse_identifier
from cdp.segments import members
from consent.dsr.requests import submit_erasure
from consent.dsr.worker import run_pending
from tests.conftest import make_settings


async def _profile(client: httpx.AsyncClient, keys: dict, n: int) -> str:
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": f"bounds{n}@example.com", "first_name": "Анна"},
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    return r.json()["profile_id"]


async def test_data_key_cache_holds_at_most_its_size(
    platform: Platform, client: httpx.AsyncClient, keys: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keyring, "_CACHE_SIZE", 5)
    for n in range(12):
        await _profile(client, keys, n)
    assert len(platform.keys._keys) <= 5


async def test_an_erasure_by_another_process_leaves_this_ones_key_cache(
    platform: Platform,
    client: httpx.AsyncClient,
    keys: dict,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The process that erases forgets the key; another one (`cdp dsr run`, the supervisor of
    `cdp serve --workers`) is told nothing: its copy of the unwrapped key leaves its memory
    when it expires, whether or not anything looks the profile up again. (It held it until
    200,000 newer keys pushed it out.)"""
    monkeypatch.setattr(keyring, "CACHE_TTL", 0.0)  # every key expires as soon as cached
    pid = await _profile(client, keys, 1)
    r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
    assert r.status_code == 200, r.text
    other = await open_platform(make_settings(db_url, tmp_path), run_migrations=False)
    try:
        ident = parse_identifier(other.policy, other.keys.indexer, profile_id=pid)
        await submit_erasure(other, ident, requested_by="operator", actor="test")
        assert (await run_pending(other)).completed == 1
    finally:
        await other.close()
    for _ in range(3):  # nothing in this process looks the profile up: only its loop turns
        await asyncio.sleep(0)
    assert uuid.UUID(pid).int not in platform.keys._keys
    assert not platform.keys._keys


def _large_rules(shape: int) -> dict:
    """A definition over LARGE_DEFINITION bytes whose SQL has a shape of its own per `shape`."""
    return {
        "any": [{"field": "city", "op": "eq", "value": f"city-{j}"} for j in range(100 + shape)]
    }


async def test_large_definitions_are_not_kept_however_many_a_client_sends(
    platform: Platform, client: httpx.AsyncClient, keys: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A statement of the largest definition the rules allow held 2.4 MB, kept twice over
    (the members statements and SQLAlchemy's compiled cache, 500 entries): distinct large
    definitions sent to `POST /v1/segments/query` grew the process by that much each. Now a
    large definition is kept by neither; a small one still is."""
    compiled_cache = platform.db.engine.sync_engine._compiled_cache
    assert compiled_cache is not None
    monkeypatch.setattr(members, "_STATEMENTS", OrderedDict())  # not full from other tests

    async def query(rules: dict) -> None:
        body = {"purpose": "marketing", "channel": "email", "rules": rules, "limit": 10}
        r = await client.post("/v1/segments/query", json=body, headers=keys["marketing"])
        assert r.status_code == 200, r.text

    async def stats(rules: dict) -> None:
        body = {"name": f"s-{uuid.uuid4().hex[:8]}", "purpose": "marketing", "channel": "email"}
        r = await client.post(
            "/v1/segments", json=body | {"rules": rules}, headers=keys["marketing"]
        )
        assert r.status_code == 201, r.text
        r = await client.get(f"/v1/segments/{r.json()['id']}/stats", headers=keys["marketing"])
        assert r.status_code == 200, r.text

    await query(_large_rules(0))  # the statements around it (access log...) compiled once
    await stats(_large_rules(0))
    kept, compiled = len(members._STATEMENTS), len(compiled_cache)
    for shape in range(1, 6):
        assert (
            len(json.dumps(_large_rules(shape), separators=(",", ":"))) > members.LARGE_DEFINITION
        )
        await query(_large_rules(shape))
        await stats(_large_rules(shape))
    assert len(members._STATEMENTS) == kept
    assert len(compiled_cache) == compiled
    await query({"field": "city", "op": "eq", "value": f"small-{uuid.uuid4().hex}"})
    assert len(members._STATEMENTS) == kept + 1


async def test_an_export_cut_short_releases_its_connections_at_once(
    platform: Platform, client: httpx.AsyncClient, keys: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that goes away in the middle of an export: when the response's stream is
    closed, no range selected ahead is left running and no connection stays checked out."""
    from cdp.apikeys import Principal
    from cdp.segments import service
    from cdp.segments.export import export_chunks

    for n in range(12):
        r = await client.post(
            "/v1/profiles",
            json={
                "source": "crm",
                "email": f"cut{n}@example.com",
                "country": "RU",
                "consents": [
                    {
                        "purpose": "marketing",
                        "channel": "email",
                        "status": "granted",
                        "occurred_at": "2026-06-01T10:00:00Z",
                        "evidence": {"wording_id": "newsletter-v3", "method": "double_opt_in"},
                    }
                ],
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text
    body = {"name": "cut", "purpose": "marketing", "channel": "email"}
    r = await client.post(
        "/v1/segments",
        json=body | {"rules": {"field": "country", "op": "eq", "value": "RU"}},
        headers=keys["marketing"],
    )
    sid = r.json()["id"]
    # pages of 2 members: ranges are selected ahead of the page being sent
    monkeypatch.setattr(service, "export_chunks", functools.partial(export_chunks, page_size=2))
    pool = platform.db.engine.pool

    started = await service.start_export(platform, Principal("cut", "marketing"), sid, "ndjson")
    first = await anext(started.chunks)
    assert len(first.splitlines()) == 2
    await started.chunks.aclose()  # the client went away

    selecting = [t for t in asyncio.all_tasks() if "select_range" in repr(t.get_coro())]
    assert all(t.done() for t in selecting), selecting
    assert pool.checkedout() == 0


async def test_a_connection_that_ran_a_large_definition_is_not_kept(
    platform: Platform, client: httpx.AsyncClient, keys: dict
) -> None:
    """The driver keeps the statements it prepared, per connection: sqlite3 128 (a large
    definition's is about 2 MB: 40 of them grew a process by 83 MB), SQLAlchemy's asyncpg
    adapter 100 (about 0.6 MB: 140 of them grew `cdp serve` by 93 MB). The connection that ran
    one is closed after its transaction; one that ran a small one is kept."""
    from sqlalchemy import event

    closed: list[object] = []
    event.listen(platform.db.engine.sync_engine, "invalidate", lambda c, r, e: closed.append(c))

    async def query(rules: dict) -> None:
        body = {"purpose": "marketing", "channel": "email", "rules": rules, "limit": 10}
        r = await client.post("/v1/segments/query", json=body, headers=keys["marketing"])
        assert r.status_code == 200, r.text

    for shape in range(3):
        await query(_large_rules(shape))
    assert len(closed) == 3
    await query({"field": "city", "op": "eq", "value": "small"})
    assert len(closed) == 3
    assert platform.db.engine.pool.checkedout() == 0
