"""Migrations that rewrite data, run on both databases from the revision before them."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import insert, select

from cdp.db.engine import Database
from cdp.db.migrate import alembic_config
from cdp.db.tables import events, profile_categories, profile_stats, profiles
from cdp.db.types import UTCDateTime
from cdp.labels import city_key
from tests.conftest import pg_url
from tests.helpers import pg_admin


@pytest.fixture
async def empty_db(backend: str, tmp_path: Path) -> AsyncIterator[Database]:
    """A database with no tables at all."""
    if backend == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
        yield db
        await db.dispose()
        return
    name = f"cdp_migration_{uuid.uuid4().hex[:8]}"
    try:
        await pg_admin(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI and is not reachable: {type(exc).__name__}")
        pytest.skip("PostgreSQL is not reachable")
    db = Database(pg_url(name))
    yield db
    await db.dispose()
    await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await pg_admin(f'DROP DATABASE IF EXISTS "{name}_keys" WITH (FORCE)')


async def upgrade(db: Database, target: str) -> None:
    def run(connection):  # type: ignore[no-untyped-def]
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, target)

    async with db.engine.begin() as conn:
        await conn.run_sync(run)


def event(pid: uuid.UUID, n: int, type_: str, amount: str | None, currency: str, cat: str | None):  # type: ignore[no-untyped-def]
    return {
        "id": uuid.uuid4(),
        "profile_id": pid,
        "source": "shop",
        "event_id": f"e{n}",
        "type": type_,
        "occurred_at": datetime(2026, 11, n, 12, tzinfo=UTC),
        "recorded_at": datetime(2026, 11, n, 12, tzinfo=UTC),
        "amount": None if amount is None else Decimal(amount),
        "currency": currency,
        "category": cat,
    }


async def test_0004_normalises_types_categories_and_recounts_stats(empty_db):
    db = empty_db
    await upgrade(db, "0003")
    anna, boris = uuid.uuid4(), uuid.uuid4()
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(events),
            [
                event(anna, 1, "Purchase", "1000.00", "RUB", " Shoes "),  # never counted
                event(anna, 2, "purchase", "100.00", "USD", "SHOES"),  # counted as 100
                event(anna, 3, "purchase", "500.00", "RUB", "shoes"),
                event(anna, 4, "Page_View ", None, "RUB", None),
                event(boris, 5, "purchase", "300.00", "RUB", "  Running  Shoes "),
            ],
        )
        await conn.execute(
            insert(profile_stats),
            [
                {"profile_id": anna, "orders_count": 2, "total_spent": Decimal("600.00")},
                {"profile_id": boris, "orders_count": 1, "total_spent": Decimal("300.00")},
            ],
        )
        await conn.execute(
            insert(profile_categories),
            [
                {"profile_id": anna, "category": "SHOES"},
                {"profile_id": anna, "category": "shoes"},
                {"profile_id": boris, "category": "  Running  Shoes "},
                {"profile_id": boris, "category": "Running Shoes"},
            ],
        )
    await upgrade(db, "head")

    async with db.engine.connect() as conn:
        types = {t for (t,) in await conn.execute(select(events.c.type))}
        cats = {c for (c,) in await conn.execute(select(events.c.category))}
        held = sorted(
            (str(p), c)
            for p, c in await conn.execute(
                select(profile_categories.c.profile_id, profile_categories.c.category)
            )
        )
        rows = {
            r.profile_id: r
            for r in await conn.execute(select(profile_stats))  # type: ignore[attr-defined]
        }
    assert types == {"purchase", "page_view"}
    assert cats == {"shoes", "running shoes", None}
    assert held == sorted([(str(anna), "shoes"), (str(boris), "running shoes")])
    a = rows[anna]
    assert (a.orders_count, a.total_spent) == (3, Decimal("1500.00"))  # RUB only, all 3 orders
    assert (a.first_order_at, a.last_order_at) == (
        datetime(2026, 11, 1, 12, tzinfo=UTC),
        datetime(2026, 11, 3, 12, tzinfo=UTC),
    )
    assert (rows[boris].orders_count, rows[boris].total_spent) == (1, Decimal("300.00"))


async def downgrade(db: Database, target: str) -> None:
    def run(connection):  # type: ignore[no-untyped-def]
        cfg = alembic_config()
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, target)

    async with db.engine.begin() as conn:
        await conn.run_sync(run)


async def schema_drift(db: Database) -> list:  # type: ignore[type-arg]
    """What Alembic's autogenerate finds between the database and the table definitions."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from cdp.db.metadata import metadata

    def run(connection):  # type: ignore[no-untyped-def]
        return compare_metadata(MigrationContext.configure(connection), metadata)

    async with db.engine.connect() as conn:
        return await conn.run_sync(run)


