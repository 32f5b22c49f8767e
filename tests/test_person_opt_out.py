"""'Stop all marketing' concerns the person: an address the platform learns is theirs later
(a record that carries it, a merge) is opted out too, from the opt-out's time. Only a grant
that occurred after the opt-out makes it contactable; an older one that a stale import or the
merged profile brings does not."""

from __future__ import annotations

from datetime import timedelta

from cdp.ids import utcnow

EMAIL = "person.optout@example.com"
PHONE = "+79161230101"


def iso(dt) -> str:  # type: ignore[no-untyped-def]
    return dt.isoformat().replace("+00:00", "Z")


def old_sms_grant(days: int = 3) -> dict:  # type: ignore[type-arg]
    return {
        "purpose": "marketing",
        "channel": "sms",
        "status": "granted",
        "occurred_at": iso(utcnow() - timedelta(days=days)),
        "evidence": {"wording_id": "sms-v1", "method": "import"},
    }


async def contactable(client, keys, pid: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    r = await client.get(f"/v1/profiles/{pid}/consents", headers=keys["admin"])
    assert r.status_code == 200, r.text
    return r.json()["contactable"]["marketing"]


async def opt_out_everything(client, keys) -> str:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/profiles", json={"source": "crm", "email": EMAIL}, headers=keys["ingest"]
    )
    assert r.status_code == 201, r.text
    out = await client.post(
        "/v1/opt-outs", json={"email": EMAIL, "source": "esp"}, headers=keys["ingest"]
    )
    assert out.status_code == 200, out.text
    return r.json()["profile_id"]


async def audit_ok(client, keys) -> None:  # type: ignore[no-untyped-def]
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    assert r.json()["ok"] is True, r.json()


async def test_a_phone_imported_after_stop_all_marketing_is_not_contactable(client, keys):
    pid = await opt_out_everything(client, keys)
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": EMAIL, "phone": PHONE, "consents": [old_sms_grant()]},
        headers=keys["ingest"],
    )
    assert r.status_code == 200, r.text
    assert r.json()["profile_id"] == pid
    assert (await contactable(client, keys, pid))["sms"] is False
    await audit_ok(client, keys)

    # a grant that occurred after the opt-out does make it contactable
    r = await client.post(
        "/v1/consents",
        json={
            "phone": PHONE,
            "purpose": "marketing",
            "channel": "sms",
            "status": "granted",
            "source": "web_form",
            "evidence": {"wording_id": "sms-v2", "method": "double_opt_in"},
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    assert (await contactable(client, keys, pid))["sms"] is True
    assert (await contactable(client, keys, pid))["email"] is False
    await audit_ok(client, keys)


async def test_a_profile_merged_in_after_stop_all_marketing_is_not_contactable(client, keys):
    pid = await opt_out_everything(client, keys)
    other = await client.post(
        "/v1/profiles",
        json={"source": "shop", "phone": PHONE, "consents": [old_sms_grant()]},
        headers=keys["ingest"],
    )
    assert other.status_code == 201, other.text
    assert (await contactable(client, keys, other.json()["profile_id"]))["sms"] is True
    link = await client.post(
        "/v1/profiles",
        json={"source": "web", "email": EMAIL, "phone": PHONE},
        headers=keys["ingest"],
    )
    assert link.json()["merged_profile_ids"] == [other.json()["profile_id"]]
    assert (await contactable(client, keys, pid))["sms"] is False
    await audit_ok(client, keys)

    # a merge undone keeps the phone opted out (the safe side: nobody knows who asked)
    r = await client.post(f"/v1/profiles/{pid}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    assert (await contactable(client, keys, other.json()["profile_id"]))["sms"] is False
    await audit_ok(client, keys)


async def test_a_phone_granted_after_the_opt_out_stays_contactable_when_linked(client, keys):
    pid = await opt_out_everything(client, keys)
    other = await client.post(
        "/v1/profiles",
        json={
            "source": "shop",
            "phone": PHONE,
            "consents": [{**old_sms_grant(), "occurred_at": iso(utcnow())}],
        },
        headers=keys["ingest"],
    )
    assert other.status_code == 201, other.text
    await client.post(
        "/v1/profiles",
        json={"source": "web", "email": EMAIL, "phone": PHONE},
        headers=keys["ingest"],
    )
    assert (await contactable(client, keys, pid))["sms"] is True
    await audit_ok(client, keys)


async def test_an_email_added_after_a_profile_opted_out_of_everything_is_not_contactable(
    client, keys
):
    r = await client.post(
        "/v1/profiles", json={"source": "crm", "external_id": "C-77"}, headers=keys["ingest"]
    )
    pid = r.json()["profile_id"]
    out = await client.post(
        "/v1/opt-outs", json={"profile_id": pid, "source": "callcenter"}, headers=keys["ingest"]
    )
    assert out.status_code == 200, out.text
    grant = {**old_sms_grant(), "channel": "email"}
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "external_id": "C-77", "email": EMAIL, "consents": [grant]},
        headers=keys["ingest"],
    )
    assert r.json()["profile_id"] == pid
    assert (await contactable(client, keys, pid))["email"] is False
    await audit_ok(client, keys)


async def test_a_reviewed_merge_after_stop_all_marketing_leaves_the_phone_not_contactable(
    client, keys
):
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "external_id": "C-1", "email": EMAIL},
        headers=keys["ingest"],
    )
    pid = r.json()["profile_id"]
    out = await client.post(
        "/v1/opt-outs", json={"email": EMAIL, "source": "esp"}, headers=keys["ingest"]
    )
    assert out.status_code == 200, out.text
    other = await client.post(
        "/v1/profiles",
        json={"source": "crm", "external_id": "C-2", "phone": PHONE, "consents": [old_sms_grant()]},
        headers=keys["ingest"],
    )
    assert other.status_code == 201, other.text
    bridge = await client.post(  # the guards refuse it: two external ids of one source
        "/v1/profiles",
        json={"source": "shop", "email": EMAIL, "phone": PHONE},
        headers=keys["ingest"],
    )
    assert bridge.json()["merged_profile_ids"] == []
    (review,) = (await client.get("/v1/merge-reviews", headers=keys["admin"])).json()["items"]
    accepted = await client.post(
        f"/v1/merge-reviews/{review['review_id']}/accept", headers=keys["admin"]
    )
    assert accepted.status_code == 200, accepted.text
    assert (await contactable(client, keys, pid))["sms"] is False
    await audit_ok(client, keys)
