"""An operator's mistake in the settings is one plain line and exit status 1, never a traceback:
a wrong or malformed master key, a missing policy file, a database that cannot be opened, a
database URL of an engine the platform does not run on, a size that is not a number."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from cdp.crypto.master import MasterKey
from tests.helpers import sql
from tests.test_import import run_cli


def assert_plain(result, *words: str, code: int = 1) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    for word in words:
        assert word in result.stderr, result.stderr[-2000:]


async def test_a_master_key_of_another_database_is_one_line(platform, tmp_path):
    url = platform.settings.database_url
    result = run_cli(["keys", "list"], url, tmp_path, CDP_MASTER_KEY=MasterKey.generate_base64())
    assert_plain(result, "CDP_MASTER_KEY does not match this database")


def test_a_development_key_of_another_directory_is_named_not_cdp_master_key(tmp_path):
    """Without CDP_MASTER_KEY the key is the development key of `./.cdp` (CDP_DEV_KEY_DIR), so
    a command run from another directory against the same database makes a key of its own
    there. The refusal said "CDP_MASTER_KEY does not match this database" to an operator who
    had never set it; it names the development key file and the two ways out."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}"
    first = run_cli(["keys", "list"], url, tmp_path, CDP_MASTER_KEY="")
    assert first.returncode == 0, first.stderr
    elsewhere = tmp_path / "elsewhere" / ".cdp"
    result = run_cli(
        ["keys", "list"], url, tmp_path, CDP_MASTER_KEY="", CDP_DEV_KEY_DIR=str(elsewhere)
    )
    assert_plain(result, f"development master key {elsewhere / 'master.key'}", "CDP_DEV_KEY_DIR")
    assert "CDP_MASTER_KEY does not match" not in result.stderr, result.stderr
    said = [line for line in result.stderr.splitlines() if "does not match" in line]
    assert len(said) == 1 and "CDP_MASTER_KEY is not set" in said[0], result.stderr


async def test_a_master_key_that_is_not_base64_is_one_line(platform, tmp_path):
    url = platform.settings.database_url
    result = run_cli(["audit", "verify"], url, tmp_path, CDP_MASTER_KEY="not a key")
    assert_plain(result, "CDP_MASTER_KEY is not valid base64")


async def test_a_missing_policy_file_is_one_line_naming_it(platform, tmp_path):
    url = platform.settings.database_url
    missing = tmp_path / "no-policies"
    for command in (["keys", "list"], ["migrate"]):  # a migration reads it (0004)
        result = run_cli(command, url, tmp_path, CDP_POLICY_DIR=str(missing))
        assert_plain(result, "policy.toml: policy file missing")
    # `cdp serve` refuses to start with exit status 2, as for a wrong master key
    result = run_cli(["serve", "--port", "1"], url, tmp_path, CDP_POLICY_DIR=str(missing))
    assert_plain(result, "policy.toml: policy file missing", code=2)


def test_a_database_that_cannot_be_opened_is_one_line(tmp_path):
    nowhere = f"sqlite+aiosqlite:///{tmp_path / 'no-such-dir' / 'cdp.db'}"
    for command in (["keys", "list"], ["migrate"], ["serve", "--port", "1"]):
        result = run_cli(command, nowhere, tmp_path)
        code = 2 if command[0] == "serve" else 1
        assert_plain(result, "cannot open the database", "unable to open database file", code=code)


async def test_a_database_migrated_by_a_newer_release_is_one_line(platform, tmp_path):
    """After the software was downgraded, every command printed alembic's traceback (111
    lines: "Can't locate revision identified by ..."). One line says what happened and what to
    do; nothing is migrated, and `cdp serve` exits 2 before it binds its port."""
    url = platform.settings.database_url
    (known,) = (await sql(platform, "SELECT version_num FROM alembic_version"))[0]
    await sql(platform, "UPDATE alembic_version SET version_num = '0999'")
    try:
        commands = (["keys", "list"], ["migrate"], ["audit", "verify"], ["serve", "--port", "1"])
        for command in commands:
            result = run_cli(command, url, tmp_path)
            code = 2 if command[0] == "serve" else 1
            assert_plain(result, "revision 0999", "a newer release migrated it", code=code)
            said = [line for line in result.stderr.splitlines() if "0999" in line]
            assert len(said) == 1, result.stderr
        assert await sql(platform, "SELECT version_num FROM alembic_version") == [("0999",)]
    finally:
        await sql(platform, "UPDATE alembic_version SET version_num = :v", v=known)