async def insert_profiles(db: Database, rows: list[dict]) -> None:
    """Active RU profiles as a revision before 0007 stored them (the columns every revision
    since has), with what each row gives (its id; a city, traits)."""
    import sqlalchemy as sa

    old = sa.table(
        "profiles",
        sa.column("id", sa.Uuid()),
        *(sa.column(n) for n in ("status", "jurisdiction", "city", "key_id")),
        sa.column("traits", sa.JSON()),
        sa.column("created_at", UTCDateTime()),
        sa.column("updated_at", UTCDateTime()),
    )
    at = datetime(2026, 11, 1, tzinfo=UTC)
    base = {"status": "active", "jurisdiction": "RU", "city": None, "key_id": 1, "traits": {}}
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(old), [{**base, "created_at": at, "updated_at": at, **r} for r in rows]
        )


async def test_0007_gives_every_city_its_key(empty_db):
    """Profiles stored before 0007 are found by a city rule in any case (cdp.labels.city_key)."""
    db = empty_db
    await upgrade(db, "0006")
    cities = ["МОСКВА", "Москва", "Straße", None]
    ids = [uuid.uuid4() for _ in cities]
    await insert_profiles(db, [{"id": i, "city": c} for i, c in zip(ids, cities, strict=True)])
    await upgrade(db, "head")
    async with db.engine.connect() as conn:
        rows = dict((await conn.execute(select(profiles.c.id, profiles.c.city_key))).all())
    assert [rows[i] for i in ids] == ["москва", "москва", "strasse", None]
    assert [city_key(c) for c in cities] == ["москва", "москва", "strasse", None]  # one rule


async def test_0010_stores_trait_strings_in_nfc(empty_db):
    """Profiles stored before 0010 with a decomposed `й` in a trait are found by a rule that
    spells it in one character (cdp.labels.trait_value); nothing else in a trait changes."""
    import unicodedata

    from cdp.labels import trait_value

    db = empty_db
    await upgrade(db, "0009")
    nfd = unicodedata.normalize("NFD", "Серебряный")
    given = [
        {"tier": nfd, "score": 7.5, "vip": True, "note": " Ёлка  "},
        {"tier": "gold", "n": None},
        {},
    ]
    ids = sorted(uuid.uuid4() for _ in range(1500))  # more than one batch of the migration
    await insert_profiles(db, [{"id": pid, "traits": given[n % 3]} for n, pid in enumerate(ids)])
    await upgrade(db, "head")
    async with db.engine.connect() as conn:
        rows = dict((await conn.execute(select(profiles.c.id, profiles.c.traits))).all())
    expected = [
        {"tier": "Серебряный", "score": 7.5, "vip": True, "note": " Ёлка  "},
        {"tier": "gold", "n": None},
        {},
    ]
    wrong = [n for n, pid in enumerate(ids) if rows[pid] != expected[n % 3]]
    assert wrong == [], rows[ids[wrong[0]]]
    assert [{k: trait_value(v) for k, v in t.items()} for t in given] == expected  # one rule


