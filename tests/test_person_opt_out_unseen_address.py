"""'Stop all marketing' (POST /v1/opt-outs with no channel) from an address we had never seen
concerns the person who turns out to hold it: the phone their record brings with the address,
or that joins them later, is opted out too, from the opt-out's time (README, DESIGN §1.2: a
stale import never undoes an opt-out). Through the API and through `cdp import` alike, since
both store records through the same function (consent.optout.carry_person_opt_outs)."""

from __future__ import annotations

import csv

from cdp.importer import run_import
from consent.dsr.worker import run_pending
from tests.helpers import contactable, segment_members

EV = {"wording_id": "w-v1", "method": "checkbox"}
OLD = "2026-01-01T00:00:00Z"  # a stale CRM export, older than the opt-out
STOP_AT = "2026-06-01T00:00:00Z"


async def profile_id(client, keys, **query: str) -> str:  # type: ignore[no-untyped-def]
    r = await client.get("/v1/profiles", params=query, headers=keys["admin"])
    assert r.status_code == 200, r.text
    return r.json()["profile_id"]


async def stop_all(client, keys, **ident: str) -> None:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/opt-outs",
        json={**ident, "source": "esp", "occurred_at": STOP_AT},
        headers=keys["ingest"],
    )
    assert r.status_code == 200 and r.json()["suppressed"] is True, r.text


def old_grants(*channels: str, at: str = OLD) -> list[dict]:  # type: ignore[type-arg]
    return [
        {
            "purpose": "marketing",
            "channel": c,
            "status": "granted",
            "occurred_at": at,
            "evidence": EV,
        }
        for c in channels
    ]


async def audit_ok(client, keys) -> None:  # type: ignore[no-untyped-def]
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    assert r.json()["ok"] is True, r.json()


async def test_stop_all_marketing_from_an_unseen_email_reaches_the_phone_imported_with_it(
    client, keys
):
    await stop_all(client, keys, email="u@example.com")
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "u@example.com",
            "phone": "+79161230000",
            "country": "RU",
            "consents": old_grants("email", "sms", "push"),
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    m = (await contactable(client, keys, r.json()["profile_id"]))["marketing"]
    assert m["email"] is False and m["push"] is False  # holds (README)
    assert m["sms"] is False  # the phone of the same person
    assert await segment_members(client, keys, "marketing", "sms") == []
    await audit_ok(client, keys)


async def test_stop_all_marketing_from_an_unseen_phone_reaches_the_email_in_an_import(
    client, keys, platform, tmp_path
):
    await stop_all(client, keys, phone="+79161230001")
    src = tmp_path / "crm.csv"
    grants = ["granted", "w-v1", OLD] * 2  # email, then sms: value, wording, when
    with src.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["email", "phone", "country"]
            + [
                f"consent.marketing.{c}{x}"
                for c in ("email", "sms")
                for x in ("", ".wording_id", ".occurred_at")
            ]
        )
        w.writerow(["p@example.com", "+79161230001", "RU", *grants])
        w.writerow(["other@example.com", "+79161230002", "RU", *grants])
    summary = await run_import(platform, src, "crm")
    assert summary.consents_recorded == 4
    m = await contactable(client, keys, await profile_id(client, keys, email="p@example.com"))
    assert m["marketing"]["sms"] is False and m["marketing"]["email"] is False
    other = await contactable(
        client, keys, await profile_id(client, keys, email="other@example.com")
    )
    assert other["marketing"]["sms"] is True and other["marketing"]["email"] is True
    assert [i["address"] for i in await segment_members(client, keys, "marketing", "email")] == [
        "other@example.com"
    ]
    await audit_ok(client, keys)


async def test_stop_all_from_an_unseen_email_reaches_a_phone_that_joins_its_customer_later(
    client, keys
):
    await stop_all(client, keys, email="late@example.com")
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "external_id": "C-7", "email": "late@example.com", "country": "RU"},
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    pid = r.json()["profile_id"]
    # next week's sync brings the customer's phone, with a grant older than the opt-out
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "external_id": "C-7",
            "phone": "+79161230003",
            "consents": old_grants("sms"),
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 200 and r.json()["profile_id"] == pid, r.text
    assert (await contactable(client, keys, pid))["marketing"]["sms"] is False
    # a merge brings it too: the phone's own profile, merged in by a record naming both
    r = await client.post(
        "/v1/profiles",
        json={"source": "shop", "phone": "+79161230004", "consents": old_grants("sms")},
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/profiles",
        json={"source": "shop", "email": "late@example.com", "phone": "+79161230004"},
        headers=keys["ingest"],
    )
    assert r.json()["profile_id"] == pid, r.text
    assert (await contactable(client, keys, pid))["marketing"]["sms"] is False
    assert await segment_members(client, keys, "marketing", "sms") == []
    # only a grant that occurred after the opt-out makes a phone contactable again
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "app",
            "phone": "+79161230004",
            "consents": old_grants("sms", at="2026-07-01T00:00:00Z"),
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 200, r.text
    assert (await contactable(client, keys, pid))["marketing"]["sms"] is True
    await audit_ok(client, keys)


