"""`cdp events import`: a shop's order history in bulk, checked and stored as POST /v1/events
stores each event, every rejected row reported with its line and reason, safe to run again."""

from __future__ import annotations

import csv
import json

import pytest

from cdp.db.tables import events
from cdp.events_import import run_event_import
from cdp.import_file import ImportFileError
from tests.helpers import count
from tests.test_import import run_cli

ANNA, BORIS = "anna@example.com", "boris@example.com"

ORDERS = (
    "Event_ID;Type;Occurred_At;Email;Phone;Amount;Currency;Category;properties.channel\r\n"
    f"o-1;purchase;2026-10-01T10:00:00Z;{ANNA};;1000.00;RUB;Shoes;web\r\n"
    f"o-2;purchase;2026-11-01T10:00:00Z;{ANNA};;500.50;RUB;bags;\r\n"
    f"o-3;purchase;2026-11-02T10:00:00Z;{BORIS};;abc;RUB;;\r\n"
    ";purchase;2026-11-03T10:00:00Z;;+7 916 555-44-33;10.00;RUB;;\r\n"
    "o-5;purchase;2026-11-04T10:00:00Z;;8 916 555-44-33;250.00;RUB;hats;app\r\n"
    f"o-6;refund;2026-11-05T10:00:00Z;{ANNA};;500.50;RUB;;\r\n"
)


async def profile_of(client, keys, **identifier: str) -> dict:
    r = await client.get("/v1/profiles", params=identifier, headers=keys["admin"])
    assert r.status_code == 200, r.text
    return r.json()


async def test_an_order_history_becomes_stats_and_rejects_name_line_and_field(
    client, keys, platform, tmp_path
):
    await client.post("/v1/profiles", json={"source": "crm", "email": ANNA}, headers=keys["ingest"])
    path = tmp_path / "orders.csv"
    path.write_text(ORDERS, encoding="cp1251")
    summary = await run_event_import(platform, path, "shop", encoding="cp1251")
    assert (summary.rows, summary.recorded, summary.repeated, summary.rejected_rows) == (6, 4, 0, 2)

    with summary.rejects_path.open(encoding="utf-8") as fh:
        rejects = list(csv.reader(fh))
    assert rejects[0] == ["row", "field", "reason"]
    assert [(r[0], r[1]) for r in rejects[1:]] == [("4", "amount"), ("5", "event_id")]
    assert BORIS not in summary.rejects_path.read_text(encoding="utf-8")

    anna = (await profile_of(client, keys, email=ANNA))["stats"]
    assert (anna["orders_count"], anna["total_spent"]) == (2, "1000.00")  # 1500.50 - refund
    assert anna["categories"] == ["bags", "shoes"]
    # an unknown customer is created, the phone read in the record's default region
    mobile = await profile_of(client, keys, phone="+79165554433")
    assert mobile["stats"]["orders_count"] == 1 and mobile["stats"]["total_spent"] == "250.00"
    r = await client.post(
        "/v1/access-requests", json={"phone": "+79165554433"}, headers=keys["compliance"]
    )
    (event,) = r.json()["events"]
    assert (event["event_id"], event["properties"]) == ("o-5", {"channel": "app"})


