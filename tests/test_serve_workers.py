"""`cdp serve --workers N` (api.workers): several processes answer on one port, their metrics
add up, the background services run once, in the supervisor; SQLite is refused."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from api.workers import (
    RETRY_SECONDS,
    BackgroundThread,
    background_share,
    open_worker_platform,
    worker_share,
)
from cdp.settings import Settings
from tests.conftest import TEST_MASTER_KEY, pg_url
from tests.test_audit_checkpoints import grant

METRICS_TOKEN = "scrape-me-please-0123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_workers_and_their_supervisor_hold_no_more_connections_than_one_process():
    settings = Settings(pool_size=20, max_overflow=20, key_store_pool_size=10)
    kept = background_share(settings)
    assert (kept.pool_size, kept.max_overflow, kept.key_store_pool_size) == (4, 4, 2)
    for workers, share in ((2, (8, 8, 4)), (3, (5, 5, 2)), (4, (4, 4, 2)), (8, (2, 2, 1))):
        each = worker_share(settings, workers)
        assert (each.pool_size, each.max_overflow, each.key_store_pool_size) == share
        every = [each] * workers + [kept]
        assert sum(s.pool_size + s.max_overflow for s in every) <= 40
        assert sum(s.key_store_pool_size for s in every) <= 10
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


@pytest.mark.parametrize(
    ("workers", "key_store"), [("2", None), ("2", "sqlite:///{tmp}/keys.db"), ("0", None)]
)
def test_several_workers_on_sqlite_or_none_are_refused_in_one_line(
    tmp_path, workers, key_store, pg_database
):
    if key_store:  # the database on PostgreSQL, its key store on SQLite
        if pg_database is None:
            pytest.skip("PostgreSQL is not reachable")
        url = pg_url(pg_database)
        env = {"CDP_KEY_STORE_URL": key_store.format(tmp=tmp_path)}
    else:
        url, env = f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}", {}
    server = _serve(["--port", str(free_port()), "--workers", workers], url, tmp_path, **env)
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
            await grant(client, keys, email)
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

            # the figures of both workers, added up, whichever worker is scraped: requests
            # until each worker has answered some (by its own figures' file), then scrapes
            metrics_dir = _environ(workers[0])["PROMETHEUS_MULTIPROC_DIR"]
            sent, deadline = 0, time.monotonic() + 60
            while min(_health_checks(metrics_dir, w, tmp_path) for w in workers) == 0:
                assert time.monotonic() < deadline, "one worker answered no request"
                await asyncio.gather(*(_live(base) for _ in range(10)))
                sent += 10
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
                assert len(counted) == 1 and counted[0].endswith(f" {sent}.0"), (sent, counted)
                helps = [line for line in scraped.text.splitlines() if line.startswith("# HELP")]
                assert len(helps) == len(set(helps)), "a family is shown twice"
                assert "cdp_key_store_up" in scraped.text  # the operator's figures are there

        # a worker that dies is replaced, and the port keeps answering meanwhile
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            now = [c for c in _children(server.pid) if _is_worker(c)]
            if len(now) == 2 and workers[0] not in now:
                break
            assert time.monotonic() < deadline, f"the killed worker was not replaced: {now}"
            await _live(base)
            await asyncio.sleep(0.2)
        for _ in range(10):
            await _live(base)
        workers = now
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
    assert err.count(f"serving on {base} with 2 workers") == 1, err[-3000:]


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        pairs = (item.partition(b"=") for item in fh.read().split(b"\0") if item)
        return {k.decode(): v.decode() for k, _, v in pairs}


def _health_checks(metrics_dir: str, pid: int, tmp_path: Path) -> float:
    """GET /health/live answered 200 by one worker, read from its own figures' file alone."""
    own = tmp_path / f"figures-{pid}"
    shutil.rmtree(own, ignore_errors=True)
    own.mkdir()
    source = Path(metrics_dir) / f"counter_{pid}.db"
    if not source.exists():
        return 0.0
    shutil.copy(source, own)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(own))
    for family in registry.collect():
        for sample in family.samples:
            if (
                sample.name == "cdp_requests_total"
                and sample.labels.get("path") == "/health/live"
                and sample.labels.get("status_code") == "200"
            ):
                return sample.value
    return 0.0


