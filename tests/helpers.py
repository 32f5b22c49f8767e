"""Small helpers shared by tests."""

from __future__ import annotations

import asyncio
import base64
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from sqlalchemy import func, select, text

from cdp.db.engine import Database
from cdp.platform import Platform

T = TypeVar("T")


async def pg_admin(*statements: str) -> None:
    """Run statements on the PostgreSQL server as its administrator (outside any database the
    platform uses)."""
    import asyncpg

    from tests.conftest import PG_ADMIN_URL

    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def until(check: Callable[[], Any], what: str = "the condition", limit: float = 60.0) -> None:
    """Poll `check` until it holds (a bound on waiting, never an assertion on speed)."""
    for _ in range(int(limit / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def count(p: Platform, table) -> int:  # type: ignore[no-untyped-def]
    async with p.db.read() as conn:
        return (await conn.execute(select(func.count()).select_from(table))).scalar_one()


async def raw_database_bytes(p: Platform) -> bytes:
    """Everything the database holds on disk (SQLite file) or in a dump (PostgreSQL)."""
    return await raw_bytes_of(p.db, p.settings.database_url)


async def raw_bytes_of(db: Database, url: str) -> bytes:
    """Everything the database `db` at `url` (the platform's, or its key store) holds on disk
    (SQLite file and -wal) or in a dump (PostgreSQL)."""
    if url.startswith("sqlite"):
        async with db.engine.connect() as conn:
            await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        path = Path(url.split(":///", 1)[1])
        data = path.read_bytes()
        wal = path.with_name(path.name + "-wal")
        return data + (wal.read_bytes() if wal.exists() else b"")
    parsed = urlparse(url.replace("+asyncpg", ""))
    dump = subprocess.run(
        [
            "pg_dump",
            "-h",
            parsed.hostname or "127.0.0.1",
            "-p",
            str(parsed.port or 5432),
            "-U",
            parsed.username or "postgres",
            parsed.path.lstrip("/"),
        ],
        check=True,
        capture_output=True,
    )
    return dump.stdout


def holds_plaintext(raw: bytes, value: str) -> bool:
    """True when `value` appears as UTF-8 bytes, or hex-encoded (how pg_dump writes bytea)."""
    data = value.encode()
    return data in raw or data.hex().encode() in raw.lower()


async def sql(p: Platform, statement: str, **params) -> list:  # type: ignore[no-untyped-def]
    async with p.db.write() as conn:
        result = await conn.execute(text(statement), params)
        return list(result) if result.returns_rows else []


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def padding_twin(part: str) -> str:
    """Unpadded base64url `part` with only the unused low bit of its last character flipped
    (`...L7w` -> `...L7x`): a lenient decoder reads the same bytes from both."""
    assert len(part) % 4 in (2, 3), "the last character must carry unused bits"
    twin = part[:-1] + _B64URL[_B64URL.index(part[-1]) ^ 1]
    pad = "=" * (-len(part) % 4)
    assert base64.urlsafe_b64decode(twin + pad) == base64.urlsafe_b64decode(part + pad)
    return twin


async def hypothesis_on_loop(test: Callable[[Callable[[Awaitable[T]], T]], None]) -> None:
    """Run `test(run)`, a hypothesis test, in a thread, where `run(awaitable)` awaits on this
    test's event loop (the platform's connections belong to it) and returns the result."""
    loop = asyncio.get_running_loop()

    def run(awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(wrapped(), loop).result()

    await asyncio.to_thread(test, run)


async def record(client, keys, **body) -> dict:  # type: ignore[no-untyped-def]
    """POST /v1/profiles of a CRM record (stored: 200 or 201); its answer."""
    r = await client.post("/v1/profiles", json={"source": "crm", **body}, headers=keys["ingest"])
    assert r.status_code in (200, 201), r.text
    return r.json()


async def contactable(client, keys, pid: str) -> dict:  # type: ignore[no-untyped-def]
    """The customer's contactability matrix (purpose -> channel -> bool), as the API says it."""
    r = await client.get(f"/v1/profiles/{pid}/consents", headers=keys["admin"])
    assert r.status_code == 200, r.text
    return r.json()["contactable"]


async def segment_members(client, keys, purpose: str, channel: str) -> list:  # type: ignore[no-untyped-def]
    """Every member of an ad-hoc segment of the whole base, for a purpose and channel."""
    r = await client.post(
        "/v1/segments/query",
        json={"purpose": purpose, "channel": channel, "rules": {"all": []}},
        headers=keys["marketing"],
    )
    assert r.status_code == 200, r.text
    return r.json()["items"]
