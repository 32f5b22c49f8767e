"""An opt-out of one channel from a customer who has no address of that channel yet.

POST /v1/opt-outs of sms that names the customer's email, profile id or external id (or an
email no one holds yet) used to answer `suppressed: false` and record nothing: the phone a
stale import brought later, with an sms grant older than the opt-out, was contactable and in
sms segments. API.md: the opt-out holds "also for an address the platform has never seen ...
a later import of it (with an older consent) never makes it contactable again; only a new
grant that occurred after the opt-out can" (DESIGN §1.2). It is now recorded (on the address
named, with its suppression for the channel, or on the customer) and reaches the addresses of
the channel the customer gains later, on every path that adds one
(consent.optout.carry_person_opt_outs), as "stop all marketing" already did."""

from __future__ import annotations

import csv

from cdp.importer import run_import
from cdp.settings import DEFAULT_POLICY_DIR
from consent.optout import concerns_person
from consent.policy import load_policy
from tests.helpers import contactable, segment_members

EV = {"wording_id": "w-v1", "method": "checkbox"}
OLD = "2026-01-01T00:00:00Z"  # a stale CRM export, older than the opt-out
OPT_OUT_AT = "2026-06-01T00:00:00Z"
AFTER = "2026-07-01T00:00:00Z"


def grants(*channels: str, at: str = OLD) -> list[dict]:  # type: ignore[type-arg]
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


async def opt_out(client, keys, channel: str, **ident: str) -> dict:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/opt-outs",
        json={**ident, "channel": channel, "source": "esp", "occurred_at": OPT_OUT_AT},
        headers=keys["ingest"],
    )
    assert r.status_code == 200, r.text
    return r.json()


async def upsert(client, keys, status: int = 200, **record) -> str:  # type: ignore[no-untyped-def]
    r = await client.post("/v1/profiles", json={"source": "crm", **record}, headers=keys["ingest"])
    assert r.status_code == status, r.text
    return r.json()["profile_id"]


async def events(client, keys, **query: str) -> list[dict]:  # type: ignore[type-arg,no-untyped-def]
    r = await client.get("/v1/audit/consent-events", params=query, headers=keys["compliance"])
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def audit_ok(client, keys) -> None:  # type: ignore[no-untyped-def]
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    assert r.json()["ok"] is True, r.json()


async def sms_contactable(client, keys, pid: str) -> bool:  # type: ignore[no-untyped-def]
    return (await contactable(client, keys, pid))["marketing"]["sms"]


async def test_sms_opt_out_naming_the_email_holds_for_the_phone_a_stale_record_brings(client, keys):
    """The black-box review's case, through POST /v1/profiles."""
    pid = await upsert(client, keys, 201, external_id="SMSO", email="smso@example.com")
    answer = await opt_out(client, keys, "sms", email="smso@example.com")
    assert answer == {"profile_ids": [pid], "suppressed": True}
    assert [(e["channel"], e["status"]) for e in await events(client, keys, profile_id=pid)] == [
        ("sms", "withdrawn")
    ]
    await upsert(client, keys, external_id="SMSO", phone="+79035550101", consents=grants("sms"))
    assert await sms_contactable(client, keys, pid) is False
    assert await segment_members(client, keys, "marketing", "sms") == []
    # the email itself is still contactable by email: the opt-out was of sms only
    await upsert(client, keys, email="smso@example.com", consents=grants("email"))
    assert (await contactable(client, keys, pid))["marketing"]["email"] is True
    # a grant of the phone that occurred after the opt-out makes it contactable again
    r = await client.post(
        "/v1/consents",
        json={"phone": "+79035550101", "source": "web", **grants("sms", at=AFTER)[0]},
        headers=keys["ingest"],
    )
    assert r.status_code == 201 and r.json()["effective"] is True, r.text
    assert await sms_contactable(client, keys, pid) is True
    await audit_ok(client, keys)


