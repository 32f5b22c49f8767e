"""Outages of what the service depends on, with real processes (`cdp serve`, `cdp import`) and
real outages, taken away while they work and given back: the SQLite database's disk filled up
(a small tmpfs, mounted for the test: skipped where the test may not mount one), PostgreSQL
refusing connections and losing every one it had (a TCP proxy the test controls between the
service and the server; the machine's server is never restarted), and a database that can be
read but not written.

What a user must see while the dependency is away: a 503 problem with Retry-After, never a
500 or an answer that says stored for a write that is not; `/health` saying so; the CLI one
line and a non-zero exit; `cdp import` saying which rows are stored. When it comes back the
service serves again without a restart, nothing it acknowledged is lost, and the consent
ledger verifies. tests/test_fault_injection.py injects faults at the driver instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import signal
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from consent.suppressions import suppressed_at
from tests.conftest import pg_url
from tests.crash import Site, free_port, kill, serving
from tests.helpers import pg_admin

pytestmark = pytest.mark.slow


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {done.stderr.strip()[:200]}")


def resize(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB filesystem of the test's own (tmpfs); `resize` gives it room again."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "3m")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def sqlite_site(disk: Path, tmp_path: Path, **env: str) -> Site:
    """A SQLite platform whose database and key store lie on `disk`; the commands' working
    directory and development keys elsewhere."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return Site("sqlite", work, f"sqlite+aiosqlite:///{disk / 'cdp.db'}", extra_env=env)


def customers_csv(path: Path, rows: int) -> Path:
    with path.open("w") as f:
        f.write("email,first_name,last_name\n")
        for n in range(rows):
            f.write(f"outage-{n}@example.com,{'Анна' * 30},{'Иванова' * 20}\n")
    return path


