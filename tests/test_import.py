"""`cdp import`: CSV and NDJSON, consent columns, rejects with reasons, and the CLI itself."""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import subprocess
import sys

import msgspec
import pytest

from cdp.db.tables import profiles
from cdp.importer import ImportStopped, run_import
from consent.tables import consent_ledger
from tests.conftest import TEST_MASTER_KEY
from tests.helpers import count, sql

HEADER = [
    "external_id",
    "email",
    "phone",
    "first_name",
    "last_name",
    "country",
    "traits.tier",
    "traits.vip",
    "consent.marketing.email",
    "consent.marketing.email.wording_id",
    "consent.marketing.email.occurred_at",
    "consent.marketing.sms",
]


def write_csv(path, rows):  # type: ignore[no-untyped-def]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        w.writerows(rows)


async def test_csv_import_with_consents_and_rejects(platform, tmp_path, client, keys):
    src = tmp_path / "crm.csv"
    write_csv(
        src,
        [
            [
                "C1",
                "anna@example.com",
                "8 916 123-45-67",
                "Анна",
                "Иванова",
                "RU",
                "gold",
                "true",
                "granted",
                "nl-v3",
                "2026-01-01T10:00:00Z",
                "",
            ],
            ["C2", "bad-email", "", "Bob", "", "RU", "", "", "", "", "", ""],
            ["C3", "ivan@example.com", "", "Иван", "", "RU", "", "", "", "", "", "granted"],
            ["C1", "", "+79161234567", "", "Иванова-Петрова", "RU", "", "", "", "", "", ""],
        ],
    )
    summary = await run_import(platform, src, "crm")
    assert summary.rows == 4
    assert summary.rejected_rows == 1
    assert summary.created == 2 and summary.joined == 1
    assert summary.consents_recorded == 1 and summary.consents_rejected == 1
    rejects = list(csv.reader(summary.rejects_path.read_text(encoding="utf-8").splitlines()))
    assert rejects[0] == ["row", "field", "reason"]
    assert ["3", "email", "not a valid email address"] in rejects  # the file's line
    # named by its column (by_column), not as consents[0].evidence.wording_id
    reason = "a grant of this purpose needs its wording"
    assert ["4", "consent.marketing.sms.wording_id", reason] in rejects
    assert "bad-email" not in summary.rejects_path.read_text()  # reasons, never values
    assert await count(platform, profiles) == 2
    assert await count(platform, consent_ledger) == 1

    anna = (await client.get("/v1/profiles?email=anna@example.com", headers=keys["admin"])).json()
    assert anna["last_name"] == "Иванова-Петрова"
    assert anna["traits"] == {"tier": "gold", "vip": True}
    assert anna["consents"]["contactable"]["marketing"]["email"] is True
    ivan = (await client.get("/v1/profiles?email=ivan@example.com", headers=keys["admin"])).json()
    assert ivan["consents"]["contactable"]["marketing"]["sms"] is False


async def test_ndjson_import(platform, tmp_path):
    src = tmp_path / "shop.ndjson"
    src.write_text(
        '{"external_id": "S1", "email": "x@example.com", "traits": {"a": 1}}\n'
        "not json\n"
        '{"external_id": "S2", "phone": "+79161112233", "consents": [{"purpose": "service", '
        '"channel": "sms", "status": "withdrawn"}]}\n',
        encoding="utf-8",
    )
    summary = await run_import(platform, src, "shop")
    assert (summary.rows, summary.created, summary.rejected_rows) == (3, 2, 1)
    assert summary.consents_recorded == 1