async def test_0012_keeps_plain_event_ids_until_sealed_and_refuses_to_drop_sealed_ones(empty_db):
    """Events stored before 0012 keep their id (a repeat still finds them; `cdp events seal`
    seals them, tests/test_event_ids.py); a downgrade would leave sealed events without an id,
    so it is refused while one exists."""
    db = empty_db
    await upgrade(db, "0011")
    pid = uuid.uuid4()
    async with db.engine.begin() as conn:
        await conn.execute(insert(events), [event(pid, 1, "purchase", "10.00", "RUB", None)])
    await upgrade(db, "head")
    async with db.engine.connect() as conn:
        row = (await conn.execute(select(events.c.event_id, events.c.event_key))).one()
    assert tuple(row) == ("e1", None)
    await downgrade(db, "0011")  # nothing sealed yet: nothing lost
    await upgrade(db, "head")
    sealed = {**event(pid, 2, "page_view", None, "RUB", None), "event_id": None}
    async with db.engine.begin() as conn:
        await conn.execute(insert(events), [{**sealed, "event_key": b"k" * 32}])
    with pytest.raises(RuntimeError, match="sealed"):
        await downgrade(db, "0011")


async def table_names(db: Database) -> set[str]:
    from sqlalchemy import inspect

    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_upgrade_downgrade_upgrade_round_trip_matches_the_models(empty_db):
    db = empty_db
    await upgrade(db, "head")
    assert await schema_drift(db) == []
    await downgrade(db, "base")
    assert await table_names(db) <= {"alembic_version"}
    await upgrade(db, "head")
    assert await schema_drift(db) == []


async def test_0013_0014_keep_the_outbox_events_stored_before_them(empty_db):
    """An event waiting in the outbox across the upgrade is still there, still deliverable,
    names no absorbed profile (only merge events do) and holds no sealed address."""
    from consent.outbox.enqueue import event_row
    from consent.outbox.tables import outbox_events

    db = empty_db
    await upgrade(db, "0011")
    row = event_row("opt_out", occurred_at=datetime(2026, 11, 22, tzinfo=UTC), source="crm")
    row = {k: v for k, v in row.items() if k not in ("absorbed_profile_id", "address_sealed")}
    async with db.engine.begin() as conn:  # the columns 0011 has
        await conn.execute(insert(outbox_events).values(**row))
    await upgrade(db, "head")
    async with db.engine.connect() as conn:
        (got,) = (await conn.execute(select(outbox_events))).all()
    assert (got.id, got.kind, got.fanned_out) == (row["id"], "opt_out", False)
    assert (got.absorbed_profile_id, got.address_sealed) == (None, None)


async def test_production_without_a_key_store_is_refused_before_any_migration(empty_db, tmp_path):
    """An upgrade of production runs `cdp migrate` first: without CDP_KEY_STORE_URL it is
    refused as every other command is, before the schema is touched, rather than leaving a
    database migrated for a service that then refuses to start. So is the master key
    rotation, which migrates too."""
    import base64

    from tests.test_import import run_cli

    url = empty_db.engine.url.render_as_string(hide_password=False)
    new_key = base64.b64encode(b"\x07" * 32).decode()
    for args in (["migrate"], ["keys", "rotate-master"]):
        refused = run_cli(args, url, tmp_path, CDP_ENV="production", CDP_NEW_MASTER_KEY=new_key)
        assert refused.returncode == 1, (args, refused.stdout, refused.stderr[-2000:])
        assert "CDP_KEY_STORE_URL must be set in production" in refused.stderr, args
        assert await table_names(empty_db) == set(), args


