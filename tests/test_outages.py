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
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash import Site

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
    file = customers_csv(tmp_path / "customers.csv", 6000)

    done = await asyncio.to_thread(site.cli, "import", str(file), "--source", "crm")
    assert done.returncode == 1, (done.stdout, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    said = done.stderr.strip().splitlines()[-1]
    assert said.startswith("Error: the import stopped"), said
    assert "disk is full" in said and "outage-" not in done.stderr + done.stdout
    stored = int(re.search(r"\((\d+) imported\)", said).group(1))  # type: ignore[union-attr]
    assert 0 < stored < 6000
    assert await site.count("profiles") == stored

    resize(small_disk, "64m")
    again = await asyncio.to_thread(site.cli, "import", str(file), "--source", "crm")
    assert again.returncode == 0, again.stderr[-2000:]
    assert await site.count("profiles") == 6000
    assert f"joined existing: {stored}" in again.stdout, again.stdout
