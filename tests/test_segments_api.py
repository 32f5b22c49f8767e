"""Segment definitions over HTTP: create, list, read, delete, roles, and validation errors."""

from __future__ import annotations

import pytest

RULES = {"all": [{"field": "country", "op": "eq", "value": "ru"}]}


def body(**over) -> dict:  # type: ignore[no-untyped-def]
    return {
        "name": "RU newsletter",
        "purpose": "marketing",
        "channel": "email",
        "rules": RULES,
    } | over


async def test_create_read_list_delete(client, keys):
    r = await client.post("/v1/segments", json=body(), headers=keys["marketing"])
    assert r.status_code == 201, r.text
    seg = r.json()
    assert seg["name"] == "RU newsletter"
    assert seg["created_by"] == "marketing-key"
    assert seg["rules"] == {"all": [{"field": "country", "op": "eq", "value": "RU"}]}
    sid = seg["id"]

    r = await client.get(f"/v1/segments/{sid}", headers=keys["admin"])
    assert r.status_code == 200
    assert r.json() == seg

    ids = [sid]
    for n in range(4):
        r = await client.post("/v1/segments", json=body(name=f"s{n}"), headers=keys["admin"])
        ids.append(r.json()["id"])
    listed, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        r = await client.get("/v1/segments", params=params, headers=keys["marketing"])
        assert r.status_code == 200
        listed += [s["id"] for s in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if not cursor:
            break
    assert listed == ids

    r = await client.delete(f"/v1/segments/{sid}", headers=keys["marketing"])
    assert r.status_code == 204
    for path in ("", "/members", "/stats", "/export"):
        r = await client.get(f"/v1/segments/{sid}{path}", headers=keys["marketing"])
        assert r.status_code == 404, path
    r = await client.delete(f"/v1/segments/{sid}", headers=keys["marketing"])
    assert r.status_code == 404
    r = await client.get("/v1/segments", headers=keys["marketing"])
    assert [s["id"] for s in r.json()["items"]] == ids[1:]
    r = await client.get("/v1/segments/not-an-id", headers=keys["marketing"])
    assert r.status_code == 404


async def test_only_marketing_and_admin(client, keys):
    r = await client.post("/v1/segments", json=body(), headers=keys["marketing"])
    sid = r.json()["id"]
    calls = [
        ("POST", "/v1/segments", body()),
        ("GET", "/v1/segments", None),
        ("GET", f"/v1/segments/{sid}", None),
        ("GET", f"/v1/segments/{sid}/members", None),
        ("GET", f"/v1/segments/{sid}/stats", None),
        ("GET", f"/v1/segments/{sid}/export", None),
        ("POST", "/v1/segments/query", {k: v for k, v in body().items() if k != "name"}),
        ("DELETE", f"/v1/segments/{sid}", None),
    ]
    for method, path, payload in calls:
        for role in ("ingest", "compliance"):
            r = await client.request(method, path, json=payload, headers=keys[role])
            assert r.status_code == 403, (method, path, role)
        r = await client.request(method, path, json=payload)
        assert r.status_code == 401, (method, path)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"purpose": "spam"}, "purpose"),
        ({"channel": "fax"}, "channel"),
        ({"channel": "*"}, "channel"),
        ({"name": ""}, "name"),
        (
            {"rules": {"all": [RULES["all"][0], {"field": "city", "op": "gt", "value": 1}]}},
            "rules.all[1].op",
        ),
        (
            {"rules": {"all": [{"field": "shoe_size", "op": "eq", "value": 1}]}},
            "rules.all[0].field",
        ),
        (
            {"rules": {"not": {"field": "orders_count", "op": "gte", "value": "many"}}},
            "rules.not.value",
        ),
        (
            {"rules": {"any": [{"all": [{"field": "jurisdiction", "op": "eq", "value": "XX"}]}]}},
            "rules.any[0].all[0].value",
        ),
        ({"rules": {"field": "traits.tier", "op": "between", "value": 1}}, "rules.op"),
        ({"rules": {"all": {}}}, "rules.all"),
        ({"rules": []}, "rules"),
        ({"rules": {"all": [], "any": []}}, "rules.any"),
    ],
)
async def test_validation_names_the_bad_part(client, keys, over, field):
    r = await client.post("/v1/segments", json=body(**over), headers=keys["marketing"])
    assert r.status_code == 400, r.text
    problem = r.json()
    assert field in [e["field"] for e in problem["errors"]]
    r = await client.get("/v1/segments", headers=keys["marketing"])
    assert r.json()["items"] == []  # a rejected request stores nothing