async def test_0017_keeps_the_plain_reasons_and_hashes_of_older_transitions(empty_db):
    """Transitions recorded before 0017 keep their reason as written: their hash covers it, so
    the chain verifies after the upgrade, and goes on verifying with sealed reasons after them.
    A downgrade would drop sealed reasons that their hashes cover: refused while one exists."""
    from consent.dsr.chain import append_transition, verify_transitions
    from consent.dsr_tables import dsr_transitions

    db = empty_db
    await upgrade(db, "0016")
    rid = uuid.uuid4()

    def transition(reason: str, **sealed: object) -> dict:  # type: ignore[type-arg]
        at = datetime(2026, 11, 20, 9, tzinfo=UTC)
        return {
            "id": uuid.uuid4(),
            "request_id": rid,
            "event": "status",
            "from_status": "received",
            "to_status": "rejected",
            "at": at,
            "actor": "compliance-key",
            "reason": reason,
            "due_at": at,
            **sealed,
        }

    async with db.engine.begin() as conn:  # the columns 0016 has
        await append_transition(conn, transition("created"))
        await append_transition(conn, transition("an officer's words, before 0017"))
    await upgrade(db, "head")
    async with db.engine.begin() as conn:
        assert (await verify_transitions(conn)).entries == 2
        reasons = (await conn.execute(select(dsr_transitions.c.reason))).scalars().all()
        assert sorted(reasons) == ["an officer's words, before 0017", "created"]
        await append_transition(
            conn,
            transition(
                "sealed",
                reason_sealed=b"\x01ciphertext",
                reason_owner=uuid.uuid4(),
                reason_key_id=1,
            ),
        )
        result = await verify_transitions(conn)
    assert (result.ok, result.entries) == (True, 3)
    with pytest.raises(RuntimeError, match="sealed reason"):
        await downgrade(db, "0016")


async def test_0018_keeps_the_hashes_of_older_ledger_entries(empty_db):
    """Ledger entries recorded before 0018 have no via_profile: their hash covers the fields
    before it, and the chain verifies after the upgrade, and with entries that record it after
    them. A downgrade would drop what later hashes cover: refused while one records it."""
    from consent.chain import GENESIS, entry_hash, verify_chain
    from consent.tables import consent_ledger

    db = empty_db
    await upgrade(db, "0017")

    def entry(seq: int, prev: bytes, **more: object) -> dict:  # type: ignore[type-arg]
        at = datetime(2026, 11, 20, 9, seq, tzinfo=UTC)
        row = {
            "seq": seq,
            "event_id": uuid.uuid4(),
            "profile_id": uuid.uuid4(),
            "subject_kind": "email",
            "address_bidx": bytes([seq]) * 32,
            "purpose": "marketing",
            "channel": "email",
            "status": "granted",
            "occurred_at": at,
            "recorded_at": at,
            "source": "crm",
            "actor": "crm-sync",
            "method": "checkbox",
            "wording_id": "w1",
            "policy_version": "p1",
            "evidence": None,
            "evidence_owner": None,
            "evidence_key_id": None,
            "effective": True,
            "prev_hash": prev,
            **more,
        }
        row["hash"] = entry_hash(prev, row)
        return row

    first = entry(1, GENESIS)
    second = entry(2, first["hash"])
    async with db.engine.begin() as conn:  # the columns 0017 has
        await conn.execute(insert(consent_ledger), [first, second])
    await upgrade(db, "head")
    async with db.engine.begin() as conn:
        assert (await verify_chain(conn)).ok
        await conn.execute(insert(consent_ledger), [entry(3, second["hash"], via_profile=True)])
        result = await verify_chain(conn)
        assert (result.ok, result.entries) == (True, 3)
        # the value is hashed: flipping it breaks the chain at that entry
        await conn.execute(
            consent_ledger.update().where(consent_ledger.c.seq == 3).values(via_profile=False)
        )
        assert (await verify_chain(conn)).first_invalid_seq == 3
    with pytest.raises(RuntimeError, match="via_profile"):
        await downgrade(db, "0017")


