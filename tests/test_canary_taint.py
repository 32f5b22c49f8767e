"""Canary taint review: unique canary values planted as every kind of personal data, through
the ways data enters, then searched for in the channels where they must not turn up."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdp.events_import import run_event_import
from cdp.importer import run_import
from tests.test_pii_in_errors import everything_said


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def owner_only(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


@pytest.mark.parametrize("existing", [False, True])
async def test_the_rejects_files_are_owner_only(platform, tmp_path, existing):
    """The rejects file sits beside a customer file and says which of its lines were refused
    and why: it is created (or, named again, made) readable by its owner only, whatever the
    umask, as the customer file should be."""
    people = tmp_path / "people.csv"
    people.write_text("email,birth_date\nqz.rejected@example.org,1937-13-45\n")
    events = tmp_path / "events.csv"
    events.write_text("event_id,type,occurred_at,email\ne1,purchase,bad,qz.rejected@example.org\n")
    for path in (people, events):
        rejects = path.with_name(path.name + ".rejects.csv")
        if existing:
            rejects.write_text("old\n")
            rejects.chmod(0o644)
    with umask(0o022):
        profiles = await run_import(platform, people, "crm", workers=0)
        orders = await run_event_import(platform, events, "shop")
    for summary in (profiles, orders):
        assert summary.rejects_path is not None
        text = summary.rejects_path.read_text()
        assert "qz.rejected" not in text and "1937-13-45" not in text and "old" not in text
        assert owner_only(summary.rejects_path), oct(summary.rejects_path.stat().st_mode)


async def test_a_new_sqlite_database_and_key_store_are_owner_only(tmp_path):
    """The SQLite database (city, traits and every ciphertext, the wrapped half of every data
    key) and its key store (the other half) are created readable by their owner only, with
    their -wal and -shm files (SQLite gives them the database's mode), whatever the umask:
    with 0644 any local account could copy both halves of every customer's key."""
    from cdp.platform import open_platform
    from tests.conftest import make_settings

    url = f"sqlite+aiosqlite:///{tmp_path / 'cdp.db'}"
    with umask(0o022):
        p = await open_platform(make_settings(url, tmp_path))
        try:
            await p.db.purge_wal()  # the WAL's file is there, with the database open
            files = sorted(tmp_path.glob("cdp*.db*"))
            names = {f.name for f in files}
            assert {"cdp.db", "cdp.db-wal", "cdp.keys.db"} <= names, names
            loose = {
                f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files if not owner_only(f)
            }
            assert not loose
        finally:
            await p.close()


async def test_no_driver_log_repeats_a_bound_value_even_at_debug(platform, client, keys, caplog):
    """SQLAlchemy hides bound values (`hide_parameters`), but aiosqlite's own logger wrote
    every statement with its parameters at DEBUG (the plaintext city and traits, ciphertexts,
    blind indexes): a root logger set to DEBUG, to look into anything, spilled them."""
    record = {"source": "crm", "email": "qz.driver@example.org", "city": "Qzdrivercity"}
    with everything_said(caplog) as said:
        r = await client.post("/v1/profiles", json=record, headers=keys["ingest"])
        assert r.status_code == 201, r.text
    assert not [text for text in said if "Qzdrivercity" in text or "qz.driver" in text]
