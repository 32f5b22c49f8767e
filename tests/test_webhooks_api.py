"""POST/GET/DELETE /v1/webhooks and the deliveries listing: roles, validation, the secret shown
once and stored encrypted."""

from __future__ import annotations

import base64

from consent.outbox import signing
from tests.helpers import raw_database_bytes


async def create(client, keys, **body):  # type: ignore[no-untyped-def]
    return await client.post(
        "/v1/webhooks",
        json={"url": "https://hooks.example/consent", **body},
        headers=keys["admin"],
    )


async def test_subscribe_list_read_and_delete(client, keys):
    r = await create(client, keys, kinds=["opt_out", "consent.withdrawn"], description="ESP")
    assert r.status_code == 201, r.text
    sub = r.json()
    assert sub["secret"].startswith("whsec_")
    assert sub["kinds"] == ["consent.withdrawn", "opt_out"]
    assert sub["include_address"] is False and sub["description"] == "ESP"

    everything = await create(client, keys)  # kinds default to the consent kinds
    assert everything.json()["kinds"] == [
        "consent.withdrawn",
        "consent.granted",
        "opt_out",
        "erasure.completed",
        "suppression.added",
    ]

    listed = await client.get("/v1/webhooks", headers=keys["admin"])
    assert listed.status_code == 200
    assert [i["id"] for i in listed.json()["items"]] == [sub["id"], everything.json()["id"]]
    assert all("secret" not in i for i in listed.json()["items"])

    one = await client.get(f"/v1/webhooks/{sub['id']}", headers=keys["admin"])
    assert one.status_code == 200 and "secret" not in one.json()
    assert one.json()["deliveries"] == {"pending": 0, "delivered": 0, "dead": 0, "cancelled": 0}

    page = await client.get("/v1/webhooks?limit=1", headers=keys["admin"])
    assert len(page.json()["items"]) == 1 and page.json()["next_cursor"]
    rest = await client.get(
        f"/v1/webhooks?limit=1&cursor={page.json()['next_cursor']}", headers=keys["admin"]
    )
    assert [i["id"] for i in rest.json()["items"]] == [everything.json()["id"]]

    assert (
        await client.delete(f"/v1/webhooks/{sub['id']}", headers=keys["admin"])
    ).status_code == 204
    assert (await client.get(f"/v1/webhooks/{sub['id']}", headers=keys["admin"])).status_code == 404
    assert (
        await client.delete(f"/v1/webhooks/{sub['id']}", headers=keys["admin"])
    ).status_code == 404
    gone = await client.get(f"/v1/webhooks/{sub['id']}/deliveries", headers=keys["admin"])
    assert gone.status_code == 404


async def test_invalid_subscriptions_are_refused_by_field(client, keys):
    cases = [
        ({"kinds": ["opt_out", "consent.deleted"]}, "kinds"),
        ({"kinds": []}, "kinds"),
        ({"url": "ftp://hooks.example/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "https://user:pw@hooks.example/x"}, "url"),
        ({"include_address": "yes"}, "include_address"),
        ({"colour": "red"}, "colour"),
    ]
    for body, field in cases:
        r = await create(client, keys, **body)
        assert r.status_code == 400, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in r.json()["errors"]] == [field], r.text
    listed = await client.get("/v1/webhooks", headers=keys["admin"])
    assert listed.json()["items"] == []  # a rejected request stores nothing


async def test_urls_the_dispatcher_could_never_send_to_are_refused_by_field(client, keys):
    """A URL that parses loosely but that no HTTP client can send to (a port that is not a
    number or out of range, an invalid IDNA name, a space in the host, an unclosed IPv6
    bracket) is a 400 naming `url` at registration, not a subscription that never delivers
    (or a 500)."""
    for url in (
        "http://[::1/consent",
        "https://hooks.example:abc/consent",
        "https://hooks.example:99999/consent",
        "https://hooks.example:0/consent",
        "https://xn--.example/consent",
        "http://hooks exam.example/consent",
    ):
        r = await create(client, keys, url=url)
        assert r.status_code == 400, (url, r.status_code, r.text)
        assert [e["field"] for e in r.json()["errors"]] == ["url"], r.text
    listed = await client.get("/v1/webhooks", headers=keys["admin"])
    assert listed.json()["items"] == []


async def test_only_admins_manage_webhooks(client, keys):
    for role in ("ingest", "marketing", "compliance"):
        r = await create(client, {"admin": keys[role]})
        assert r.status_code == 403
        assert (await client.get("/v1/webhooks", headers=keys[role])).status_code == 403
    assert (await client.get("/v1/webhooks")).status_code == 401


async def test_unknown_ids_and_bad_queries(client, keys):
    for path in ("/v1/webhooks/nope", "/v1/webhooks/01890000-0000-7000-8000-000000000000"):
        assert (await client.get(path, headers=keys["admin"])).status_code == 404
        assert (await client.get(path + "/deliveries", headers=keys["admin"])).status_code == 404
    sub = (await create(client, keys)).json()
    base = f"/v1/webhooks/{sub['id']}/deliveries"
    r = await client.get(base + "?status=lost", headers=keys["admin"])
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "status"
    r = await client.get(base + "?cursor=zzz", headers=keys["admin"])
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "cursor"
    r = await client.get(base + "?limit=0", headers=keys["admin"])
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "limit"
    r = await client.get(base, headers=keys["admin"])
    assert r.json() == {"items": [], "next_cursor": None}


async def test_the_secret_is_stored_encrypted(client, keys, platform):
    sub = (await create(client, keys)).json()
    key = signing.secret_key(sub["secret"])
    raw = await raw_database_bytes(platform)
    assert key not in raw and key.hex().encode() not in raw.lower()
    assert sub["secret"].encode() not in raw
    assert base64.b64encode(key) not in raw