async def test_every_bad_field_is_named_at_once(client, keys):
    bad = body(name=" ", purpose="spam", rules={"any": [{"field": "x", "op": "eq", "value": 1}]})
    r = await client.post("/v1/segments", json=bad, headers=keys["marketing"])
    assert r.status_code == 400
    assert [e["field"] for e in r.json()["errors"]] == ["name", "purpose", "rules.any[0].field"]


async def test_limits_and_cursors_are_checked(client, keys):
    r = await client.post("/v1/segments", json=body(), headers=keys["marketing"])
    sid = r.json()["id"]
    for params, field in [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"cursor": "garbage"}, "cursor"),
    ]:
        r = await client.get(
            f"/v1/segments/{sid}/members", params=params, headers=keys["marketing"]
        )
        assert r.status_code == 400
        assert r.json()["errors"][0]["field"] == field
    r = await client.get(
        f"/v1/segments/{sid}/members", params={"limit": 1000}, headers=keys["marketing"]
    )
    assert r.status_code == 200
    assert r.json() == {"items": [], "next_cursor": None}


async def test_openapi_documents_the_segment_api(client):
    r = await client.get("/schema/openapi.json")
    paths = r.json()["paths"]
    assert "/v1/segments/{segment_id}/members" in paths
    assert "/v1/segments/query" in paths