def test_a_new_master_key_that_is_not_base64_is_named(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}"
    result = run_cli(["keys", "rotate-master"], url, tmp_path, CDP_NEW_MASTER_KEY="not a key")
    assert_plain(result, "CDP_NEW_MASTER_KEY is not a master key")


def test_a_new_master_key_that_is_the_one_in_use_is_named(tmp_path):
    """It said "new master key: is the master key in use: nothing to rotate", naming neither
    setting."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}"
    same = MasterKey.generate_base64()
    env = {"CDP_MASTER_KEY": same, "CDP_NEW_MASTER_KEY": same}
    result = run_cli(["keys", "rotate-master"], url, tmp_path, **env)
    assert_plain(result, "CDP_NEW_MASTER_KEY is the master key in use (CDP_MASTER_KEY)")


def test_a_database_host_that_does_not_resolve_is_one_line(tmp_path):
    url = "postgresql://postgres@no-such-host.invalid:5432/cdp"
    result = run_cli(["keys", "list"], url, tmp_path)
    assert_plain(result, "cannot open the database")


def test_a_database_url_of_another_engine_is_refused_naming_the_setting(tmp_path):
    result = run_cli(["keys", "list"], "mysql://user@localhost/cdp", tmp_path)
    assert_plain(result, "CDP_DATABASE_URL")


def test_a_body_limit_that_is_not_a_number_is_refused_naming_the_setting(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}"
    result = run_cli(["keys", "list"], url, tmp_path, CDP_MAX_BODY_BYTES="8MB")
    assert_plain(result, "CDP_MAX_BODY_BYTES")


BACKGROUND_SETTINGS_THAT_CANNOT_WORK = [
    ("CDP_CHECKPOINT_INTERVAL", "5min"),
    ("CDP_STATISTICS_INTERVAL", "-1"),
    ("CDP_WEBHOOK_MAX_ATTEMPTS", "eight"),
    ("CDP_WEBHOOK_TIMEOUT_MS", "10s"),
    ("CDP_WEBHOOK_POLL_MS", "-5"),
    ("CDP_WEBHOOK_CONCURRENCY", "0"),
    ("CDP_RETENTION_INTERVAL_S", "1h"),
    ("CDP_WEBHOOK_KEEP_DEAD_DAYS", "nan"),
    ("CDP_WEBHOOK_DISPATCHER", "of"),
    ("CDP_WEBHOOK_ALLOW_PRIVATE", "yes please"),
]


def test_a_background_setting_that_cannot_work_stops_serve_with_one_line(tmp_path):
    """`cdp serve` reads the intervals and the webhook settings before it binds its port: one
    that is not a number, or out of range, is one line naming it and exit status 2 (before, a
    traceback from the running service, exit status 3, or a value taken silently: a
    concurrency of 0 delivered nothing, an unknown CDP_WEBHOOK_DISPATCHER meant on)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}"
    for name, value in BACKGROUND_SETTINGS_THAT_CANNOT_WORK:
        env = {**os.environ, "CDP_DATABASE_URL": url, "CDP_DEV_KEY_DIR": str(tmp_path), name: value}
        try:
            result = subprocess.run(
                [sys.executable, "-m", "cdp.cli", "serve", "--port", str(free_port())],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name}={value!r} was taken: the service started")
        assert_plain(result, name, code=2)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_background_setting_that_cannot_work_stops_a_dispatcher_with_one_line(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}"
    result = run_cli(["dispatch", "--once"], url, tmp_path, CDP_WEBHOOK_CONCURRENCY="-2")
    assert_plain(result, "CDP_WEBHOOK_CONCURRENCY")