def run_cli(args, db_url, tmp_path, **env):  # type: ignore[no-untyped-def]
    full_env = {
        **os.environ,
        "CDP_DATABASE_URL": db_url,
        "CDP_MASTER_KEY": TEST_MASTER_KEY,
        "CDP_DEV_KEY_DIR": str(tmp_path / "keys"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "cdp.cli", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_cli_keys_and_import(platform, tmp_path, backend):
    if backend != "sqlite":
        return  # the CLI is the same code on both; the database layer is tested elsewhere
    url = platform.settings.database_url
    created = run_cli(["keys", "create", "--name", "crm-sync", "--role", "ingest"], url, tmp_path)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("cdp_") and " " not in key
    listed = run_cli(["keys", "list"], url, tmp_path)
    assert "crm-sync\tingest" in listed.stdout and key not in listed.stdout
    assert run_cli(["keys", "revoke", "crm-sync"], url, tmp_path).returncode == 0
    assert "revoked" in run_cli(["keys", "list"], url, tmp_path).stdout

    src = tmp_path / "in.csv"
    write_csv(
        src,
        [
            ["C9", "nine@example.com", "", "", "", "RU", "", "", "", "", "", ""],
            ["C10", "??", "", "", "", "RU", "", "", "", "", "", ""],
        ],
    )
    out = run_cli(["import", str(src), "--source", "crm"], url, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "created: 1" in out.stdout and "rejected rows: 1" in out.stdout
    assert "??" not in out.stdout + out.stderr


async def test_cli_refuses_a_wrong_master_key(platform, tmp_path, backend):
    if backend != "sqlite":
        return
    wrong = "A" * 43 + "="
    out = run_cli(
        ["serve", "--port", "1"], platform.settings.database_url, tmp_path, CDP_MASTER_KEY=wrong
    )
    assert out.returncode == 2
    assert "does not match this database" in out.stderr


async def test_cli_refuses_to_serve_in_production_without_the_audit_signing_key(
    platform, tmp_path, backend
):
    if backend != "sqlite":
        return
    env = {
        "CDP_MASTER_KEY": platform.settings.master_key or "",
        "CDP_ENV": "production",
        "CDP_KEY_STORE_URL": platform.settings.key_store_url,
    }
    out = run_cli(["serve", "--port", "1"], platform.settings.database_url, tmp_path, **env)
    assert out.returncode == 2
    assert "CDP_AUDIT_SIGNING_KEY must be set in production" in out.stderr
    out = run_cli(
        ["serve", "--port", "1"], platform.settings.database_url, tmp_path, CDP_ENV="prod"
    )
    # as for every setting that cannot work, `cdp serve` exits 2 (docs/settings.md)
    assert out.returncode == 2 and "CDP_ENV: must be development or production" in out.stderr


async def import_emails(platform, tmp_path, monkeypatch, n: int, at_refresh):  # type: ignore[no-untyped-def]
    """An NDJSON import of n new emails in chunks of 100; `at_refresh()` runs each time the
    import refreshes planner statistics (as it reaches 100, 200, 400... rows, then at the end),
    before the refresh itself."""
    real = platform.db.refresh_statistics

    async def refresh() -> None:
        await at_refresh()
        await real()

    monkeypatch.setattr(platform.db, "refresh_statistics", refresh)
    monkeypatch.setattr("cdp.importer.STATISTICS_AFTER", 100)
    monkeypatch.setattr("cdp.importer.CHUNK", 100)
    src = tmp_path / "crm.ndjson"
    src.write_text(
        "".join(f'{{"email": "import{i}@example.com"}}\n' for i in range(n)), encoding="utf-8"
    )
    return await run_import(platform, src, "crm", workers=0)


async def test_a_long_import_keeps_planner_statistics_current(platform, tmp_path, monkeypatch):
    """Query plans follow the tables as an import grows them (statistics refreshed as the row
    count doubles), also where the database runs no autovacuum."""
    refreshed: list[int] = []

    async def counting() -> None:
        refreshed.append(await count(platform, profiles))

    summary = await import_emails(platform, tmp_path, monkeypatch, 900, counting)
    assert summary.created == 900
    # as the import reached 100, 200, 400 and 800 rows, then on the final sizes
    assert refreshed == [100, 200, 400, 800, 900]


async def test_an_import_checkpoints_sqlite_less_often_and_leaves_the_server_settings(
    platform, tmp_path, monkeypatch, backend
):
    """While an import runs, SQLite checkpoints its WAL every 32768 pages instead of 1000 and
    caches 256 MiB; afterwards write connections are back to the server's settings, and the WAL
    file stays bounded: everything the import wrote is checkpointed, and the next write
    truncates the file to the journal size limit."""
    if backend != "sqlite":
        return
    seen: list[tuple[int, int]] = []

    async def pragmas() -> tuple[int, int]:
        async with platform.db.write() as conn:
            wal = (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar_one()
            cache = (await conn.exec_driver_sql("PRAGMA cache_size")).scalar_one()
        return wal, cache

    async def looking() -> None:  # runs inside the import, between chunks
        seen.append(await pragmas())

    summary = await import_emails(platform, tmp_path, monkeypatch, 300, looking)
    assert summary.created == 300
    assert seen[0] == (32768, -262144)  # during the import
    assert await pragmas() == (1000, -65536)  # after it
    async with platform.db.read() as conn:
        limit = (await conn.exec_driver_sql("PRAGMA journal_size_limit")).scalar_one()
    assert limit == 16 * 2**20
    wal = platform.db.url.split("///", 1)[1] + "-wal"
    assert os.path.getsize(wal) <= limit


async def _import_failing_at_chunk(platform, tmp_path, monkeypatch, fail_at: int):  # type: ignore[no-untyped-def]
    """An import of 1000 new emails in chunks of 100 whose `fail_at`-th chunk fails to store."""
    import cdp.importer

    monkeypatch.setattr("cdp.importer.CHUNK", 100)
    monkeypatch.setattr("cdp.importer.STATISTICS_AFTER", 10**9)
    real = cdp.importer.store_prepared_in
    calls = [0]

    async def store(conn, p, prepared, actor):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == fail_at:
            raise RuntimeError("the disk is full")
        return await real(conn, p, prepared, actor)

    monkeypatch.setattr("cdp.importer.store_prepared_in", store)
    src = tmp_path / "crm.ndjson"
    src.write_text(
        "".join(f'{{"email": "import{i}@example.com"}}\n' for i in range(1000)), encoding="utf-8"
    )
    with pytest.raises(ImportStopped) as stopped:
        await run_import(platform, src, "crm", workers=0)
    assert isinstance(stopped.value.__cause__, RuntimeError)
    monkeypatch.setattr("cdp.importer.store_prepared_in", real)
    stored = await count(platform, profiles)  # what the error says is stored, as JSON lines
    assert f"the rows up to line {stored} are stored ({stored} imported)" in str(stopped.value)
    return src


async def test_an_import_that_fails_keeps_what_it_committed_and_frees_the_database(
    platform, tmp_path, monkeypatch, backend
):
    """On SQLite consecutive chunks share a transaction (up to TXN_ROWS rows): a failure loses
    only the chunks of the open transaction, never a committed one, and leaves the database
    writable; running the import again completes it. PostgreSQL commits every chunk."""
    monkeypatch.setattr("cdp.importer.TXN_ROWS", 300)
    monkeypatch.setattr("cdp.importer.TXN_SECONDS", 3600)
    src = await _import_failing_at_chunk(platform, tmp_path, monkeypatch, fail_at=5)
    kept = 300 if backend == "sqlite" else 400  # chunks 1-3 committed together; 4 was open
    assert await count(platform, profiles) == kept
    summary = await run_import(platform, src, "crm", workers=0)
    assert (summary.created, summary.joined) == (1000 - kept, kept)
    assert await count(platform, profiles) == 1000


async def test_an_import_commits_at_least_every_txn_seconds(platform, tmp_path, monkeypatch):
    """The time bound: with TXN_SECONDS = 0 every chunk commits on its own, whatever TXN_ROWS,
    so a writer waiting behind an import never waits for more than one chunk beyond it."""
    monkeypatch.setattr("cdp.importer.TXN_ROWS", 10**9)
    monkeypatch.setattr("cdp.importer.TXN_SECONDS", 0)
    await _import_failing_at_chunk(platform, tmp_path, monkeypatch, fail_at=5)
    assert await count(platform, profiles) == 400


async def test_the_cli_answers_bad_input_with_one_line_not_a_traceback(platform, tmp_path, backend):
    if backend != "sqlite":
        return  # the CLI is the same code on both databases
    url = platform.settings.database_url
    assert (
        run_cli(["keys", "create", "--name", "ops", "--role", "admin"], url, tmp_path).returncode
        == 0
    )
    for args, said in (
        (["keys", "create", "--name", "ops", "--role", "admin"], "a key with this name exists"),
        (["keys", "create", "--name", "x" * 100, "--role", "admin"], "name: 1 to 64 characters"),
    ):
        out = run_cli(args, url, tmp_path)
        assert out.returncode == 1, out.stderr
        assert f"Error: {said}" in out.stderr and "Traceback" not in out.stderr


async def test_values_of_the_wrong_type_are_rejected_in_plain_words(
    platform, tmp_path, client, keys
):
    """The import's rejects and the API's 400s share the words, never msgspec's own."""
    src = tmp_path / "shop.ndjson"
    src.write_text(
        '{"external_id": 4, "email": "w1@example.com"}\n'
        '{"phone": 89163210003, "email": "w2@example.com"}\n'
        '{"email": "w3@example.com", "birth_date": "31.12.1990"}\n',
        encoding="utf-8",
    )
    summary = await run_import(platform, src, "shop")
    assert summary.rejected_rows == 3
    rejects = summary.rejects_path.read_text(encoding="utf-8").splitlines()
    assert rejects[1:] == [
        '1,external_id,"expected text, got a number"',
        '2,phone,"expected text, got a number"',
        "3,birth_date,expected a date as YYYY-MM-DD",
    ]
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "w4@example.com",
            "consents": [{"purpose": "marketing", "channel": "email", "status": "maybe"}],
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 400
    assert r.json()["errors"] == [
        {"field": "consents[0].status", "message": "not one of the allowed values"}  # not 'maybe'
    ]
    r = await client.post(
        "/v1/profiles", json={"source": "crm", "phone": 89163210003}, headers=keys["ingest"]
    )
    assert r.json()["errors"] == [{"field": "phone", "message": "expected text, got a number"}]


IGNORING = (
    "external_id,email,phone\n"
    "I1,noreply@shop.example,+7 916 123-45-67\n"  # a placeholder address: not kept
    "I2,i2@example.com,+7 495 123-45-67 доб. 101\n"  # an office line with an extension
    "I3,i3@example.com,\n"
)


async def test_identifiers_not_kept_are_reported_without_rejecting_the_row(platform, tmp_path):
    src = tmp_path / "crm.csv"
    src.write_text(IGNORING, encoding="utf-8")
    summary = await run_import(platform, src, "crm")
    assert (summary.rows, summary.created, summary.rejected_rows) == (3, 3, 0)
    assert summary.identifiers_ignored == 2
    rejects = list(csv.reader(summary.rejects_path.read_text(encoding="utf-8").splitlines()))
    assert [r[:2] for r in rejects[1:]] == [["2", "email"], ["3", "phone"]]
    assert "placeholder" in rejects[1][2] and "extension" in rejects[2][2]
    text = summary.rejects_path.read_text(encoding="utf-8")
    assert "noreply" not in text and "123-45-67" not in text  # reasons, never values

    # one over the policy's cap of identifiers per kind (and not linked) is reported too
    identity = msgspec.structs.replace(platform.policy.identity, max_identities_per_kind=1)
    platform.policy = dataclasses.replace(platform.policy, identity=identity)
    more = tmp_path / "more.csv"
    more.write_text("external_id,email\nI3,other@example.com\n", encoding="utf-8")
    summary = await run_import(platform, more, "crm")
    assert (summary.joined, summary.identifiers_ignored, summary.rejected_rows) == (1, 1, 0)
    assert "most identifiers" in summary.rejects_path.read_text(encoding="utf-8")


async def test_cli_counts_identifiers_ignored(platform, tmp_path, backend):
    if backend != "sqlite":
        return  # the CLI is the same code on both databases
    src = tmp_path / "crm.csv"
    src.write_text(IGNORING, encoding="utf-8")
    out = run_cli(["import", str(src), "--source", "crm"], platform.settings.database_url, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "rejected rows: 0" in out.stdout and "identifiers ignored: 2" in out.stdout


REFUSE_AFTER_1500 = {
    "sqlite": [
        "CREATE TRIGGER refuse BEFORE INSERT ON profiles "
        "WHEN (SELECT count(*) FROM profiles) >= 1500 "
        "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
    ],
    "postgres": [
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF (SELECT count(*) FROM profiles) >= 1500 THEN RAISE EXCEPTION 'disk full'; END IF; "
        "RETURN NEW; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT ON profiles FOR EACH ROW EXECUTE FUNCTION refuse()",
    ],
}


async def test_an_import_that_stops_midway_says_what_is_stored_and_no_traceback(
    platform, tmp_path, backend
):
    """The database refuses a write at the 1,501st customer. `cdp import` printed a traceback
    and no word of what was stored; now one line says how far the stored rows go, and the
    database holds exactly those. Running it again once the cause is gone imports the rest
    without duplicating anyone."""
    src = tmp_path / "crm.csv"
    src.write_text(
        "external_id,email\n" + "".join(f"C{i},stop{i}@example.com\n" for i in range(2500)),
        "utf-8",
    )
    for statement in REFUSE_AFTER_1500[backend]:
        await sql(platform, statement)
    url = platform.settings.database_url
    died = run_cli(["import", str(src), "--source", "crm"], url, tmp_path)
    assert died.returncode == 1
    assert "Traceback" not in died.stderr, died.stderr
    assert "disk full" in died.stderr and "Running the same import again is safe" in died.stderr
    stored = await count(platform, profiles)
    if stored:  # committed transactions: whole chunks of the file, from its first row on
        said = re.search(r"rows up to line (\d+) are stored \((\d+) imported\)", died.stderr)
        assert said is not None, died.stderr
        assert int(said.group(2)) == stored and int(said.group(1)) == stored + 1  # the header
    else:
        assert "no row of it is stored" in died.stderr
    assert backend == "sqlite" or stored == 1000  # PostgreSQL commits every chunk
    await sql(platform, "DROP TRIGGER refuse" + (" ON profiles" if backend == "postgres" else ""))
    again = run_cli(["import", str(src), "--source", "crm"], url, tmp_path)
    assert again.returncode == 0, again.stderr
    assert await count(platform, profiles) == 2500


async def test_the_lookup_of_merged_profiles_stays_on_its_index_after_an_import(
    platform, tmp_path, backend
):
    """Every import chunk that joins existing customers looks up the profiles merged into them.
    With every profile in the merged_into index, SQLite's statistics (refreshed by the import)
    said a key matches ~1,000 rows and the look-up scanned the whole table: 8 ms a chunk at
    100,000 profiles, and growing with the table. The index now holds merged profiles only."""
    if backend != "sqlite":
        return  # PostgreSQL's statistics know the column is nearly all NULL
    src = tmp_path / "crm.csv"
    src.write_text("email\n" + "".join(f"m{i}@example.com\n" for i in range(3000)), "utf-8")
    await run_import(platform, src, "crm", workers=0)
    ids = ", ".join(f"'{i:032x}'" for i in range(90))
    plan = await sql(
        platform, f"EXPLAIN QUERY PLAN SELECT id FROM profiles WHERE merged_into IN ({ids})"
    )
    assert any("ix_profiles_merged_into" in str(row) for row in plan), plan


async def test_the_rejects_file_names_a_csv_consent_by_its_column(platform, tmp_path):
    """A CSV has consent columns, not a `consents` list: its rejects named
    `consents[0].evidence.wording_id`, and `consents[0]` was the first consent column the row
    filled, a different column from row to row."""
    src = tmp_path / "crm.csv"
    src.write_text(
        "email,consent.marketing.email,consent.marketing.sms,consent.marketing.sms.wording_id,"
        "consent.marketing.sms.method\n"
        "a@example.com,granted,,,\n"  # no wording: line 2
        "b@example.com,,maybe,sms-v1,checkbox\n"  # a status that is not one: line 3
        "c@example.com,,granted,sms-v1,\n",  # sms, and the record has no phone: line 4
        encoding="utf-8",
    )
    summary = await run_import(platform, src, "crm")
    rejects = list(csv.reader(summary.rejects_path.read_text(encoding="utf-8").splitlines()))
    fields = {(int(r[0]), r[1]) for r in rejects[1:]}
    assert fields == {
        (2, "consent.marketing.email.wording_id"),
        (3, "consent.marketing.sms"),
        (4, "consent.marketing.sms"),
    }


async def test_the_rejects_file_names_no_field_a_spreadsheet_would_run(platform, tmp_path):
    """The rejects file names an unknown key as the file wrote it; a key written as a formula
    (`=HYPERLINK(...)`, `-2+3+cmd|...`) ran when the operator opened the rejects in a
    spreadsheet (OWASP CSV injection). It is named with a leading apostrophe."""
    src = tmp_path / "crm.ndjson"
    formula = '=HYPERLINK("http://evil.example","x")'
    lines = [{"email": "a1@example.com", formula: 1}, {"email": "a2@example.com", "-2+3": 1}]
    src.write_text("".join(msgspec.json.encode(x).decode() + "\n" for x in lines), "utf-8")
    summary = await run_import(platform, src, "crm", workers=0)
    rejects = list(csv.reader(summary.rejects_path.read_text(encoding="utf-8").splitlines()))
    assert [(r[0], r[1]) for r in rejects[1:]] == [("1", "'" + formula), ("2", "'-2+3")]
