"""Resource bounds of a long-running process: what it keeps in memory between requests is bounded,
and what a client sends cannot grow it (README, "Resource bounds"). Asserted by behaviour: how
much a structure holds after many distinct inputs, what is left after a request ends."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest

from cdp import keyring
from cdp.platform import Platform, open_platform
from cdp.profiles.identifiers import parse_identifier
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
