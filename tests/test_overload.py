"""Overload and slow clients, against a real server (uvicorn on a socket, as `cdp serve` runs
it): beyond CDP_MAX_REQUESTS_IN_FLIGHT a request is a 503 with Retry-After and a problem, at
once; opt-outs keep a share of their own; /health is not counted; a client that does not send
its request within CDP_CLIENT_TIMEOUT is a 408 and its slot is freed; so is the slot of a
client that leaves mid-body. Nothing here measures time: the tests wait for events (a request
counted, an answer, a closed connection); a timeout only guards against a hang."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, ClassVar

import httpx
import pytest
import uvicorn
from sqlalchemy.exc import DBAPIError

from api.app import create_app
from api.in_flight import InFlightBound, client_share, opt_out_share
from api.server import server_config
from cdp.db.conflicts import write_retried
from cdp.platform import Platform
from cdp.settings import Settings
from tests import helpers
from tests.conftest import TEST_MASTER_KEY
from tests.test_cli_errors import assert_plain

HANG_GUARD = 30.0  # seconds: a wait this long is a hang, not a slow machine
SHORT = 1.0  # CDP_CLIENT_TIMEOUT in these tests: a stalled client is soon late


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def serving(
    platform: Platform, *, bound: int, client_timeout: float = 60.0
) -> AsyncIterator[tuple[int, InFlightBound]]:
    """A server on a port of its own answering at most `bound` requests at once; its port and
    the bound's counter (to wait until a request is counted). `Served.server`: uvicorn's."""
    settings = replace(platform.settings, max_in_flight=bound, client_timeout=client_timeout)
    app = create_app(settings, platform=platform)
    (counter,) = [m for m in app.middleware if isinstance(m, InFlightBound)]
    port = free_port()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, client_timeout))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
            await asyncio.sleep(0.01)
        Served.server = server
        yield port, counter
    finally:
        for held in Held.opened:  # a test that failed: its held requests would hold the exit
            held.close()
        Held.opened.clear()
        server.should_exit = True
        await asyncio.wait_for(task, HANG_GUARD)


async def until(condition: Any) -> None:
    """`condition` (a counter, a socket: no event to wait on), HANG_GUARD at most."""
    await helpers.until(condition, limit=HANG_GUARD)


class Served:
    server: uvicorn.Server


class Held:
    """A batch ingest whose body is sent but for its last bytes: in flight until the client
    sends them, leaves, or is late."""

    opened: ClassVar[list[Held]] = []

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port, self.headers = port, headers
        Held.opened.append(self)

    async def start(self) -> Held:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        body = json.dumps({"records": [{"email": "held@example.com", "source": "t"}]}).encode()
        self.rest = body[-2:]
        head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        self.writer.write(
            b"POST /v1/profiles/batch HTTP/1.1\r\nHost: cdp\r\nContent-Type: application/json\r\n"
            + head.encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:-2]
        )
        await self.writer.drain()
        return self

    async def answer(self) -> bytes:
        """All the server sends until it closes the connection."""
        return await asyncio.wait_for(self.reader.read(), HANG_GUARD)

    def close(self) -> None:
        if hasattr(self, "writer"):
            self.writer.close()


def batch(n: int = 1) -> dict[str, Any]:
    return {"records": [{"email": f"b{i}@example.com", "source": "t"} for i in range(n)]}


def assert_shed(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == 503 and problem["title"] == "Service unavailable"
    assert "send it again" in problem["detail"]


async def test_beyond_the_bound_a_request_is_503_at_once_with_retry_after(platform, keys):
    """Nothing bounded the requests in flight: each could hold a body of up to 8 MiB, and 100
    clients each sending 8 MiB but its last bytes held 800 MB of `cdp serve`."""
    async with serving(platform, bound=2) as (port, counter):
        # two clients (one may hold half the bound)
        held = [await Held(port, keys[k]).start() for k in ("ingest", "admin")]
        await until(lambda: counter.in_flight == 2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=HANG_GUARD) as c:
            assert_shed(await c.post("/v1/profiles/batch", json=batch(), headers=keys["ingest"]))
            assert_shed(await c.get("/v1/profiles", params={"email": "x@example.com"}))
            # health checks are not counted: a busy instance is not a dead one
            assert (await c.get("/health")).status_code == 200
            assert (await c.get("/health/live")).status_code == 200
            for h in held:  # the held requests end as they would have
                h.writer.write(h.rest)
                await h.writer.drain()
                assert (await h.reader.readline()).startswith(b"HTTP/1.1 200")
                h.close()
            await until(lambda: counter.in_flight == 0)
            r = await c.post("/v1/profiles/batch", json=batch(), headers=keys["ingest"])
            assert r.status_code == 200, r.text


async def test_opt_outs_keep_their_share_while_ingests_fill_the_bound(platform, keys):
    """An opt-out is honoured at once (DESIGN.md): a flood of ingests must not shed it."""
    async with serving(platform, bound=2) as (port, counter):
        assert opt_out_share(2) == 1
        held = [await Held(port, keys[k]).start() for k in ("ingest", "admin")]
        await until(lambda: counter.in_flight == 2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=HANG_GUARD) as c:
            assert_shed(await c.post("/v1/profiles/batch", json=batch(), headers=keys["ingest"]))
            r = await c.post(
                "/v1/opt-outs",
                json={"email": "stop@example.com", "source": "t"},
                headers=keys["ingest"],
            )
            assert r.status_code == 200 and r.json()["suppressed"] is True, r.text
            # the public one-click unsubscribe takes the share too (a forged link: its 404)
            r = await c.post("/v1/unsubscribe/forged", data={"List-Unsubscribe": "One-Click"})
            assert r.status_code == 404, r.text
            r = await c.post(
                "/v1/inbound/sms",
                json={"from": "+79161234567", "text": "STOP"},
                headers=keys["ingest"],
            )
            assert r.status_code == 200 and r.json()["stop"] is True, r.text
        for h in held:
            h.close()
        await until(lambda: counter.in_flight == 0)


async def test_one_client_holds_at_most_half_the_bound_and_others_are_answered(platform, keys):
    """One client could take every slot: an import script with many connections, or a tool
    running exports in a loop, had every other client shed until it let go. Now a client
    (its credential, else its address) holds half at most."""
    async with serving(platform, bound=4) as (port, counter):
        assert client_share(4) == 2
        held = [await Held(port, keys["ingest"]).start() for _ in range(2)]
        await until(lambda: counter.in_flight == 2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=HANG_GUARD) as c:
            # the same client again: shed, though half the bound is free
            assert_shed(await c.post("/v1/profiles/batch", json=batch(), headers=keys["ingest"]))
            # another key, and a request without one (by its address), are answered
            r = await c.post("/v1/profiles/batch", json=batch(), headers=keys["admin"])
            assert r.status_code == 200, r.text
            r = await c.get("/v1/profiles", params={"email": "x@example.com"})
            assert r.status_code == 401, r.text
            for h in held:  # once it lets go, the client is answered again
                h.close()
            await until(lambda: counter.in_flight == 0 and not counter.by_client)
            r = await c.post("/v1/profiles/batch", json=batch(), headers=keys["ingest"])
            assert r.status_code == 200, r.text


async def test_a_client_that_stalls_mid_body_is_408_and_frees_its_slot(platform, keys):
    """uvicorn waits for a body as long as the client likes: a client that stopped short of
    its last bytes held its request in flight (and its body in memory) for good."""
    async with serving(platform, bound=1, client_timeout=SHORT) as (port, counter):
        stalled = await Held(port, keys["ingest"]).start()
        answer = await stalled.answer()  # the server gives up on it and closes
        assert answer.startswith(b"HTTP/1.1 408"), answer
        stalled.close()
        await until(lambda: counter.in_flight == 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=HANG_GUARD) as c:
            r = await c.post("/v1/profiles/batch", json=batch(), headers=keys["ingest"])
            assert r.status_code == 200, r.text


async def test_a_connection_that_sends_no_whole_head_is_408_and_closed(platform):
    """A connection that sent nothing, or part of a head, was kept open for good: 1,000 of
    them held 1,000 descriptors of `cdp serve`, which a few thousand more would exhaust."""
    async with serving(platform, bound=1, client_timeout=SHORT) as (port, _):
        silent = await asyncio.open_connection("127.0.0.1", port)
        partial = await asyncio.open_connection("127.0.0.1", port)
        partial[1].write(b"GET /health HTTP/1.1\r\nHost: cdp\r\nX-Slow: a")
        await partial[1].drain()
        for reader, writer in (silent, partial):
            answer = await asyncio.wait_for(reader.read(), HANG_GUARD)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            writer.close()


async def test_the_bound_frees_when_a_client_leaves_mid_body(platform, keys):
    """A request whose client disconnects before its body is whole gives its slot back: the
    bound does not leak until every slot is taken by requests no one is sending."""
    async with serving(platform, bound=1) as (port, counter):
        for _ in range(5):  # more times than the bound: a leak would shed the next request
            leaving = await Held(port, keys["ingest"]).start()
            await until(lambda: counter.in_flight == 1)
            leaving.writer.transport.abort()  # as a client killed mid-upload (a reset)
            await until(lambda: counter.in_flight == 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=HANG_GUARD) as c:
            r = await c.post("/v1/profiles/batch", json=batch(), headers=keys["ingest"])
            assert r.status_code == 200, r.text


def _env(tmp_path: Any, **env: str) -> dict[str, str]:
    return {
        **os.environ,
        "CDP_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}",
        "CDP_MASTER_KEY": TEST_MASTER_KEY,
        "CDP_DEV_KEY_DIR": str(tmp_path / "keys"),
        "CDP_CHECKPOINT_INTERVAL": "0",
        **env,
    }


def _serve(tmp_path: Any, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cdp.cli", "serve", "--port", str(env.pop("PORT"))],
        env=_env(tmp_path, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ingest_key(tmp_path: Any) -> dict[str, str]:
    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "cdp.cli", *args],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=HANG_GUARD * 2,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    cli("migrate")
    key = cli("keys", "create", "--name", "loader", "--role", "ingest").strip().splitlines()[-1]
    return {"Authorization": f"Bearer {key}"}


async def test_cdp_serve_sheds_beyond_its_bound_and_drops_a_late_client(tmp_path):
    """The settings reach the server `cdp serve` runs: a client holding the one slot makes
    the next request a 503, until it is late and dropped with a 408."""
    key = _ingest_key(tmp_path)
    port = free_port()
    server = _serve(
        tmp_path, PORT=str(port), CDP_MAX_REQUESTS_IN_FLIGHT="1", CDP_CLIENT_TIMEOUT="5"
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=HANG_GUARD) as c:

            async def up() -> bool:
                if server.poll() is not None:
                    pytest.fail(f"cdp serve ended: {server.communicate()[1][-3000:]}")
                try:
                    return (await c.get("/health/live")).status_code == 200
                except httpx.TransportError:
                    return False

            async def started() -> None:
                while not await up():  # noqa: ASYNC110 (another process)
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(started(), 60)
            held = await Held(port, key).start()

            async def shed() -> httpx.Response:
                while True:
                    r = await c.get("/v1/profiles", params={"email": "x@example.com"})
                    if r.status_code == 503:
                        return r
                    await asyncio.sleep(0.01)

            assert_shed(await asyncio.wait_for(shed(), HANG_GUARD))
            assert (await held.answer()).startswith(b"HTTP/1.1 408")
            held.close()
        # its slot is free again: the next request is answered (401: no key); on a connection
        # of its own, as the client's may have been idle for uvicorn's keep-alive timeout
        async with httpx.AsyncClient(base_url=base, timeout=HANG_GUARD) as c:
            r = await c.get("/v1/profiles", params={"email": "x@example.com"})
            assert r.status_code == 401, r.text
    finally:
        server.terminate()
        server.communicate(timeout=HANG_GUARD)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CDP_MAX_REQUESTS_IN_FLIGHT", "0"),
        ("CDP_MAX_REQUESTS_IN_FLIGHT", "many"),
        ("CDP_MAX_REQUESTS_IN_FLIGHT", "1.5"),
        ("CDP_CLIENT_TIMEOUT", "0"),
        ("CDP_CLIENT_TIMEOUT", "30s"),
        ("CDP_CLIENT_TIMEOUT", "inf"),
    ],
)
def test_a_bound_that_cannot_work_stops_serve_with_one_line(tmp_path, name, value):
    server = _serve(tmp_path, PORT=str(free_port()), **{name: value})
    try:
        out, err = server.communicate(timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        server.kill()
        pytest.fail(f"{name}={value!r} was taken: the service started")
    result = subprocess.CompletedProcess(server.args, server.returncode, out, err)
    assert_plain(result, name, code=2)
    assert len(err.strip().splitlines()) == 1, err


def test_the_defaults_bound_the_bodies_in_flight():
    settings = Settings.from_env({})
    assert settings.max_in_flight == 128 and settings.client_timeout == 60.0
    assert opt_out_share(settings.max_in_flight) == 32  # (128 + 32) x 8 MiB: 1.25 GiB at most


async def test_a_client_that_takes_no_part_of_its_answer_is_disconnected(platform, backend):
    """A client that read nothing of its answer kept its connection, and the answer in the
    server's memory, for good (uvicorn waits for the socket to drain; a streamed export
    waits with its request in flight)."""
    if backend != "sqlite":
        return  # the server, not the database
    async with serving(platform, bound=1, client_timeout=SHORT) as (port, _):
        sock = socket.socket()  # never read from
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.connect(("127.0.0.1", port))
        try:
            # a slow link: the server's socket takes little (the answer, 107 KB, would fit in
            # the buffers of loopback)
            connections = Served.server.server_state.connections
            await until(lambda: len(connections) == 1)
            (connection,) = connections
            server_side = connection.transport.get_extra_info("socket")  # type: ignore[attr-defined]
            server_side.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sock.sendall(b"GET /schema/openapi.json HTTP/1.1\r\nHost: cdp\r\n\r\n")
            await until(lambda: connection.flow.write_paused)  # type: ignore[attr-defined]
            await until(lambda: not connections)  # dropped
        finally:
            sock.close()


class _LockTableFull(Exception):
    """As asyncpg's error reaches SQLAlchemy: PostgreSQL's "out of shared memory"."""

    sqlstate = "53200"


def _lock_table_full() -> DBAPIError:
    return DBAPIError("SELECT pg_advisory_xact_lock($1)", None, _LockTableFull())


async def test_a_write_that_finds_the_lock_table_full_is_503_with_retry_after(
    client, keys, monkeypatch
):
    """On PostgreSQL with its default lock table (6,400 entries), 60 clients sending batches of
    1,000 records at once had 134 of 180 answered 500: "out of shared memory", each writer
    taking an advisory lock per identifier. It is transient (nothing was stored; the locks
    come back as the other writes commit), so it is a 503 with Retry-After, as a deadlock is.
    (Filling the real table would fail every other test on the same server: the error is
    raised as the driver raises it.)"""

    async def full(*_: Any, **__: Any) -> Any:
        raise _lock_table_full()

    monkeypatch.setattr("api.controllers.profiles.upsert_batch", full)
    r = await client.post("/v1/profiles/batch", json=batch(), headers=keys["ingest"])
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"] == "1"
    assert "nothing was stored: send it again" in r.json()["detail"]


async def test_a_group_commit_that_finds_the_lock_table_full_is_run_again(platform):
    """Opt-outs and other group commits run again when the lock table was full, as after a
    deadlock: the opt-out is recorded instead of failing."""
    runs = []

    async def work(conn: Any) -> str:
        runs.append(1)
        if len(runs) == 1:
            raise _lock_table_full()
        return "stored"

    assert await write_retried(platform.db, work, name="test") == "stored"
    assert len(runs) == 2