async def test_sms_opt_out_naming_the_profile_holds_for_the_phone_a_batch_brings(client, keys):
    pid = await upsert(client, keys, 201, external_id="B-1", email="b1@example.com")
    answer = await opt_out(client, keys, "sms", profile_id=pid)
    assert answer == {"profile_ids": [pid], "suppressed": True}
    assert await events(client, keys, profile_id=pid), "the opt-out left no ledger entry"
    r = await client.post(
        "/v1/profiles/batch",
        json={
            "records": [
                {
                    "source": "crm",
                    "external_id": "B-1",
                    "phone": "+79035550102",
                    "consents": grants("sms"),
                },
                # someone else, not opted out: their phone and its old grant stand
                {
                    "source": "crm",
                    "external_id": "B-2",
                    "email": "b2@example.com",
                    "phone": "+79035550103",
                    "consents": grants("sms"),
                },
            ]
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 200, r.text
    assert [x.get("error") for x in r.json()["results"]] == [None, None]
    assert await sms_contactable(client, keys, pid) is False
    assert [m["address"] for m in await segment_members(client, keys, "marketing", "sms")] == [
        "+79035550103"
    ]
    # a record whose sms grant occurred after the opt-out makes the phone contactable
    await upsert(client, keys, phone="+79035550102", consents=grants("sms", at=AFTER))
    assert await sms_contactable(client, keys, pid) is True
    await audit_ok(client, keys)


async def test_sms_opt_out_naming_the_external_id_holds_for_the_phone_cdp_import_brings(
    client, keys, platform, tmp_path
):
    pid = await upsert(client, keys, 201, external_id="I-1", email="i1@example.com")
    answer = await opt_out(client, keys, "sms", id_source="crm", external_id="I-1")
    assert answer == {"profile_ids": [pid], "suppressed": True}
    src = tmp_path / "crm.csv"
    with src.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["external_id", "phone"]
            + [f"consent.marketing.sms{x}" for x in ("", ".wording_id", ".occurred_at")]
        )
        w.writerow(["I-1", "+79035550104", "granted", "w-v1", OLD])
        w.writerow(["I-2", "+79035550105", "granted", "w-v1", OLD])
    summary = await run_import(platform, src, "crm")
    assert summary.consents_recorded == 2
    assert await sms_contactable(client, keys, pid) is False
    assert [m["address"] for m in await segment_members(client, keys, "marketing", "sms")] == [
        "+79035550105"
    ]
    await audit_ok(client, keys)


async def test_sms_opt_out_of_an_email_no_one_holds_holds_for_its_owners_phone(client, keys):
    """Nobody holds the email yet: the email is suppressed for sms (and the ledger says so),
    so the customer created with it and a phone is not contactable by sms with the older
    grant they come with."""
    answer = await opt_out(client, keys, "sms", email="nobody@example.com")
    assert answer == {"profile_ids": [], "suppressed": True}
    assert [e["channel"] for e in await events(client, keys, email="nobody@example.com")] == ["sms"]
    pid = await upsert(
        client,
        keys,
        201,
        email="nobody@example.com",
        phone="+79035550106",
        consents=grants("email", "sms"),
    )
    m = (await contactable(client, keys, pid))["marketing"]
    assert m["sms"] is False and m["email"] is True
    # another unseen email: its customer is created with it alone, their phone comes later
    await opt_out(client, keys, "sms", email="nobody3@example.com")
    later = await upsert(client, keys, 201, external_id="N-3", email="nobody3@example.com")
    await upsert(client, keys, external_id="N-3", phone="+79035550115", consents=grants("sms"))
    assert await sms_contactable(client, keys, later) is False
    assert await segment_members(client, keys, "marketing", "sms") == []
    await audit_ok(client, keys)


async def test_sms_opt_out_of_an_email_no_one_holds_holds_in_cdp_import(
    client, keys, platform, tmp_path
):
    await opt_out(client, keys, "sms", email="nobody2@example.com")
    src = tmp_path / "crm.csv"
    with src.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["email", "phone"]
            + [f"consent.marketing.sms{x}" for x in ("", ".wording_id", ".occurred_at")]
        )
        w.writerow(["nobody2@example.com", "+79035550107", "granted", "w-v1", OLD])
        w.writerow(["someone@example.com", "+79035550111", "granted", "w-v1", OLD])
    await run_import(platform, src, "crm")
    assert [m["address"] for m in await segment_members(client, keys, "marketing", "sms")] == [
        "+79035550111"
    ]
    await audit_ok(client, keys)