async def _live(base: str) -> None:
    """GET /health/live on a connection of its own."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as one:
        assert (await one.get("/health/live")).status_code == 200


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


def test_the_background_services_wait_for_a_database_that_is_down_and_stop_when_told(tmp_path):
    """A supervisor whose database is unreachable keeps serving and trying again; it does not
    lose its background services for good, nor hang on SIGTERM."""
    settings = Settings(
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere",
        master_key=TEST_MASTER_KEY,
        dev_key_dir=tmp_path / "keys",
        connect_timeout=1.0,
    )
    background = BackgroundThread(settings)
    background.start()
    time.sleep(1.5)  # the first attempt has failed by now
    assert background.alive
    started = time.monotonic()
    background.stop()
    assert not background.alive
    assert time.monotonic() - started < RETRY_SECONDS


async def test_a_worker_waits_for_a_database_that_is_briefly_down_and_not_for_a_wrong_setting():
    """A worker started again while PostgreSQL restarts must not fail its start (uvicorn's
    supervisor would then stop every worker); a fault that waiting cannot mend is raised."""
    calls: list[bool] = []

    async def restarting(settings: Settings, run_migrations: bool) -> str:
        calls.append(run_migrations)
        if len(calls) < 3:
            raise ConnectionRefusedError(111, "refused")
        return "opened"

    assert await open_worker_platform(Settings(), restarting) == "opened"  # type: ignore[arg-type]
    assert calls == [False, False, False]  # and never migrates: the supervisor has

    async def misconfigured(settings: Settings, run_migrations: bool) -> str:
        raise ValueError("not a database fault")

    with pytest.raises(ValueError):
        await open_worker_platform(Settings(), misconfigured)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["postgres"])
async def test_workers_end_when_their_supervisor_is_killed(backend, platform, tmp_path):
    """Otherwise they would go on answering on the port without background services, and the
    next `cdp serve` could not bind it."""
    port = free_port()
    server = _serve(
        ["--port", str(port), "--workers", "2"], platform.settings.database_url, tmp_path
    )
    try:
        await _started(f"http://127.0.0.1:{port}", server)
        workers = [c for c in _children(server.pid) if _is_worker(c)]
        assert len(workers) == 2, workers
    finally:
        server.kill()
        server.communicate(timeout=60)
    deadline = time.monotonic() + 20
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "a worker outlived its killed supervisor"
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # the port is free again


def _stderr_until(server: subprocess.Popen, words: str, seconds: float = 60) -> str:
    """What the server wrote to stderr, up to the line holding `words` (or its end)."""
    assert server.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as sel:
        sel.register(server.stderr, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=1):
                continue
            line = server.stderr.readline()
            if not line:
                break
            seen.append(line)
            if words in line:
                break
    return "".join(seen)


def test_serve_says_where_it_listens_once_it_is_bound_and_not_when_it_cannot_bind(tmp_path):
    """A newcomer running `make run` sees where the service answers (uvicorn's own line is
    below its log level): printed once the port is bound, so the address answers at once."""
    port = free_port()
    url = f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}"
    server = _serve(["--port", str(port)], url, tmp_path)
    try:
        err = _stderr_until(server, "serving on")
        assert f"serving on http://127.0.0.1:{port} (Ctrl+C stops it)" in err, err
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert health.status_code == 200
        # a second service on the same port cannot bind: it says so, and never "serving on"
        second = _serve(["--port", str(port)], url, tmp_path / "second")
        _, second_err = second.communicate(timeout=60)
        # one line naming the address, exit status 2 as for every setting that cannot work
        # (uvicorn's own bind logged an error line and exited 3)
        assert second.returncode == 2, second_err
        assert "serving on" not in second_err and "Traceback" not in second_err
        assert f"error: cannot serve on 127.0.0.1:{port}: Address already in use" in second_err
    finally:
        server.terminate()
        server.communicate(timeout=30)


def test_ctrl_c_stops_the_service_gracefully_with_status_0(tmp_path):
    """Ctrl+C (SIGINT) stops `cdp serve` after its background services: uvicorn then raised
    the signal again, and click answered it with "Aborted!" and exit status 1, as if it failed
    (found by running the README's Try it as a test)."""
    port = free_port()
    url = f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}"
    server = _serve(["--port", str(port)], url, tmp_path)
    try:
        _stderr_until(server, "serving on")
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, err
    assert "dispatcher_stopped" in err and err.rstrip().endswith("stopped")
    assert "Aborted" not in err and "Traceback" not in err
