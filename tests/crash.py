"""Crash consistency for tests: run the real `cdp` command line or server in a process of its
own, kill it with SIGKILL (as power loss, the OOM killer or `kill -9` would: no handler, no
`finally`, no flush), start it again and look at what it left.

    site = Site.fresh(backend, tmp_path)      # an empty database and key store of its own
    proc = site.spawn("import", ...)          # `python -m cdp.cli import ...`
    await site.kill_when(proc, lambda: site.count("profiles") >= 100, extra=0.05)
    site.cli("import", ...)                   # run again to completion
    async with site.opened() as (p, client, keys):
        await assert_invariants(p, client, keys, "after the crash")

The process is started in a session of its own and the whole session is killed (`cdp import`
has validation workers; `cdp serve` none but uvicorn's): nothing of it survives to finish
the work after the kill.

CDP_CRASH_ROUNDS=N tries N seeded kill points per scenario and database instead of the one or
two the suite runs; CDP_CRASH_SEED=k picks other ones; CDP_CRASH_IMPORT_ROWS=N sizes the
import's file (400 in the suite); CDP_CRASH_PG_PREFIX names the PostgreSQL databases it makes
(crash_review_ and a random suffix, each dropped after).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from api.app import create_app
from cdp.apikeys import create_key
from cdp.platform import Platform, open_platform
from tests.conftest import PG_ADMIN_URL, TEST_MASTER_KEY, _pg_dsn, make_settings, pg_url
from tests.helpers import pg_admin

ROUNDS = int(os.environ.get("CDP_CRASH_ROUNDS", "0"))  # 0: the suite's few fixed points
SEED = int(os.environ.get("CDP_CRASH_SEED", "0"))
PG_PREFIX = os.environ.get("CDP_CRASH_PG_PREFIX", "crash_review_")  # the databases it makes
REPO = Path(__file__).resolve().parent.parent


def rounds(default: int) -> int:
    return ROUNDS or default


def rng(*parts: object) -> random.Random:
    return random.Random(f"{SEED}/" + "/".join(map(str, parts)))


@dataclass
class Site:
    """One platform's database and key store, and the environment its commands run in."""

    backend: str
    tmp: Path
    url: str
    pg_name: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    spawned: list[subprocess.Popen] = field(default_factory=list)

    @classmethod
    async def fresh(cls, backend: str, tmp: Path, **env: str) -> Site:
        tmp.mkdir(parents=True, exist_ok=True)
        if backend == "sqlite":
            return cls(backend, tmp, f"sqlite+aiosqlite:///{tmp / 'cdp.db'}", extra_env=env)
        name = f"{PG_PREFIX}{uuid.uuid4().hex[:10]}"
        await pg_admin(f'CREATE DATABASE "{name}"')
        return cls(backend, tmp, pg_url(name), pg_name=name, extra_env=env)

    async def drop(self) -> None:
        for proc in self.spawned:
            if proc.poll() is None:
                kill(proc)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None and not pipe.closed:
                    pipe.close()
        if self.pg_name:
            await pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
            await pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_name}_keys" WITH (FORCE)')

    def env(self, **more: str) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "CDP_DATABASE_URL": self.url,
            "CDP_MASTER_KEY": TEST_MASTER_KEY,
            "CDP_DEV_KEY_DIR": str(self.tmp / "devkeys"),
            "CDP_DEFAULT_JURISDICTION": "RU",
            "CDP_CHECKPOINT_INTERVAL": "0",
            "CDP_WEBHOOK_DISPATCHER": "off",
            **self.extra_env,
            **more,
        }

    def spawn(self, *args: str, **env: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdp.cli", *args],
            env=self.env(**env),
            cwd=self.tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # killed with its workers, as a whole
        )
        self.spawned.append(proc)
        return proc

    def cli(self, *args: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cdp.cli", *args],
            env=self.env(**env),
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    async def count(self, table: str, where: str = "") -> int:
        """Rows of `table` committed so far, read beside the running process (-1: not yet
        readable, such as before the migrations made the table)."""
        query = f"SELECT count(*) FROM {table} {where}"
        if self.backend == "sqlite":
            path = self.url.split(":///", 1)[1]
            if not Path(path).exists():
                return -1
            try:
                with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as c:
                    c.execute("PRAGMA busy_timeout=2000")
                    return int(c.execute(query).fetchone()[0])
            except sqlite3.Error:
                return -1
        import asyncpg

        try:
            conn = await asyncpg.connect(_pg_dsn(self.pg_name or ""), timeout=5)
        except Exception:
            return -1
        try:
            return int(await conn.fetchval(query))
        except Exception:
            return -1
        finally:
            await conn.close()

    async def kill_when(
        self,
        proc: subprocess.Popen,
        ready: Callable[[], Awaitable[bool]],
        *,
        extra: float = 0.0,
        limit: float = 120.0,
    ) -> bool:
        """SIGKILL `proc` `extra` seconds after `ready()` first holds (polled); False if the
        process ended first (nothing killed)."""
        end = time.monotonic() + limit
        while proc.poll() is None:
            if await ready():
                if extra:
                    await asyncio.sleep(extra)
                if proc.poll() is not None:
                    return False
                kill(proc)
                return True
            if time.monotonic() > end:
                kill(proc)
                raise AssertionError("the process made no progress to kill it at")
            await asyncio.sleep(0.01)
        return False

    def settings(self, **overrides: Any) -> Any:
        if "CDP_MASTER_KEY" in self.extra_env:  # after a rotation
            overrides.setdefault("master_key", self.extra_env["CDP_MASTER_KEY"])
        return make_settings(self.url, self.tmp, dev_key_dir=self.tmp / "devkeys", **overrides)

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[tuple[Platform, httpx.AsyncClient, dict]]:
        """The platform in this process (as a restart opens it: migrations, the key store's
        checks, erasures redone), an HTTP client on its app, and a fresh key of each role."""
        p = await open_platform(self.settings())
        try:
            app = create_app(platform=p)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                tag = uuid.uuid4().hex[:8]
                keys = {}
                for role in ("admin", "ingest", "marketing", "compliance"):
                    key = await create_key(p.db, f"{role}-{tag}", role)
                    keys[role] = {"Authorization": f"Bearer {key}"}
                yield p, c, keys
        finally:
            await p.close()


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process's whole session, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _settle(proc)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _settle(proc: subprocess.Popen) -> None:
    """Wait (briefly) for the session's other processes to be gone: a validation worker
    still holding the SQLite file would not change the outcome, but would outlive the test."""
    for _ in range(100):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)


