"""The ad-hoc segment query pages by `?limit=` and `?cursor=`, as every list does (API.md,
Conventions), as well as by the body's `limit` and `cursor`. The query string used to be
ignored: a client following `next_cursor` with `?cursor=` got the first page forever."""

from __future__ import annotations

GRANT = {
    "purpose": "marketing",
    "channel": "email",
    "status": "granted",
    "source": "crm",
    "occurred_at": "2026-11-01T09:00:00Z",
    "evidence": {"wording_id": "nl-v1", "method": "checkbox"},
}
QUERY = {
    "purpose": "marketing",
    "channel": "email",
    "rules": {"field": "traits.tag", "op": "eq", "value": "q"},
}


async def customers(client, keys, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    ids = []
    for i in range(n):
        r = await client.post(
            "/v1/profiles",
            json={
                "source": "crm",
                "email": f"q{i}@example.com",
                "traits": {"tag": "q"},
                "consents": [GRANT],
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["profile_id"])
    return sorted(ids)


async def query(client, keys, body: dict, **params):  # type: ignore[no-untyped-def]
    return await client.post(
        "/v1/segments/query", params=params, json=body, headers=keys["marketing"]
    )


async def test_the_query_string_pages_an_ad_hoc_query(client, keys):
    ids = await customers(client, keys, 3)
    seen, cursor = [], None
    for _ in range(5):
        params = {"limit": 1} | ({"cursor": cursor} if cursor else {})
        r = await query(client, keys, QUERY, **params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 1
        seen += [m["profile_id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids  # each once, in order, and the walk ends

    # a cursor from the body goes on in the query string and the other way round
    first = (await query(client, keys, QUERY | {"limit": 1})).json()
    r = await query(client, keys, QUERY, cursor=first["next_cursor"], limit=5)
    assert [m["profile_id"] for m in r.json()["items"]] == ids[1:]
    first = (await query(client, keys, QUERY, limit=2)).json()
    r = await query(client, keys, QUERY | {"cursor": first["next_cursor"]})
    assert [m["profile_id"] for m in r.json()["items"]] == ids[2:]
    # the same value in both places is one value
    r = await query(client, keys, QUERY | {"limit": 2}, limit=2)
    assert [m["profile_id"] for m in r.json()["items"]] == ids[:2]


async def test_paging_parameters_are_checked_wherever_they_come(client, keys):
    await customers(client, keys, 2)
    first = (await query(client, keys, QUERY | {"limit": 1})).json()
    other = (await query(client, keys, QUERY | {"rules": {"all": []}, "limit": 1})).json()
    cases = [
        ({}, {"limit": 0}, "limit"),
        ({}, {"limit": 1001}, "limit"),
        ({"limit": 0}, {}, "limit"),
        ({"limit": 1001}, {}, "limit"),
        ({}, {"cursor": "garbage"}, "cursor"),
        ({}, {"cursor": other["next_cursor"]}, "cursor"),  # another query's
        ({"limit": 1}, {"limit": 2}, "limit"),
        ({"cursor": first["next_cursor"]}, {"cursor": other["next_cursor"]}, "cursor"),
    ]
    for body, params, field in cases:
        r = await query(client, keys, QUERY | body, **params)
        assert r.status_code == 400, (body, params, r.text)
        assert [e["field"] for e in r.json()["errors"]] == [field], (body, params, r.text)
    r = await query(client, keys, QUERY, limit=1000)
    assert r.status_code == 200, r.text


async def test_the_document_bounds_the_query_bodys_limit_and_names_the_query_string(client):
    document = (await client.get("/schema/openapi.json")).json()
    op = document["paths"]["/v1/segments/query"]["post"]
    params = {p["name"]: p for p in op["parameters"] if p["in"] == "query"}
    assert {"limit", "cursor"} <= params.keys()
    assert (params["limit"]["schema"]["minimum"], params["limit"]["schema"]["maximum"]) == (1, 1000)
    body = document["components"]["schemas"]["QueryIn"]["properties"]["limit"]
    assert (body["minimum"], body["maximum"]) == (1, 1000)  # as every `?limit=` says it