async def test_an_import_that_fills_the_disk_says_which_rows_are_stored(small_disk, tmp_path):
    """`cdp import` whose database's disk fills up midway: it said nothing of what it had
    stored and ended in sqlite3's traceback (the WAL checkpoint after the load failed too,
    and its error stood in for the import's own). It must say, in one line, up to which line
    the rows are stored, exactly as many as the database holds; run again with room, it
    stores the rest."""
    site = sqlite_site(small_disk, tmp_path)
    assert (await asyncio.to_thread(site.cli, "migrate")).returncode == 0
    file = customers_csv(tmp_path / "customers.csv", 4500)

    done = await asyncio.to_thread(site.cli, "import", str(file), "--source", "crm")
    assert done.returncode == 1, (done.stdout, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    said = done.stderr.strip().splitlines()[-1]
    assert said.startswith("Error: the import stopped"), said
    assert "disk is full" in said and "outage-" not in done.stderr + done.stdout
    stored = int(re.search(r"\((\d+) imported\)", said).group(1))  # type: ignore[union-attr]
    assert 0 < stored < 4500
    assert await site.count("profiles") == stored

    resize(small_disk, "64m")
    again = await asyncio.to_thread(site.cli, "import", str(file), "--source", "crm")
    assert again.returncode == 0, again.stderr[-2000:]
    assert await site.count("profiles") == 4500
    assert f"joined existing: {stored}" in again.stdout, again.stdout


PORTS = (8750, 8800)  # this file's own range (tests/crash.py: free_port)


@dataclass
class Served:
    """A running `cdp serve` whose log is read as it comes (a full pipe would stop it)."""

    proc: subprocess.Popen
    client: httpx.AsyncClient
    log: list[str] = field(default_factory=list)

    def stop(self) -> None:
        kill(self.proc)

    def assert_log_clean(self) -> None:
        text = "".join(self.log)
        assert "outage-" not in text, "an address in the log"
        assert "Traceback" not in text and "unhandled_error" not in text, text[-3000:]


@contextlib.asynccontextmanager
async def served(site: Site, name: str) -> AsyncIterator[Served]:
    port = free_port(random.Random(f"outages/{name}"), *PORTS)
    proc = await serving(site, port)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        server = Served(proc, client, log)
        try:
            yield server
        finally:
            server.stop()


async def api_key(site: Site, role: str) -> dict[str, str]:
    done = await asyncio.to_thread(
        site.cli, "keys", "create", "--name", f"{role}-{uuid.uuid4().hex[:8]}", "--role", role
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {"Authorization": f"Bearer {done.stdout.strip().splitlines()[-1]}"}


def assert_refused(r: httpx.Response, *words: str) -> None:
    """A 503 problem with Retry-After whose detail holds `words`."""
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert int(r.headers["retry-after"]) > 0
    for word in words:
        assert word in r.json()["detail"], r.json()


async def assert_suppressed(site: Site, addresses: set[str]) -> None:
    """Every address is opted out of marketing on every channel, as the database holds it
    (read by a platform of this process, the service stopped)."""
    async with site.opened() as (p, client, keys):
        bidxs = {p.keys.indexer.index("email", a): a for a in addresses}
        async with p.db.read() as conn:
            table = await suppressed_at(conn, list(bidxs))
        missing = {a for b, a in bidxs.items() if (b, "marketing", "*") not in table}
        assert not missing, f"{len(missing)} acknowledged opt-outs are not stored"
        audit = (await client.get("/v1/audit/verify", headers=keys["compliance"])).json()
        assert audit["ok"] and audit["state"]["ok"], audit


async def opt_out(client: httpx.AsyncClient, key: dict, address: str) -> httpx.Response:
    return await client.post("/v1/opt-outs", json={"email": address, "source": "t"}, headers=key)


async def test_a_full_disk_is_a_503_that_health_reports_and_nothing_acknowledged_is_lost(
    small_disk, tmp_path
):
    """The SQLite database's disk fills up under `cdp serve`. Every write the database refuses
    is a 503 saying the disk is full (it said "the database is not reachable"), `/health`
    says so too (it said ok while no record, opt-out or read could be stored), an opt-out
    answered 200 is stored; once there is room again the service stores without a restart."""
    site = sqlite_site(small_disk, tmp_path)
    assert (await asyncio.to_thread(site.cli, "migrate")).returncode == 0
    ingest = await api_key(site, "ingest")
    async with served(site, "full") as server:
        c = server.client
        for n in range(300):  # batches of 100 customers until the disk is full
            records = [
                {"source": "crm", "email": f"outage-{n}-{i}@example.com", "first_name": "Ю" * 100}
                for i in range(100)
            ]
            r = await c.post("/v1/profiles/batch", json={"records": records}, headers=ingest)
            if r.status_code != 200:
                break
        assert_refused(r, "disk is full")
        assert_refused(await c.get("/health"), "disk is full")

        acked, refused = set(), set()
        for n in range(20):
            address = f"outage-new-{n}@example.com" if n % 2 else f"outage-0-{n}@example.com"
            r = await opt_out(c, ingest, address)
            assert r.status_code in (200, 503), r.text
            (acked if r.status_code == 200 else refused).add(address)
            if r.status_code == 503:
                assert_refused(r, "disk is full")
        assert refused, "the disk was not full"

        resize(small_disk, "64m")
        assert (await c.get("/health")).status_code == 200
        for address in refused:
            assert (await opt_out(c, ingest, address)).status_code == 200
        server.stop()
        server.assert_log_clean()
    await assert_suppressed(site, acked | refused)


@pytest.fixture
async def pg_site(pg_database: str | None, tmp_path: Path) -> AsyncIterator[Site]:
    """A new, empty PostgreSQL database and key store of the test's own (dropped after)."""
    if pg_database is None:
        pytest.skip("PostgreSQL is not reachable")
    site = await Site.fresh("postgres", tmp_path / "pg")
    try:
        yield site
    finally:
        await site.drop()


def end_sessions(name: str) -> str:
    """The statement that ends every session on the test's own database `name`."""
    return f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"


async def test_a_read_only_postgresql_is_a_503_not_a_500(pg_site):
    """The database turns read-only under `cdp serve` (a failover onto a standby, or
    `default_transaction_read_only`, here on the test's own database with its sessions
    ended): every write was a 500 "internal error" and `/health` said ok. Now each is a 503
    saying the database is read-only, and once it takes writes again the service stores
    without a restart."""
    site, name = pg_site, pg_site.pg_name
    assert (await asyncio.to_thread(site.cli, "migrate")).returncode == 0
    ingest = await api_key(site, "ingest")
    async with served(site, "read-only") as server:
        c = server.client
        await pg_admin(
            f'ALTER DATABASE "{name}" SET default_transaction_read_only = on', end_sessions(name)
        )
        try:
            assert_refused(await c.get("/health"), "read-only")
            assert_refused(await opt_out(c, ingest, "outage-ro@example.com"), "read-only")
            record = {"source": "crm", "email": "outage-ro2@example.com"}
            assert_refused(await c.post("/v1/profiles", json=record, headers=ingest), "read-only")
        finally:
            await pg_admin(
                f'ALTER DATABASE "{name}" RESET default_transaction_read_only', end_sessions(name)
            )
        assert (await c.get("/health")).status_code == 200
        assert (await opt_out(c, ingest, "outage-ro@example.com")).status_code == 200
        server.stop()
        server.assert_log_clean()
    await assert_suppressed(site, {"outage-ro@example.com"})


class TcpProxy:
    """A TCP proxy to PostgreSQL that the test controls: it forwards, or refuses every new
    connection (`refuse`: accepted and reset at once, as a server that is going down), `cut`
    resets every connection it carries (a restart, a network failure), and `freeze` keeps every
    connection open but forwards nothing more either way (a host that vanished without a reset:
    powered off, a network partition, a firewall dropping packets)."""

    def __init__(self, port: int = 5432) -> None:
        self.target = port
        self.refusing = False
        self.thawed = asyncio.Event()
        self.thawed.set()
        self.pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> TcpProxy:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, url: str) -> str:
        return url.replace(f"127.0.0.1:{self.target}", f"127.0.0.1:{self.port}")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self.pairs.add(pair)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self.pairs.discard(pair)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.thawed.wait()
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()

    def refuse(self) -> None:
        self.refusing = True
        self.cut()

    def resume(self) -> None:
        self.refusing = False

    def freeze(self) -> None:
        self.thawed.clear()

    def cut(self) -> None:
        for pair in list(self.pairs):
            for writer in pair:
                writer.transport.abort()
        self.pairs.clear()

    async def close(self) -> None:
        self.thawed.set()
        self.cut()
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    p = await TcpProxy().start()
    yield p
    await p.close()


async def test_the_key_store_going_away_is_a_503_naming_it(pg_site, proxy):
    """The key store's database (CDP_KEY_STORE_URL) goes away while the main one stays:
    `/health` named it, but a request that needed it (a record) answered "the database is
    not reachable", sending the operator to the wrong server. Now each names the key store;
    once it is back the service serves without a restart. An opt-out, even of an address
    never seen (whose sealed copy for webhooks has a share there when it can), is in force at
    once throughout (it was a 503 until 2026-12-07)."""
    site = pg_site
    site.extra_env["CDP_KEY_STORE_URL"] = proxy.url(pg_url(f"{site.pg_name}_keys"))
    assert (await asyncio.to_thread(site.cli, "migrate")).returncode == 0
    ingest = await api_key(site, "ingest")
    async with served(site, "key-store") as server:
        c = server.client
        proxy.refuse()
        assert_refused(await c.get("/health"), "key store", "CDP_KEY_STORE_URL")
        assert (await opt_out(c, ingest, "outage-ks@example.com")).status_code == 200
        record = {"source": "crm", "email": "outage-ks2@example.com"}
        assert_refused(await c.post("/v1/profiles", json=record, headers=ingest), "key store")
        proxy.resume()
        assert (await c.get("/health")).status_code == 200
        assert (await c.post("/v1/profiles", json=record, headers=ingest)).status_code == 201
        server.stop()
        server.assert_log_clean()
    site.extra_env["CDP_KEY_STORE_URL"] = pg_url(f"{site.pg_name}_keys")
    await assert_suppressed(site, {"outage-ks@example.com"})


class Load:
    """Clients sending opt-outs of new addresses and records of new customers at once; every
    answer must be a success or a 503 problem with Retry-After, never a 500."""

    def __init__(self, client: httpx.AsyncClient, key: dict[str, str]) -> None:
        self.client, self.key = client, key
        self.acked: set[str] = set()  # opt-outs answered 200
        self.statuses: list[int] = []
        self.answered = asyncio.Event()
        self._n = 0

    async def one(self) -> None:
        self._n += 1
        n = self._n
        address = f"outage-load-{n}@example.com"
        if n % 2:
            r = await opt_out(self.client, self.key, address)
        else:
            record = {"source": "crm", "email": address, "first_name": "Анна"}
            r = await self.client.post("/v1/profiles", json=record, headers=self.key)
        self.statuses.append(r.status_code)
        self.answered.set()
        if r.status_code in (200, 201):
            if n % 2:
                self.acked.add(address)
            return
        assert_refused(r)

    async def run(self, clients: int = 4, each: int = 10) -> list[int]:
        """`each` requests from each of `clients` clients; the statuses answered."""
        start = len(self.statuses)

        async def client() -> None:
            for _ in range(each):
                await self.one()

        await asyncio.gather(*(client() for _ in range(clients)))
        return self.statuses[start:]


async def test_postgresql_going_away_under_load_loses_nothing_acknowledged(pg_site, proxy):
    """PostgreSQL refuses connections and drops every one it had while `cdp serve` is under
    a load of opt-outs and records, then comes back; later every session of the service is
    ended (`pg_terminate_backend`) mid-load. Each request answers or is a 503 with
    Retry-After (never a 500), `/health` reports the outage, the service serves again
    without a restart, every opt-out it acknowledged is stored, and the ledger verifies."""
    site = pg_site
    site.url = proxy.url(site.url)
    assert (await asyncio.to_thread(site.cli, "migrate")).returncode == 0
    ingest = await api_key(site, "ingest")
    async with served(site, "postgres-away") as server:
        load = Load(server.client, ingest)
        assert set(await load.run()) <= {200, 201}

        running = asyncio.ensure_future(load.run())  # cut while requests are in flight
        await load.answered.wait()
        proxy.refuse()
        assert_refused(await server.client.get("/health"), "database")
        await running
        assert set(await load.run()) == {503}

        proxy.resume()
        assert (await server.client.get("/health")).status_code == 200
        assert set(await load.run()) <= {200, 201}

        load.answered.clear()
        running = asyncio.ensure_future(load.run())
        await load.answered.wait()
        await pg_admin(end_sessions(site.pg_name or ""))
        await running
        assert set(await load.run()) <= {200, 201}
        server.stop()
        server.assert_log_clean()
    site.url = pg_url(site.pg_name or "")
    await assert_suppressed(site, load.acked)


async def test_serve_stops_when_asked_though_its_database_host_vanished(pg_site, proxy):
    """PostgreSQL's host goes silent (no reset: powered off, partitioned) while `cdp serve`
    holds pooled connections to it and its key store, and the service is asked to stop
    (SIGTERM, as systemd or Kubernetes do): it waited for ever to close connections that would
    never answer, until it was killed. Now it gives them up and ends."""
    site = pg_site
    site.url = proxy.url(site.url)  # the key store's database too (derived from it)
    assert (await asyncio.to_thread(site.cli, "migrate")).returncode == 0
    ingest = await api_key(site, "ingest")
    async with served(site, "vanished") as server:
        load = Load(server.client, ingest)
        assert set(await load.run(clients=6, each=3)) <= {200, 201}  # connections pooled
        proxy.freeze()
        server.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(server.proc.wait, HANG_GUARD)
        except subprocess.TimeoutExpired:
            pytest.fail(f"cdp serve did not end within {HANG_GUARD:.0f} s of SIGTERM")
        # uvicorn ends by raising again the signal it stopped for, once it has shut down
        assert code == -signal.SIGTERM, "".join(server.log)[-3000:]
        server.assert_log_clean()


HANG_GUARD = 60.0  # seconds: far beyond the service's own bound on closing (a hang, not a wait)


async def test_an_import_whose_key_store_goes_away_names_it_and_what_is_stored(pg_site, proxy):
    """`cdp import` whose key store (CDP_KEY_STORE_URL) goes away midway: it said which rows
    were stored, but the cause only as "KeyStoreDown". It names the key store now; the rows
    it says are stored are those the database holds, and the same import run again once the
    store is back stores the rest."""
    site = pg_site
    site.extra_env["CDP_KEY_STORE_URL"] = proxy.url(pg_url(f"{site.pg_name}_keys"))
    assert (await asyncio.to_thread(site.cli, "migrate")).returncode == 0
    file = customers_csv(site.tmp / "customers.csv", 3000)
    importing = asyncio.ensure_future(
        asyncio.to_thread(site.cli, "import", str(file), "--source", "crm")
    )
    while await site.count("profiles") < 1000:  # some chunks stored: then the store goes
        assert not importing.done(), importing.result().stderr[-2000:]
        await asyncio.sleep(0.02)
    proxy.refuse()
    done = await importing
    proxy.resume()
    assert done.returncode == 1, done.stdout
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    said = done.stderr.strip().splitlines()[-1]
    assert "key store is not reachable (CDP_KEY_STORE_URL)" in said, said
    stored = int(re.search(r"\((\d+) imported\)", said).group(1))  # type: ignore[union-attr]
    assert stored == await site.count("profiles")
    again = await asyncio.to_thread(site.cli, "import", str(file), "--source", "crm")
    assert again.returncode == 0, again.stderr[-2000:]
    assert await site.count("profiles") == 3000


async def test_a_full_key_store_disk_is_a_503_naming_the_key_store(tmp_path):
    """The key store (a SQLite file of its own, CDP_KEY_STORE_URL) fills its disk while the
    database has room: each new customer's record was a 503 saying the database is not
    reachable, and `/health` said ok. Both now name the key store and its full disk, and the
    service stores again once there is room."""
    disk = tmp_path / "keys-disk"
    mount_tmpfs(disk, "1m")
    try:
        site = sqlite_site(tmp_path, tmp_path, CDP_KEY_STORE_URL=f"sqlite:///{disk / 'keys.db'}")
        assert (await asyncio.to_thread(site.cli, "migrate")).returncode == 0
        ingest = await api_key(site, "ingest")
        async with served(site, "key-store-full") as server:
            c = server.client
            for n in range(300):
                records = [
                    {"source": "crm", "email": f"outage-{n}-{i}@example.com"} for i in range(100)
                ]
                r = await c.post("/v1/profiles/batch", json={"records": records}, headers=ingest)
                if r.status_code != 200:
                    break
            assert_refused(r, "key store", "disk is full", "CDP_KEY_STORE_URL")
            assert_refused(await c.get("/health"), "key store", "disk is full")
            resize(disk, "64m")
            assert (await c.get("/health")).status_code == 200
            r = await c.post("/v1/profiles/batch", json={"records": records}, headers=ingest)
            assert r.status_code == 200, r.text
            server.stop()
            server.assert_log_clean()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


async def test_an_import_whose_rejects_file_fills_its_disk_says_why(tmp_path):
    """The rejects file's disk fills up midway through `cdp import`: it said which rows were
    stored, but the cause only as "OSError". It says the disk is full now (the system's
    words, never the file's name or a value), and the rows it says are stored are those the
    database holds."""
    disk = tmp_path / "rejects-disk"
    mount_tmpfs(disk, "1m")
    try:
        site = sqlite_site(tmp_path, tmp_path)
        assert (await asyncio.to_thread(site.cli, "migrate")).returncode == 0
        with (disk / "filler").open("wb") as f:  # all but 16 KiB of it
            f.write(b"\0" * (1024 * 1024 - 16 * 1024))
        file = tmp_path / "customers.csv"
        with file.open("w") as f:
            f.write("email,phone\n")
            for n in range(6000):  # every third row refused: its phone is not one
                f.write(f"outage-{n}@example.com,{'x' if n % 3 == 0 else 79161000000 + n}\n")
        rejects = disk / "rejects.csv"
        args = ("import", str(file), "--source", "crm", "--rejects", str(rejects))
        done = await asyncio.to_thread(site.cli, *args)
        assert done.returncode == 1, done.stdout
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
        said = done.stderr.strip().splitlines()[-1]
        assert "No space left on device" in said and "rejects" not in said, said
        stored = int(re.search(r"\((\d+) imported\)", said).group(1))  # type: ignore[union-attr]
        assert stored == await site.count("profiles")
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