async def test_0020_dates_each_erased_address_also_where_an_opt_out_overwrote_it(empty_db):
    """An address whose erasure suppression is still there, and one whose suppression a later
    opt-out overwrote: both are dated by the erasure request's completion. An address the
    erased customer's entries name but that nothing suppressed since (it went to someone else
    before the erasure) is not."""
    from consent.dsr_tables import dsr_requests
    from consent.tables import address_erasures, consent_ledger, suppressions

    db = empty_db
    await upgrade(db, "0019")
    pid = uuid.uuid4()
    t = [datetime(2026, 11, d, 9, tzinfo=UTC) for d in (1, 2, 3, 4)]
    kept, overwritten, moved = b"k" * 32, b"o" * 32, b"m" * 32
    async with db.engine.begin() as conn:
        await conn.execute(
            insert(dsr_requests),
            [
                {
                    "id": uuid.uuid4(),
                    "kind": "erasure",
                    "status": "completed",
                    "profile_id": pid,
                    "identifier_kind": "profile_id",
                    "jurisdiction": "RU",
                    "requested_by": "customer",
                    "actor": "compliance-key",
                    "received_at": t[1],
                    "due_at": t[3],
                    "extensions": 0,
                    "completed_at": t[2],
                    "updated_at": t[2],
                    "attempts": 1,
                }
            ],
        )
        for seq, bidx in enumerate((kept, overwritten, moved), start=1):
            await conn.execute(
                insert(consent_ledger).values(
                    seq=seq,
                    event_id=uuid.uuid4(),
                    profile_id=pid,
                    subject_kind="email",
                    address_bidx=bidx,
                    purpose="marketing",
                    channel="email",
                    status="granted",
                    occurred_at=t[0],
                    recorded_at=t[0],
                    source="crm",
                    actor="crm",
                    policy_version="p",
                    effective=True,
                    prev_hash=bytes(32),
                    hash=bytes(32),
                )
            )
        sup = {"purpose": "marketing", "channel": "*", "source": "x", "created_at": t[3]}
        await conn.execute(
            insert(suppressions),
            [
                {**sup, "bidx": kept, "reason": "erasure", "at": t[2]},
                {**sup, "bidx": overwritten, "reason": "opt_out", "at": t[3]},
            ],
        )
    await upgrade(db, "head")
    async with db.engine.begin() as conn:
        rows = (await conn.execute(select(address_erasures))).all()
    assert sorted((bytes(b), at) for b, at in rows) == [(kept, t[2]), (overwritten, t[2])]


async def test_0021_seals_event_ids_where_a_review_branch_stamped_0013_without_0012(empty_db):
    """Commit 3e4c7af (review-webhooks) shipped 0013 on top of 0011; 0012 landed beside it, and
    the merge re-chained 0013 after 0012. A database that branch migrated is stamped 0013, so
    Alembic took 0012 for applied and never ran it: events had no event_key, and every
    POST /v1/events and access export answered 503 "the database is not reachable" after the
    upgrade (found upgrading a database written by that commit's own code). 0021 applies what
    0012 would have, where it is missing."""
    from consent.outbox.enqueue import event_row
    from consent.outbox.tables import outbox_events

    db = empty_db
    await upgrade(db, "0011")
    pid = uuid.uuid4()

    def branch_0013(connection):  # type: ignore[no-untyped-def]
        from alembic.operations import Operations
        from alembic.runtime.migration import MigrationContext
        from sqlalchemy import Uuid, text

        ops = Operations(MigrationContext.configure(connection))
        with ops.batch_alter_table("outbox_events") as batch:
            batch.add_column(sa_column("absorbed_profile_id", Uuid()))
        connection.execute(text("UPDATE alembic_version SET version_num = '0013'"))

    async with db.engine.begin() as conn:
        await conn.execute(insert(events), [event(pid, 1, "purchase", "10.00", "RUB", None)])
        await conn.run_sync(branch_0013)
    row = event_row("opt_out", occurred_at=datetime(2026, 11, 22, tzinfo=UTC), source="crm")
    row = {k: v for k, v in row.items() if k != "address_sealed"}
    async with db.engine.begin() as conn:
        await conn.execute(insert(outbox_events).values(**row))
    await upgrade(db, "head")
    assert await schema_drift(db) == []
    async with db.engine.connect() as conn:
        got = (await conn.execute(select(events.c.event_id, events.c.event_key))).one()
        (waiting,) = (await conn.execute(select(outbox_events.c.id))).all()
    assert tuple(got) == ("e1", None)  # kept, plain until `cdp events seal`, as 0012 keeps it
    assert waiting.id == row["id"]


