"""A 400 names each bad field (API.md), not only the first msgspec met (found by review on
2026-12-07): a client fixed and resent a body one field at a time."""

from __future__ import annotations

from cdp.db.tables import profiles
from cdp.profiles.schemas import ProfileIn
from cdp.validation import every_error
from tests.helpers import count


def fields_of(r) -> list[str]:  # type: ignore[no-untyped-def]
    assert r.status_code == 400, r.text
    return [e["field"] for e in r.json()["errors"]]


async def test_a_profile_names_every_bad_field_and_stores_nothing(client, keys, platform):
    body = {"email": "eve@example.com", "birth_date": "1990-13-01", "traits": [1], "zip": "1"}
    r = await client.post("/v1/profiles", json=body, headers=keys["ingest"])
    assert fields_of(r) == ["source", "birth_date", "traits", "zip"]
    assert "eve@example.com" not in r.text
    assert await count(platform, profiles) == 0


async def test_a_batch_record_names_every_bad_field_of_that_record(client, keys):
    records = [{"source": "crm", "email": "a@example.com"}, {"email": 3, "consents": [{}]}]
    r = await client.post("/v1/profiles/batch", json={"records": records}, headers=keys["ingest"])
    assert r.status_code == 200, r.text
    bad = r.json()["results"][1]["error"]
    assert [e["field"] for e in bad["errors"]] == [
        "source",
        "email",
        "consents[0].purpose",
        "consents[0].channel",
        "consents[0].status",
    ]


async def test_other_bodies_name_every_bad_field_too(client, keys):
    body = {"purpose": 5, "channel": "email", "status": "maybe", "email": "a@example.com"}
    r = await client.post("/v1/consents", json=body, headers=keys["ingest"])
    assert fields_of(r) == ["purpose", "status", "source"]
    query = {"purpose": "marketing", "channel": "email", "rules": {"all": []}, "cursor": 5}
    r = await client.post(
        "/v1/segments/query", json={**query, "limit": "many"}, headers=keys["marketing"]
    )
    assert fields_of(r) == ["limit", "cursor"]


def test_every_error_finds_each_field_and_item_and_falls_back_to_the_first() -> None:
    assert every_error({"source": "crm"}, ProfileIn) == []
    found = every_error({"source": 1, "consents": [{"purpose": "m"}, 7]}, ProfileIn)
    assert [path for _, path in found] == [
        "$.source",
        "$.consents[0]",
        "$.consents[0]",
        "$.consents[1]",
    ]
    # not an object at all: the one error, at the top
    assert every_error([1], ProfileIn) == [("Expected `object`, got `array`", "$")]