async def test_email_opt_out_naming_the_phone_holds_for_an_email_a_merge_brings(client, keys):
    """The other way round, through a merge: an opt-out of email that names the phone reaches
    the email of a profile that a record naming both merges in."""
    pid = await upsert(client, keys, 201, external_id="M-1", phone="+79035550108")
    answer = await opt_out(client, keys, "email", phone="+79035550108")
    assert answer == {"profile_ids": [pid], "suppressed": True}
    await upsert(client, keys, 201, source="shop", email="m1@example.com", consents=grants("email"))
    merged = await upsert(client, keys, source="shop", email="m1@example.com", phone="+79035550108")
    assert merged == pid
    assert (await contactable(client, keys, pid))["marketing"]["email"] is False
    assert await segment_members(client, keys, "marketing", "email") == []
    await audit_ok(client, keys)


async def test_email_opt_out_naming_the_phone_holds_for_an_email_a_reviewed_merge_brings(
    client, keys
):
    pid = await upsert(client, keys, 201, external_id="R-1", phone="+79035550112")
    await opt_out(client, keys, "email", phone="+79035550112")
    other = await upsert(client, keys, 201, external_id="R-2", email="r2@example.com")
    await upsert(client, keys, email="r2@example.com", consents=grants("email"))
    # the guards refuse the merge (two external ids of one source); a reviewer accepts it
    r = await client.post(
        "/v1/profiles",
        json={"source": "shop", "email": "r2@example.com", "phone": "+79035550112"},
        headers=keys["ingest"],
    )
    assert r.json()["merged_profile_ids"] == [], r.text
    assert (await contactable(client, keys, other))["marketing"]["email"] is True
    (review,) = (await client.get("/v1/merge-reviews", headers=keys["admin"])).json()["items"]
    r = await client.post(f"/v1/merge-reviews/{review['review_id']}/accept", headers=keys["admin"])
    assert r.status_code == 200, r.text
    assert (await contactable(client, keys, pid))["marketing"]["email"] is False
    assert await segment_members(client, keys, "marketing", "email") == []
    await audit_ok(client, keys)


async def test_sms_opt_out_naming_the_customer_reaches_a_second_phone_too(client, keys):
    """Naming the customer (not a number), the opt-out is the person's: it reaches the phone
    they have and the one they gain later (recorded on the first as reached through the
    customer, consent_ledger.via_profile)."""
    pid = await upsert(
        client, keys, 201, external_id="S-1", phone="+79035550113", consents=grants("sms")
    )
    await opt_out(client, keys, "sms", profile_id=pid)
    await upsert(client, keys, external_id="S-1", phone="+79035550114", consents=grants("sms"))
    assert await sms_contactable(client, keys, pid) is False
    assert await segment_members(client, keys, "marketing", "sms") == []
    await audit_ok(client, keys)


async def test_an_opt_out_of_one_phone_stays_that_phones(client, keys):
    """What stays as it was: an sms opt-out naming a phone (a STOP reply, one-click) is that
    number's, not the person's: the customer's other number, with its own grant, is not
    stopped by it."""
    pid = await upsert(
        client, keys, 201, external_id="P-1", phone="+79035550109", consents=grants("sms")
    )
    await opt_out(client, keys, "sms", phone="+79035550109")
    assert await sms_contactable(client, keys, pid) is False
    await upsert(client, keys, external_id="P-1", phone="+79035550110")
    r = await client.post(
        "/v1/consents",
        json={"phone": "+79035550110", "source": "app", **grants("sms")[0]},
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    assert [m["address"] for m in await segment_members(client, keys, "marketing", "sms")] == [
        "+79035550110"
    ]
    await audit_ok(client, keys)


def test_which_opt_outs_of_one_channel_concern_the_person() -> None:
    """The plain rule (consent.optout.concerns_person): recorded on the customer, on an
    address of another kind, or on an address reached through the customer."""
    policy = load_policy(DEFAULT_POLICY_DIR)
    assert concerns_person(policy, "phone", "*")
    assert concerns_person(policy, "profile", "sms")
    assert concerns_person(policy, "email", "sms")
    assert concerns_person(policy, "phone", "email")
    assert concerns_person(policy, "phone", "sms", via=True)
    assert not concerns_person(policy, "phone", "sms")  # a STOP reply: that number's
    assert not concerns_person(policy, "email", "email", via=None)  # one-click: that email's
    assert not concerns_person(policy, "email", "push")  # the profile's: nothing to carry