def sa_column(name: str, type_):  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    return sa.Column(name, type_, nullable=True)


async def test_0023_binds_older_erasure_requests_by_the_jurisdiction_they_name(empty_db):
    """Requests recorded before 0023 were due by the jurisdiction they name: that one binds
    their dates (an extension after the upgrade follows it); their policy version is unknown."""
    from consent.dsr_tables import dsr_requests

    db = empty_db
    await upgrade(db, "0022")
    t = datetime(2026, 11, 2, 9, tzinfo=UTC)
    request = {
        "id": uuid.uuid4(),
        "kind": "erasure",
        "status": "received",
        "profile_id": uuid.uuid4(),
        "identifier_kind": "email",
        "jurisdiction": "EU",
        "requested_by": "customer",
        "actor": "compliance-key",
        "received_at": t,
        "due_at": t,
        "extensions": 0,
        "updated_at": t,
        "attempts": 0,
    }
    async with db.engine.begin() as conn:
        await conn.execute(insert(dsr_requests), [request])
    await upgrade(db, "0023")
    rc = dsr_requests.c
    async with db.engine.connect() as conn:
        row = (await conn.execute(select(rc.deadline_jurisdiction, rc.policy_version))).one()
    assert tuple(row) == ("EU", None)
    await downgrade(db, "0022")
    await upgrade(db, "head")


async def test_0027_suppresses_the_addresses_of_withdrawals_no_customer_held(empty_db):
    """A withdrawal recorded on an address no customer held (POST /v1/consents) before 0027
    suppressed nothing: each such address, purpose and channel gets the time and source of its
    latest one, where no suppression of it is as late; a withdrawal of a customer's address
    suppresses nothing."""
    from consent.tables import consent_ledger, suppressions

    db = empty_db
    await upgrade(db, "0026")
    t = [datetime(2026, 11, d, 9, tzinfo=UTC) for d in range(1, 8)]
    new, earlier, later, held = b"n" * 32, b"e" * 32, b"l" * 32, b"h" * 32
    entries = [  # (address, channel, occurred_at, source, profile)
        (new, "*", t[1], "esp-old", None),
        (new, "*", t[3], "esp", None),
        (new, "sms", t[2], "crm", None),
        (earlier, "email", t[4], "crm", None),
        (later, "email", t[2], "crm", None),
        (held, "email", t[2], "crm", uuid.uuid4()),
    ]
    async with db.engine.begin() as conn:
        for seq, (bidx, channel, at, source, pid) in enumerate(entries, start=1):
            await conn.execute(
                insert(consent_ledger).values(
                    seq=seq,
                    event_id=uuid.uuid4(),
                    profile_id=pid,
                    subject_kind="email",
                    address_bidx=bidx,
                    purpose="marketing",
                    channel=channel,
                    status="withdrawn",
                    occurred_at=at,
                    recorded_at=t[6],
                    source=source,
                    actor="ingest-key",
                    method="api",
                    policy_version="p",
                    effective=True,
                    prev_hash=bytes(32),
                    hash=bytes(32),
                )
            )
        sup = {"purpose": "marketing", "channel": "email", "created_at": t[6]}
        await conn.execute(
            insert(suppressions),
            [
                {**sup, "bidx": earlier, "reason": "erasure", "source": "x", "at": t[0]},
                {**sup, "bidx": later, "reason": "opt_out", "source": "esp", "at": t[5]},
            ],
        )
    await upgrade(db, "head")
    s = suppressions.c
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(s.bidx, s.channel, s.reason, s.source, s.at))).all()
    assert sorted((bytes(b), *rest) for b, *rest in rows) == [
        (earlier, "email", "withdrawal", "crm", t[4]),
        (later, "email", "opt_out", "esp", t[5]),
        (new, "*", "withdrawal", "esp", t[3]),
        (new, "sms", "withdrawal", "crm", t[2]),
    ]