async def test_running_it_again_changes_nothing(client, keys, platform, tmp_path):
    path = tmp_path / "orders.csv"
    path.write_text(ORDERS, encoding="utf-8")
    # one of the orders came through the API already
    r = await client.post(
        "/v1/events",
        json={
            "source": "shop",
            "event_id": "o-1",
            "type": "purchase",
            "occurred_at": "2026-10-01T10:00:00Z",
            "email": ANNA,
            "amount": "1000.00",
            "currency": "RUB",
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    first = await run_event_import(platform, path, "shop")
    assert (first.recorded, first.repeated) == (3, 1)
    stored = await count(platform, events)
    again = await run_event_import(platform, path, "shop")
    assert (again.recorded, again.repeated, again.rejected_rows) == (0, 4, 2)
    assert await count(platform, events) == stored
    assert (await profile_of(client, keys, email=ANNA))["stats"]["orders_count"] == 2
    # the same ids from another source are other events
    other = await run_event_import(platform, path, "pos")
    assert (other.recorded, other.repeated) == (4, 0)


async def test_json_lines_and_what_is_refused_before_anything_is_stored(
    client, keys, platform, tmp_path
):
    path = tmp_path / "events.ndjson"
    rows = [
        {
            "event_id": "v-1",
            "type": "page_view",
            "occurred_at": "2026-11-01T10:00:00Z",
            "email": ANNA,
            "properties": {"page": "/shoes"},
        },
        {
            "event_id": "v-2",
            "type": "page_view",
            "occurred_at": "2026-11-01T10:00:00Z",
            "email": ANNA,
            "source": "web",
        },
        {
            "event_id": "v-3",
            "type": "purchase",
            "occurred_at": "2099-01-01T00:00:00Z",
            "email": ANNA,
            "amount": "5.00",
            "currency": "RUB",
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n", encoding="utf-8")
    summary = await run_event_import(platform, path, "web")
    assert (summary.recorded, summary.rejected_rows) == (1, 3)
    rejects = summary.rejects_path.read_text(encoding="utf-8").splitlines()[1:]
    assert [line.split(",")[:2] for line in rejects] == [
        ["2", "source"],
        ["3", "occurred_at"],
        ["4", "row"],
    ]

    before = await count(platform, events)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("event_id,type,occurred_at,email,comment\n", encoding="utf-8")
    with pytest.raises(ImportFileError, match="cdp events import does not know"):
        await run_event_import(platform, unknown, "shop")
    array = tmp_path / "array.json"
    array.write_text(json.dumps(rows), encoding="utf-8")
    with pytest.raises(ImportFileError, match="JSON array"):
        await run_event_import(platform, array, "shop")
    assert await count(platform, events) == before


async def test_an_erased_customer_is_rejected_and_the_rest_stored(client, keys, platform, tmp_path):
    r = await client.post(
        "/v1/profiles", json={"source": "crm", "email": BORIS}, headers=keys["ingest"]
    )
    gone = r.json()["profile_id"]
    r = await client.post(
        "/v1/erasure-requests",
        json={"profile_id": gone, "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    path = tmp_path / "orders.csv"
    path.write_text(
        "event_id,type,occurred_at,profile_id,email,amount,currency\n"
        f"e-1,purchase,2026-11-01T10:00:00Z,{gone},,10.00,RUB\n"
        f"e-2,purchase,2026-11-01T10:00:00Z,,{ANNA},20.00,RUB\n",
        encoding="utf-8",
    )
    summary = await run_event_import(platform, path, "shop")
    assert (summary.recorded, summary.rejected_rows) == (1, 1)
    assert (await profile_of(client, keys, email=ANNA))["stats"]["total_spent"] == "20.00"


async def test_the_command_prints_a_summary(platform, tmp_path, backend):
    if backend != "sqlite":
        return  # the CLI is the same code on both; the database layer is tested above
    path = tmp_path / "orders.csv"
    path.write_text(ORDERS, encoding="utf-8")
    done = run_cli(
        ["events", "import", str(path), "--source", "shop"],
        platform.settings.database_url,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "rows: 6  recorded: 4  already recorded: 0  rejected rows: 2" in done.stdout
    assert f"rejects: {path}.rejects.csv" in done.stdout


async def test_within_a_file_an_event_sent_twice_is_one_and_a_new_customer_is_one(
    client, keys, platform, tmp_path
):
    """Rows of one chunk are stored as if sent one after another: the second copy of an
    event is recognised, two orders of one new customer make one profile with two orders, and
    an order taking a total beyond what is kept is refused on its own."""
    path = tmp_path / "orders.csv"
    path.write_text(
        "event_id,type,occurred_at,email,amount,currency\n"
        "n-1,purchase,2026-11-01T10:00:00Z,new@example.com,10.00,RUB\n"
        "n-1,purchase,2026-11-01T10:00:00Z,new@example.com,10.00,RUB\n"
        "n-2,purchase,2026-11-02T10:00:00Z,NEW@example.com,15.00,RUB\n"
        "n-3,purchase,2026-11-03T10:00:00Z,new@example.com,9999999999999999.00,RUB\n"
        "n-4,purchase,2026-11-04T10:00:00Z,new@example.com,1.00,RUB\n",
        encoding="utf-8",
    )
    summary = await run_event_import(platform, path, "shop")
    assert (summary.recorded, summary.repeated, summary.rejected_rows) == (3, 1, 1)
    rejects = summary.rejects_path.read_text(encoding="utf-8").splitlines()[1:]
    assert [line.split(",")[:2] for line in rejects] == [["5", "amount"]]
    stats = (await profile_of(client, keys, email="new@example.com"))["stats"]
    assert (stats["orders_count"], stats["total_spent"]) == (3, "26.00")
    assert stats["last_order_at"] == "2026-11-04T10:00:00Z"


@pytest.mark.parametrize("when", ["20261105", "1762300800", "1762300800.5"])
async def test_a_time_that_is_a_number_is_refused_not_read_as_a_unix_time(platform, when):
    """A CSV's occurred_at is an RFC 3339 time, as POST /v1/events takes it: a compact date
    (20261105, as 1C exports write one) or a number was read as a Unix time (20261105 s: a
    purchase on 1970-08-23, a customer's first order 56 years ago)."""
    from cdp.errors import InvalidInput
    from cdp.events_import import prepared

    header = ["event_id", "type", "occurred_at", "email", "amount", "currency"]
    with pytest.raises(InvalidInput) as caught:
        prepared(platform, header, ["o-1", "purchase", when, ANNA, "10.00", "RUB"], "shop")
    assert [e.field for e in caught.value.errors] == ["occurred_at"]
    row = ["o-1", "purchase", "2026-11-05T10:00:00+03:00", ANNA, "10.00", "RUB"]
    ok = prepared(platform, header, row, "shop")
    assert ok.body.occurred_at.isoformat() == "2026-11-05T10:00:00+03:00"
