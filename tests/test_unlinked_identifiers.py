"""An identifier the merge guards never link (a shared office line given with its extension, a
placeholder address) names nobody, whichever way it comes: a record (POST /v1/profiles), an
event (POST /v1/events, `cdp events import`) or a consent (POST /v1/consents)."""

from __future__ import annotations

from sqlalchemy import func, select

from cdp.db.tables import profiles
from tests.test_consent import GRANT, contactable

LINE = "+74951234567"  # an office's line; its colleagues are reached on extensions


async def order(client, keys, n: int, **who):  # type: ignore[no-untyped-def]
    body = {
        "source": "shop",
        "event_id": f"ord-{n}",
        "type": "purchase",
        "occurred_at": "2026-11-01T12:00:00Z",
        "amount": "100.00",
        "currency": "RUB",
        **who,
    }
    r = await client.post("/v1/events", json=body, headers=keys["ingest"])
    assert r.status_code == 201, r.text
    return r.json()["profile_id"]


async def stats(client, keys, pid: str) -> dict:  # type: ignore[type-arg]
    r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
    assert r.status_code == 200, r.text
    return r.json()


async def test_orders_naming_a_shared_line_do_not_make_colleagues_one_customer(client, keys):
    # the office's line, given without an extension: it is one customer's number
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "reception@example.com", "phone": "+7 495 123-45-67"},
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    reception = r.json()["profile_id"]
    # two colleagues order, each named by the line and their extension
    first = await order(client, keys, 1, phone="+7 495 123-45-67 доб. 101")
    second = await order(client, keys, 2, phone="+7 495 123-45-67 доб. 102")
    assert len({reception, first, second}) == 3
    assert (await stats(client, keys, reception))["stats"]["orders_count"] == 0
    for pid in (first, second):
        view = await stats(client, keys, pid)
        assert view["stats"]["orders_count"] == 1
        assert view["identities"] == []  # the line is not kept as the colleague's phone


async def test_a_grant_naming_a_shared_line_or_a_placeholder_is_400_and_stores_nothing(
    client, keys, platform
):
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "reception@example.com", "phone": LINE},
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text

    async def count() -> int:
        async with platform.db.read() as conn:
            return (await conn.execute(select(func.count()).select_from(profiles))).scalar_one()

    before = await count()
    grants = [
        ("phone", "+7 495 123-45-67 доб. 104", "sms"),
        ("phone", "+7 999 999-99-99", "sms"),
        ("email", "test@test.com", "email"),
    ]
    for field, value, channel in grants:
        r = await client.post(
            "/v1/consents",
            json={
                "source": "web_form",
                field: value,
                "purpose": "marketing",
                "channel": channel,
                "status": "granted",
                "evidence": GRANT,
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 400, r.text
        assert [e["field"] for e in r.json()["errors"]] == [field]
        assert value not in r.text
    assert await count() == before
    # the colleague's agreement did not make the office's line contactable by sms
    assert (await contactable(client, keys, phone=LINE))["marketing"]["sms"] is False