async def test_a_cursor_is_good_only_where_it_was_handed_out(client, keys):
    """A members cursor holds a keyset position; taken to another segment (a sending tool
    that mixed up two campaigns' state), to an ad-hoc query of other rules or to another list,
    it silently skipped every member before that position. Now it is a 400 naming `cursor`."""
    for n in range(3):
        r = await client.post(
            "/v1/profiles",
            json={
                "source": "crm",
                "email": f"c{n}@ex.com",
                "country": "RU",
                "consents": [
                    {
                        "purpose": "marketing",
                        "channel": "email",
                        "status": "granted",
                        "evidence": {"wording_id": "newsletter-v3", "method": "double_opt_in"},
                    }
                ],
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text
    one = (await client.post("/v1/segments", json=body(), headers=keys["marketing"])).json()["id"]
    other = (
        await client.post(
            "/v1/segments", json=body(name="all", rules={"all": []}), headers=keys["marketing"]
        )
    ).json()["id"]
    query = {"purpose": "marketing", "channel": "email", "rules": RULES, "limit": 1}

    r = await client.get(f"/v1/segments/{one}/members?limit=1", headers=keys["marketing"])
    cursor = r.json()["next_cursor"]
    r = await client.post("/v1/segments/query", json=query, headers=keys["marketing"])
    adhoc_cursor = r.json()["next_cursor"]
    r = await client.get("/v1/segments?limit=1", headers=keys["marketing"])
    list_cursor = r.json()["next_cursor"]
    assert cursor and adhoc_cursor and list_cursor

    # where they were handed out, they go on
    r = await client.get(
        f"/v1/segments/{one}/members", params={"cursor": cursor}, headers=keys["marketing"]
    )
    assert len(r.json()["items"]) == 2
    r = await client.post(
        "/v1/segments/query",
        json=query | {"cursor": adhoc_cursor, "limit": 10},
        headers=keys["marketing"],
    )
    assert len(r.json()["items"]) == 2

    # anywhere else: 400 naming the cursor, never a silently shorter walk
    elsewhere = [
        ("GET", f"/v1/segments/{other}/members", {"cursor": cursor}, None),
        ("GET", f"/v1/segments/{other}/members", {"cursor": adhoc_cursor}, None),
        ("GET", f"/v1/segments/{one}/members", {"cursor": list_cursor}, None),
        ("GET", "/v1/segments", {"cursor": cursor}, None),
        ("POST", "/v1/segments/query", None, query | {"cursor": cursor}),
        (
            "POST",
            "/v1/segments/query",
            None,
            query | {"rules": {"all": []}, "cursor": adhoc_cursor},
        ),
    ]
    for method, path, params, payload in elsewhere:
        r = await client.request(
            method, path, params=params, json=payload, headers=keys["marketing"]
        )
        assert r.status_code == 400, (path, params, payload, r.text)
        assert r.json()["errors"] == [
            {"field": "cursor", "message": "not a cursor this endpoint returned"}
        ]


def sms_customer(email: str, phone: str, country: str) -> dict:
    """A customer with an evidenced grant of advertising by sms."""
    return {
        "source": "crm",
        "email": email,
        "phone": phone,
        "first_name": "Ирина",
        "country": country,
        "consents": [
            {
                "purpose": "marketing",
                "channel": "sms",
                "status": "granted",
                "source": "crm",
                "evidence": {"wording_id": "sms-v1", "method": "checkbox"},
            }
        ],
    }


async def test_a_segment_sent_by_automatic_dialling_holds_no_russian_customer(client, keys):
    """38-FZ art. 18(2): advertising may not be sent in Russia by automatic dialling or
    mailing. A segment declared `automated` is saved so and answers without its Russian
    customers, their consent notwithstanding (stats: not_allowed), in members, export, the
    ad-hoc query and a customer's access request; one sent by a person keeps them."""
    made = {}
    for name, phone, country in (("ru", "+79161234567", "RU"), ("de", "+4915112345678", "DE")):
        r = await client.post(
            "/v1/profiles",
            json=sms_customer(f"{name}.sms@example.com", phone, country),
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text
        made[country] = r.json()["profile_id"]
    everyone = {"all": []}
    manual = body(name="by hand", channel="sms", rules=everyone)
    robot = body(name="robot", channel="sms", rules=everyone, automated=True)
    r = await client.post("/v1/segments", json=manual, headers=keys["marketing"])
    assert r.json()["automated"] is False
    by_hand = r.json()["id"]
    r = await client.post("/v1/segments", json=robot, headers=keys["marketing"])
    assert r.status_code == 201, r.text
    assert r.json()["automated"] is True
    auto = r.json()["id"]
    r = await client.get(f"/v1/segments/{auto}", headers=keys["marketing"])
    assert r.json()["automated"] is True

    async def members(sid: str) -> set[str]:
        r = await client.get(f"/v1/segments/{sid}/members", headers=keys["marketing"])
        return {m["profile_id"] for m in r.json()["items"]}

    assert await members(by_hand) == {made["RU"], made["DE"]}
    assert await members(auto) == {made["DE"]}
    r = await client.get(f"/v1/segments/{auto}/stats", headers=keys["marketing"])
    assert r.json()["contactable"] == 1 and r.json()["excluded"]["not_allowed"] == 1
    r = await client.get(f"/v1/segments/{auto}/export?format=ndjson", headers=keys["marketing"])
    assert [line for line in r.text.splitlines() if made["RU"] in line] == []
    assert made["DE"] in r.text
    query = {k: v for k, v in robot.items() if k != "name"}
    r = await client.post("/v1/segments/query", json=query, headers=keys["marketing"])
    assert {m["profile_id"] for m in r.json()["items"]} == {made["DE"]}
    # service texts (order status) are not advertising: an automated one still reaches both
    service = query | {"purpose": "service"}
    r = await client.post("/v1/segments/query", json=service, headers=keys["marketing"])
    assert {m["profile_id"] for m in r.json()["items"]} == {made["RU"], made["DE"]}

    r = await client.post(
        "/v1/access-requests", json={"profile_id": made["RU"]}, headers=keys["compliance"]
    )
    assert [s["id"] for s in r.json()["segments"]] == [by_hand]
    r = await client.get("/v1/audit/access-log", headers=keys["compliance"])
    logged = [e for e in r.json()["items"] if e.get("object_id") == auto]
    assert logged and all(e["detail"]["automated"] is True for e in logged), logged

    r = await client.post("/v1/segments", json=body(automated="yes"), headers=keys["marketing"])
    assert r.status_code == 400 and [e["field"] for e in r.json()["errors"]] == ["automated"]
