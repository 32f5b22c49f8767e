"""Text holding a NUL character is refused as invalid input naming the field, on both databases
(PostgreSQL cannot store one: before, such a value was a 500, and stopped `cdp import`)."""

from __future__ import annotations

import csv

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from cdp.db.tables import profiles, segments
from cdp.ids import new_id, utcnow
from cdp.importer import run_import
from tests.helpers import count

NUL_MESSAGE = "must not contain a NUL character"


def named(r, field: str) -> bool:  # type: ignore[no-untyped-def]
    return r.status_code == 400 and {"field": field, "message": NUL_MESSAGE} in r.json()["errors"]


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"city": "Mo\x00scow"}, "city"),
        ({"source": "cr\x00m"}, "source"),
        ({"first_name": "Ан\x00на"}, "first_name"),
        ({"traits": {"tier": ["gold", "x\x00"]}}, "traits.tier[1]"),
        ({"traits": {"ti\x00er": "gold"}}, "traits"),
    ],
)
async def test_a_profile_with_a_nul_is_400_naming_the_field_and_stores_nothing(
    platform, client, keys, record, field
):
    body = {"source": "crm", "email": "nul.check@example.com"} | record
    r = await client.post("/v1/profiles", json=body, headers=keys["ingest"])
    assert named(r, field), r.text
    assert await count(platform, profiles) == 0


async def test_events_segments_and_queries_with_a_nul_are_400(platform, client, keys):
    event = {
        "source": "shop",
        "event_id": "E-1",
        "type": "purchase",
        "occurred_at": "2026-11-01T10:00:00Z",
        "email": "nul.check@example.com",
        "amount": "10.00",
        "currency": "RUB",
        "category": "sh\x00oes",
    }
    assert named(await client.post("/v1/events", json=event, headers=keys["ingest"]), "category")
    assert await count(platform, profiles) == 0

    segment = {"name": "x\x00", "purpose": "marketing", "channel": "email", "rules": {"all": []}}
    r = await client.post("/v1/segments", json=segment, headers=keys["marketing"])
    assert named(r, "name")
    rule = {"all": [{"field": "city", "op": "eq", "value": "Mo\x00scow"}]}
    r = await client.post(
        "/v1/segments/query",
        json={"purpose": "marketing", "channel": "email", "rules": rule},
        headers=keys["marketing"],
    )
    assert named(r, "rules.all[0].value")
    assert await count(platform, segments) == 0

    r = await client.get(
        "/v1/audit/consent-events", params={"purpose": "mark\x00eting"}, headers=keys["compliance"]
    )
    assert named(r, "purpose")


async def test_a_batch_stores_the_other_records_and_names_the_bad_one(platform, client, keys):
    records = [
        {"source": "crm", "email": "one@example.com"},
        {"source": "crm", "email": "two@example.com", "city": "Ka\x00zan"},
        {"source": "crm", "email": "three@example.com"},
    ]
    r = await client.post("/v1/profiles/batch", json={"records": records}, headers=keys["ingest"])
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x.get("profile_id") is not None for x in results] == [True, False, True]
    assert {"field": "city", "message": NUL_MESSAGE} in results[1]["error"]["errors"]
    assert await count(platform, profiles) == 2


@pytest.mark.parametrize("workers", [0, 1])
async def test_an_import_reports_the_row_with_a_nul_and_imports_the_rest(
    platform, tmp_path, workers
):
    src = tmp_path / "crm.csv"
    with src.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["external_id", "email", "city", "traits.tier"])
        w.writerow(["C1", "one@example.com", "Moscow", "gold"])
        w.writerow(["C2", "two@example.com", "Mo\x00scow", "gold"])
        w.writerow(["C3", "three@example.com", "Kazan", "si\x00lver"])
        w.writerow(["C4", "four@example.com", "Kazan", "silver"])
    summary = await run_import(platform, src, "crm", workers=workers)
    assert (summary.rows, summary.created, summary.rejected_rows) == (4, 2, 2)
    with summary.rejects_path.open(encoding="utf-8") as fh:  # type: ignore[union-attr]
        rejected = list(csv.reader(fh))[1:]
    assert rejected == [["3", "city", NUL_MESSAGE], ["4", "traits.tier", NUL_MESSAGE]]  # lines
    assert await count(platform, profiles) == 2


async def test_a_database_error_carries_no_bound_values(platform):
    """Exceptions (and so logs and tracebacks) never show the values of a failed statement."""
    secret = "Secretville"
    now = utcnow()
    row = {
        "id": new_id(),
        "status": "active",
        "jurisdiction": "RU",
        "city": secret,
        "traits": {},
        "key_id": 1,
        "created_at": now,
        "updated_at": now,
    }
    with pytest.raises(IntegrityError) as caught:
        async with platform.db.write() as conn:
            await conn.execute(insert(profiles).values(row))
            await conn.execute(insert(profiles).values(row))
    assert secret not in str(caught.value)
    assert "Secret" not in repr(caught.value)