async def test_an_erased_holders_stop_all_does_not_follow_their_number_to_its_next_owner(
    client, keys, platform
):
    """A number erased with its customer and given to someone else starts afresh
    (consent.dsr.customer.recorded_before_erasure): the first owner's "stop all marketing"
    is theirs, and does not reach the email of the number's next owner. The number itself stays
    suppressed by the erasure until a grant that occurred after it."""
    phone = "+79161230005"
    r = await client.post(
        "/v1/profiles", json={"source": "crm", "phone": phone}, headers=keys["ingest"]
    )
    assert r.status_code == 201, r.text
    await stop_all(client, keys, phone=phone)
    # and of order messages too (the erasure suppresses advertising, and what was granted)
    r = await client.post(
        "/v1/opt-outs",
        json={"phone": phone, "purpose": "service", "source": "esp", "occurred_at": STOP_AT},
        headers=keys["ingest"],
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/erasure-requests",
        json={"phone": phone, "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    await run_pending(platform)
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "next.owner@example.com",
            "phone": phone,
            "country": "RU",
            "consents": old_grants("email", "sms"),
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    m = await contactable(client, keys, r.json()["profile_id"])
    assert m["marketing"]["email"] is True and m["service"]["email"] is True
    assert m["marketing"]["sms"] is False
    await audit_ok(client, keys)


async def test_stop_all_from_an_unseen_email_reaches_a_phone_a_reviewed_merge_brings(client, keys):
    await stop_all(client, keys, email="merged@example.com")
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "external_id": "M-1", "email": "merged@example.com"},
        headers=keys["ingest"],
    )
    pid = r.json()["profile_id"]
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "external_id": "M-2",
            "phone": "+79161230006",
            "country": "RU",
            "consents": old_grants("sms"),
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    bridge = await client.post(  # the guards refuse it: two external ids of one source
        "/v1/profiles",
        json={"source": "shop", "email": "merged@example.com", "phone": "+79161230006"},
        headers=keys["ingest"],
    )
    assert bridge.json()["merged_profile_ids"] == []
    (review,) = (await client.get("/v1/merge-reviews", headers=keys["admin"])).json()["items"]
    r = await client.post(f"/v1/merge-reviews/{review['review_id']}/accept", headers=keys["admin"])
    assert r.status_code == 200, r.text
    assert (await contactable(client, keys, pid))["marketing"]["sms"] is False
    assert await segment_members(client, keys, "marketing", "sms") == []
    await audit_ok(client, keys)


async def test_a_withdrawal_of_every_channel_through_the_consents_api_from_an_unseen_email(
    client, keys
):
    """POST /v1/consents withdrawing every channel ('*') of an email no one holds is recorded on
    the address alone, as an opt-out of it is, and concerns the person who turns out to hold
    it as much as "stop all marketing" does. It used to suppress nothing, so the phone and the
    push of the customer then imported with the address, with grants older than the
    withdrawal, were contactable by SMS and push (a known customer's withdrawal of '*' reaches
    every address and the profile)."""
    r = await client.post(
        "/v1/consents",
        json={
            "email": "esp@example.com",
            "purpose": "marketing",
            "channel": "*",
            "status": "withdrawn",
            "source": "esp",
            "occurred_at": STOP_AT,
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201 and r.json()["profile_id"] is None, r.text
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "esp@example.com",
            "phone": "+79161230007",
            "country": "RU",
            "consents": old_grants("email", "sms", "push"),
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    m = (await contactable(client, keys, r.json()["profile_id"]))["marketing"]
    assert m == {"email": False, "sms": False, "phone": False, "push": False, "messenger": False}
    assert await segment_members(client, keys, "marketing", "sms") == []
    assert await segment_members(client, keys, "marketing", "push") == []
    await audit_ok(client, keys)


async def test_a_push_withdrawal_through_the_consents_api_naming_an_unseen_email(client, keys):
    """Push reaches the profile that holds the address named: a withdrawal of push naming an
    email no one holds stops the push of whoever turns out to hold it, as an opt-out of push
    naming it does (it used to be recorded on the email, where it changed nothing)."""
    r = await client.post(
        "/v1/consents",
        json={
            "email": "app@example.com",
            "purpose": "marketing",
            "channel": "push",
            "status": "withdrawn",
            "source": "app",
            "occurred_at": STOP_AT,
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": "app@example.com",
            "country": "RU",
            "consents": old_grants("email", "push"),
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    m = (await contactable(client, keys, r.json()["profile_id"]))["marketing"]
    assert m["push"] is False and m["email"] is True  # the email's own grant is untouched
    assert await segment_members(client, keys, "marketing", "push") == []
    await audit_ok(client, keys)