async def walk_members(client: httpx.AsyncClient, keys: dict, purpose: str, channel: str) -> set:
    """Every address of the whole base contactable for (purpose, channel), page by page."""
    found: set[str] = set()
    cursor = None
    while True:
        body: dict[str, Any] = {
            "purpose": purpose,
            "channel": channel,
            "rules": {"all": []},
            "limit": 1000,
        }
        if cursor:
            body["cursor"] = cursor
        r = await client.post("/v1/segments/query", json=body, headers=keys["marketing"])
        assert r.status_code == 200, r.text
        page = r.json()
        found |= {m["address"] for m in page["items"]}
        cursor = page.get("next_cursor")
        if not cursor:
            return found


def free_port(r: random.Random, low: int, high: int) -> int:
    """A port in [low, high) that nothing listens on, drawn with `r` (ports of their own for
    each test file, so files running side by side do not draw the same)."""
    for _ in range(200):
        port = r.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in {low}-{high - 1}")


async def serving(site: Site, port: int, *args: str, **env: str) -> subprocess.Popen:
    """`cdp serve --port port *args` of the site, once it answers `/health` (45 s at most)."""
    proc = site.spawn("serve", "--port", str(port), *args, **env)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as c:
        for _ in range(900):
            if proc.poll() is not None:
                raise AssertionError(f"cdp serve ended: {proc.communicate()[1][-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if (await c.get("/health")).status_code == 200:
                    return proc
            await asyncio.sleep(0.05)
    kill(proc)
    raise AssertionError("cdp serve did not answer within 45 s")


__all__ = [
    "PG_ADMIN_URL",
    "Site",
    "free_port",
    "kill",
    "rng",
    "rounds",
    "serving",
    "walk_members",
]
