"""Known gaps, found by review on 2026-12-06 and not fixed yet: a customer merged into another
by mistake, unmerged, then erased. While merged, what was recorded for her (consent evidence,
an order naming her profile id, merge snapshots of later merges) was encrypted under the
survivor's data key, which the unmerge keeps and the erasure does not destroy. These tests
fail until that is mended (strict: an unexpected pass fails the suite, so the mark is removed
with the fix). The likely mend: give the holder a new data key at the unmerge (re-encrypting
its rows, copying its own ledger evidence), and scrub later snapshots of what the undone merge
brought in."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cdp.ids import utcnow

A_EMAIL, A_PHONE = "anna.f@example.com", "+79161230055"
B_EMAIL, C_PHONE = "boris.f@example.com", "+79160000055"
EVIDENCE = {
    "wording_id": "w",
    "method": "double_opt_in",
    "ip": "198.51.100.23",
    "user_agent": "AnnaUA/3.0",
}
GAP = "the survivor keeps the data key the merge encrypted her data under (README, Erasure)"


async def post(client, keys, path, body, role="ingest"):  # type: ignore[no-untyped-def]
    r = await client.post(path, json=body, headers=keys[role])
    assert r.status_code in (200, 201, 202), r.text
    return r.json()


async def wrong_merge_undone_then_erased(client, keys, *, carl: bool = False):  # type: ignore[no-untyped-def]
    crm = {"source": "crm"}
    boris = (await post(client, keys, "/v1/profiles", {**crm, "email": B_EMAIL}))["profile_id"]
    anna = (
        await post(
            client,
            keys,
            "/v1/profiles",
            {**crm, "email": A_EMAIL, "phone": A_PHONE, "first_name": "Анна"},
        )
    )["profile_id"]
    # a record links Anna's phone to Boris's email: Anna is merged into Boris
    await post(
        client, keys, "/v1/profiles", {"source": "wrong", "email": B_EMAIL, "phone": A_PHONE}
    )
    # while merged: Anna grants on her own email; a shop sends an order naming her profile id
    grant = {"email": A_EMAIL, "purpose": "marketing", "channel": "email", "status": "granted"}
    await post(client, keys, "/v1/consents", {**grant, "source": "web_form", "evidence": EVIDENCE})
    order = {
        "source": "shop",
        "event_id": f"o-{A_EMAIL}",
        "type": "purchase",
        "occurred_at": (utcnow() - timedelta(hours=1)).isoformat(),
        "profile_id": anna,
        "amount": "10.00",
        "currency": "RUB",
        "properties": {"gift": "for Анна"},
    }
    await post(client, keys, "/v1/events", order)
    carl_id = None
    if carl:  # a third customer joins Boris while Anna is merged in
        carl_id = (
            await post(
                client, keys, "/v1/profiles", {**crm, "phone": C_PHONE, "first_name": "Карл"}
            )
        )["profile_id"]
        await post(
            client, keys, "/v1/profiles", {"source": "wrong2", "email": B_EMAIL, "phone": C_PHONE}
        )
    r = await client.post(f"/v1/profiles/{anna}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    erase = {"email": A_EMAIL, "requested_by": "customer"}
    await post(client, keys, "/v1/erasure-requests", erase, role="compliance")
    assert (await client.get(f"/v1/profiles/{anna}", headers=keys["admin"])).status_code == 410
    return boris, anna, carl_id


@pytest.mark.xfail(strict=True, reason=GAP)
async def test_her_evidence_and_order_are_not_in_another_customers_access_export(
    client, keys, platform
):
    await wrong_merge_undone_then_erased(client, keys)
    export = await post(client, keys, "/v1/access-requests", {"email": B_EMAIL}, "compliance")
    text = str(export)
    assert [s for s in ("198.51.100.23", "AnnaUA/3.0", A_EMAIL, "for Анна") if s in text] == []


@pytest.mark.xfail(strict=True, reason=GAP)
async def test_undoing_a_later_merge_does_not_give_her_name_back(client, keys, platform):
    boris, _, carl = await wrong_merge_undone_then_erased(client, keys, carl=True)
    r = await client.post(f"/v1/profiles/{carl}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    body = (await client.get(f"/v1/profiles/{boris}", headers=keys["admin"])).json()
    assert body["first_name"] != "Анна"