def test_a_webhook_setting_that_cannot_work_stops_a_prune_with_one_line(tmp_path):
    """`cdp webhooks prune` reads the webhook settings too (README: one line, exit status 1);
    it printed a traceback of InvalidInput (found by running the docs' commands)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}"
    result = run_cli(["webhooks", "prune"], url, tmp_path, CDP_WEBHOOK_POLL_MS="x")
    assert_plain(result, "CDP_WEBHOOK_POLL_MS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_database_url_that_does_not_parse_is_one_line_without_its_password(tmp_path):
    url = "postgresql://cdp:S3cretPW@db.example:fivefourthreetwo/cdp"
    result = run_cli(["keys", "list"], url, tmp_path)
    assert_plain(result, "CDP_DATABASE_URL")
    assert "S3cretPW" not in result.stderr + result.stdout


def test_a_postgresql_url_without_a_database_name_is_refused_naming_the_setting(tmp_path):
    """asyncpg takes a database the URL does not name from the user's name (or PGDATABASE),
    which the platform cannot see: a CDP_KEY_STORE_URL without one stopped every command with
    a traceback (AttributeError: 'NoneType' object has no attribute 'replace') where its
    database had to be created, and a CDP_DATABASE_URL without one made the default key store
    a database called `None_keys`. Each is refused, naming the setting (found by mypy)."""
    sqlite = f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}"
    for url, env, setting in (
        ("postgresql://cdp@127.0.0.1:5432", {}, "CDP_DATABASE_URL"),
        (sqlite, {"CDP_KEY_STORE_URL": "postgresql://keys@127.0.0.1:5432/"}, "CDP_KEY_STORE_URL"),
    ):
        result = run_cli(["keys", "list"], url, tmp_path, **env)
        assert_plain(result, f"{setting}: must name its database")
    assert not (tmp_path / "cdp.db").exists()  # refused before anything was opened


async def test_a_postgresql_url_with_libpq_sslmode_is_understood(platform, backend, tmp_path):
    """Hosted PostgreSQL hands out URLs with libpq's `?sslmode=require`, which asyncpg calls
    `ssl`: the URL used to stop every command with a traceback (TypeError: connect() got an
    unexpected keyword argument 'sslmode')."""
    if backend != "postgres":
        pytest.skip("a PostgreSQL URL")
    url = platform.settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    for mode in ("disable", "prefer"):  # the test server may not offer TLS at all
        result = run_cli(["keys", "list"], f"{url}?sslmode={mode}", tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]


def test_a_public_url_without_scheme_or_host_is_refused_naming_the_setting(tmp_path):
    """CDP_PUBLIC_URL is the base of the manage links customers are sent; `cdp.example.com`
    (no scheme) used to be taken and made links such as `cdp.example.com/preferences/...` that
    no mail client opens."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}"
    for value in ("cdp.example.com", "https://", "ftp://cdp.example.com"):
        result = run_cli(["serve", "--port", str(free_port())], url, tmp_path, CDP_PUBLIC_URL=value)
        assert_plain(result, "CDP_PUBLIC_URL", code=2)
    ok = run_cli(["keys", "list"], url, tmp_path, CDP_PUBLIC_URL="https://cdp.example.com/crm/")
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_a_database_server_that_never_answers_is_given_up_after_the_connect_timeout(tmp_path):
    """A server that accepts the connection and then says nothing (packets dropped after a
    failover, a hung host) held every command, request and `/health` for asyncpg's 60 s."""
    import threading
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])  # and never answer
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        url = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/cdp"
        started = time.monotonic()
        result = run_cli(["keys", "list"], url, tmp_path, CDP_DATABASE_CONNECT_TIMEOUT="1")
        took = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        silent.close()
    assert_plain(result, "cannot open the database", "TimeoutError")
    assert took < 30, took  # interpreter start-up and imports included; not 60 s and more
