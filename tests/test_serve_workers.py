"""`cdp serve --workers N` (api.workers): several processes answer on one port, their metrics
add up, the background services run once, in the supervisor; SQLite is refused."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from api.workers import worker_share
from cdp.settings import Settings
from tests.conftest import TEST_MASTER_KEY

METRICS_TOKEN = "scrape-me-please-0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_worker_keeps_its_share_of_the_connections():
    settings = Settings(pool_size=20, max_overflow=20, key_store_pool_size=10)
    assert worker_share(settings, 1) == settings
    four = worker_share(settings, 4)
    assert (four.pool_size, four.max_overflow, four.key_store_pool_size) == (5, 5, 3)
    three = worker_share(settings, 3)  # rounded up: 7 + 7 + 7 kept, as 20 would be
    assert (three.pool_size, three.max_overflow, three.key_store_pool_size) == (7, 7, 4)
    tiny = worker_share(Settings(pool_size=1, max_overflow=0, key_store_pool_size=1), 8)
    assert (tiny.pool_size, tiny.max_overflow, tiny.key_store_pool_size) == (1, 0, 1)


def _serve(args: list[str], url: str, tmp_path: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cdp.cli", "serve", *args],
        env={
            **os.environ,
            "CDP_DATABASE_URL": url,
            "CDP_MASTER_KEY": TEST_MASTER_KEY,
            "CDP_DEV_KEY_DIR": str(tmp_path / "keys"),
            "CDP_CHECKPOINT_INTERVAL": "0",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("workers", ["2", "0"])
def test_several_workers_on_sqlite_or_none_are_refused_in_one_line(tmp_path, workers):
    url = f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}"
    server = _serve(["--port", str(free_port()), "--workers", workers], url, tmp_path)
    try:
        _, err = server.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        pytest.fail(f"--workers {workers} on SQLite was taken: the service started")
    assert server.returncode == 2, err
    assert "Traceback" not in err
    assert "--workers" in err
    if workers == "2":
        assert "PostgreSQL" in err and len(err.strip().splitlines()) == 1, err


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(c) for c in fh.read().split()]


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"spawn_main" in fh.read()
    except OSError:
        return False


async def _started(base: str, server: subprocess.Popen) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        for _ in range(300):
            if server.poll() is not None:
                pytest.fail(f"cdp serve ended: {server.communicate()[1][-3000:]}")
            try:
                if (await client.get("/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    pytest.fail("cdp serve --workers 2 did not answer within a minute")


@pytest.mark.parametrize("backend", ["postgres"])
async def test_two_workers_serve_one_port_with_shared_figures_and_one_set_of_background_services(
    backend, platform, keys, tmp_path
):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = _serve(
        ["--port", str(port), "--workers", "2"],
        platform.settings.database_url,
        tmp_path,
        CDP_METRICS_TOKEN=METRICS_TOKEN,
    )
    try:
        await _started(base, server)
        workers = [c for c in _children(server.pid) if _is_worker(c)]
        assert len(workers) == 2, workers

        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            # a customer written through one worker is read, opted out and read again through
            # whichever answers: every request sees what the ones before it wrote
            email = "anna.workers@example.com"
            created = await client.post(
                "/v1/profiles",
                headers=keys["ingest"],
                json={"source": "crm", "email": email, "first_name": "Анна", "country": "RU"},
            )
            assert created.status_code == 201, created.text
            pid = created.json()["profile_id"]
            granted = await client.post(
                "/v1/consents",
                headers=keys["ingest"],
                json={
                    "email": email,
                    "purpose": "marketing",
                    "channel": "email",
                    "status": "granted",
                    "source": "web_form",
                    "evidence": {"wording_id": "newsletter-v3", "method": "checkbox"},
                },
            )
            assert granted.status_code == 201, granted.text
            assert await _contactable_everywhere(base, pid, keys) == {True}
            out = await client.post(
                "/v1/opt-outs", headers=keys["ingest"], json={"email": email, "source": "esp"}
            )
            assert out.status_code in (200, 201), out.text
            assert await _contactable_everywhere(base, pid, keys) == {False}

            # links name the port served on, in every worker (the supervisor passes it on)
            for _ in range(4):
                async with httpx.AsyncClient(base_url=base, timeout=30) as one:
                    link = await one.post(
                        "/v1/preference-links", headers=keys["ingest"], json={"email": email}
                    )
                    assert link.status_code == 201, link.text
                    assert link.json()["url"].startswith(f"{base}/preferences/"), link.text

            # the figures of both workers, added up, whichever worker is scraped
            for _ in range(30):
                async with httpx.AsyncClient(base_url=base, timeout=30) as one:
                    assert (await one.get("/health/live")).status_code == 200
            for _ in range(4):
                async with httpx.AsyncClient(base_url=base, timeout=30) as one:
                    scraped = await one.get(
                        "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
                    )
                assert scraped.status_code == 200
                counted = [
                    line
                    for line in scraped.text.splitlines()
                    if line.startswith("cdp_requests_total{")
                    and 'path="/health/live"' in line
                    and 'status_code="200"' in line
                ]
                assert len(counted) == 1 and counted[0].endswith(" 30.0"), counted
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, err = server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            pytest.fail("cdp serve --workers 2 did not stop within a minute of SIGTERM")
    assert server.returncode == 0, err[-3000:]
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "a worker outlived its supervisor"

    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    started = [e for e in events if e.get("event") == "background_services_started"]
    assert [e["pid"] for e in started] == [server.pid], started
    assert sum(e.get("event") == "dispatcher_started" for e in events) == 1, events
    assert email not in err  # logs carry ids only


async def _contactable_everywhere(base: str, pid: str, keys: dict) -> set[bool]:
    """Whether the customer may be sent marketing email, as each of six new connections
    (spread over the workers) answers."""
    answers = set()
    for _ in range(6):
        async with httpx.AsyncClient(base_url=base, timeout=30) as one:
            r = await one.get(f"/v1/profiles/{pid}/consents", headers=keys["compliance"])
            assert r.status_code == 200, r.text
            answers.add(r.json()["contactable"]["marketing"]["email"])
    return answers


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
