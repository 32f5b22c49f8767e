"""Merge guards: placeholders never link, identity caps, refused merges queue for review."""

from __future__ import annotations

import dataclasses

import msgspec
from sqlalchemy import select

from cdp.db.tables import identities, merges
from cdp.importer import run_import
from cdp.matching.tables import merge_reviews
from tests.helpers import count


async def post(client, keys, **body):  # type: ignore[no-untyped-def]
    r = await client.post("/v1/profiles", json=body, headers=keys["ingest"])
    assert r.status_code in (200, 201), r.text
    return r.json()


async def read(client, keys, pid):  # type: ignore[no-untyped-def]
    r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
    assert r.status_code == 200, r.text
    return r.json()


def with_guards(platform, **changes):  # type: ignore[no-untyped-def]
    identity = msgspec.structs.replace(platform.policy.identity, **changes)
    platform.policy = dataclasses.replace(platform.policy, identity=identity)


async def test_an_office_line_with_an_extension_never_links_colleagues(client, keys, platform):
    """E.164 has no extension: two colleagues behind one switchboard would share a number."""
    anna = await post(
        client, keys, source="crm", email="anna@corp.example", phone="+7 495 123-45-67 доб. 101"
    )
    ivan = await post(
        client, keys, source="crm", email="ivan@corp.example", phone="+7 (495) 123-45-67 ext. 102"
    )
    assert anna["profile_id"] != ivan["profile_id"]
    for answer in (anna, ivan):
        assert [e["field"] for e in answer["ignored"]] == ["phone"]
        assert "extension" in answer["ignored"][0]["message"]
    kinds = [i["kind"] for i in (await read(client, keys, anna["profile_id"]))["identities"]]
    assert "phone" not in kinds
    assert await count(platform, merges) == 0
    alone = await client.post(
        "/v1/profiles",
        json={"source": "crm", "phone": "8 495 123-45-67 доб. 7"},
        headers=keys["ingest"],
    )
    assert alone.status_code == 400 and alone.json()["errors"][0]["field"] == "phone"
    same_line = await post(
        client, keys, source="crm", email="desk@corp.example", phone="+74951234567"
    )
    assert same_line["created"] and "ignored" not in same_line  # the number itself still links


async def test_placeholder_values_never_link_profiles(client, keys, platform):
    placeholders = [
        {"email": "noemail@shop.ru"},  # a junk local part from the policy
        {"email": "Test@Test.com"},  # a junk address, any case
        {"phone": "+7 999 999-99-99"},  # a junk number from the policy
        {"phone": "+7 777 777 77 77"},  # one repeated digit: a placeholder by rule
    ]
    for n, placeholder in enumerate(placeholders):
        first = await post(client, keys, source="crm", external_id=f"A{n}", **placeholder)
        second = await post(client, keys, source="crm", external_id=f"B{n}", **placeholder)
        assert first["created"] and second["created"]
        assert first["profile_id"] != second["profile_id"]
        assert [e["field"] for e in second["ignored"]] == list(placeholder)
    assert await count(platform, identities) == 2 * len(placeholders)  # the external ids only
    assert await count(platform, merges) == 0

    # Events and consents name customers too: a placeholder there links nobody either.
    ids = set()
    for n in range(2):
        r = await client.post(
            "/v1/events",
            json={
                "source": "shop",
                "event_id": f"e{n}",
                "type": "page_view",
                "occurred_at": "2026-11-01T12:00:00Z",
                "email": "no-reply@example.com",
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text
        ids.add(r.json()["profile_id"])
    assert len(ids) == 2
    assert await count(platform, merges) == 0


GUEST_IDS = [
    "#N/A", "#Н/Д", "#n/a", "#VALUE!", "#ЗНАЧ!", "#DIV/0!", "#ДЕЛ/0!", "#ИМЯ?", "#REF!",
    "—", "–", "-", "?", "...", "нет", "НЕТ", "None", "NULL", "n/a", "Н/Д", "не  указан",
]  # fmt: skip


async def test_placeholder_external_ids_from_spreadsheets_never_link_guests(client, keys, platform):
    """Guest rows of an Excel export carry #N/A, a dash or "нет" where the customer id was."""
    pids = set()
    for n, ext in enumerate(GUEST_IDS):
        answer = await post(
            client, keys, source="shop", external_id=ext, email=f"guest{n}@example.com"
        )
        assert answer["created"], ext
        assert [e["field"] for e in answer["ignored"]] == ["external_id"], ext
        pids.add(answer["profile_id"])
    assert len(pids) == len(GUEST_IDS)
    assert await count(platform, merges) == 0
    kinds = {i["kind"] for i in (await read(client, keys, pids.pop()))["identities"]}
    assert kinds == {"email"}
    # an event naming a customer by such an id does not land on one of them either
    r = await client.post(
        "/v1/events",
        json={
            "source": "shop",
            "event_id": "guest-order",
            "type": "page_view",
            "occurred_at": "2026-11-01T12:00:00Z",
            "external_id": "#Н/Д",
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201 and r.json()["profile_id"] not in pids
    # a real id with '#' or '/' in it still links
    for ext in ("#1001", "A/17", "№ 5"):
        first = await post(client, keys, source="pos", external_id=ext, email="a@shop.example")
        again = await post(client, keys, source="pos", external_id=ext, phone="+79161112233")
        assert again["profile_id"] == first["profile_id"] and "ignored" not in again, ext


async def test_an_excel_export_of_guests_imports_one_profile_per_guest(platform, tmp_path):
    src = tmp_path / "guests.csv"
    lines = [f"{ext};guest{n}@example.com" for n, ext in enumerate(GUEST_IDS)]
    src.write_text("external_id;email\r\n" + "\r\n".join(lines) + "\r\n", encoding="utf-8")
    summary = await run_import(platform, src, "shop", workers=0)
    assert (summary.rows, summary.created, summary.rejected_rows) == (
        len(GUEST_IDS),
        len(GUEST_IDS),
        0,
    )
    assert await count(platform, merges) == 0
    assert await count(platform, identities) == len(GUEST_IDS)  # the emails only


async def test_a_profile_holds_at_most_the_cap_of_identifiers_per_kind(client, keys, platform):
    with_guards(platform, max_identities_per_kind=2)
    anna = await post(client, keys, source="crm", external_id="C-1", email="a1@example.com")
    second = await post(client, keys, source="crm", external_id="C-1", email="a2@example.com")
    assert second["profile_id"] == anna["profile_id"] and "ignored" not in second
    third = await post(client, keys, source="crm", external_id="C-1", email="a3@example.com")
    assert third["profile_id"] == anna["profile_id"]
    assert third["ignored"][0]["field"] == "email"
    assert "most identifiers" in third["ignored"][0]["message"]
    emails = [i["value"] for i in (await read(client, keys, anna["profile_id"]))["identities"]]
    assert "a3@example.com" not in emails
    # The identifier that was not linked links nothing later either.
    alone = await post(client, keys, source="web", email="a3@example.com")
    assert alone["created"] and alone["profile_id"] != anna["profile_id"]


async def test_a_merge_of_too_many_profiles_is_refused_and_queued(client, keys, platform):
    """The limit is on what one record links (policy.toml: "a record linking more existing
    profiles than this"), in a batch as in single requests."""
    with_guards(platform, max_profiles_per_merge=2)
    ids = [
        (await post(client, keys, source="crm", email="p0@example.com"))["profile_id"],
        (await post(client, keys, source="crm", phone="+7 916 555-44-33"))["profile_id"],
        (await post(client, keys, source="erp", external_id="E-7"))["profile_id"],
    ]
    three = {"email": "p0@example.com", "phone": "+7 916 555-44-33", "external_id": "E-7"}
    phone_only = {"source": "crm", "phone": "+7 916 555-44-33", "first_name": "Bob"}
    batch = await client.post(
        "/v1/profiles/batch",
        json={"records": [{"source": "erp", **three}, phone_only]},
        headers=keys["ingest"],
    )
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    # Stored in the profile its own external id names, and nothing was merged; the next
    # record, naming only the second customer, is that customer's (it used to be stored with
    # the first record, its phone not kept).
    assert [r["profile_id"] for r in results] == [ids[2], ids[1]]
    assert all(r["merged_profile_ids"] == [] for r in results)
    assert [e["field"] for e in results[0]["ignored"]] == ["email", "phone"]
    assert "ignored" not in results[1]
    assert await count(platform, merges) == 0
    for pid in ids:
        assert (await read(client, keys, pid))["profile_id"] == pid  # still their own
    assert (await read(client, keys, ids[1]))["first_name"] == "Bob"

    listed = await client.get("/v1/merge-reviews", headers=keys["admin"])
    assert listed.status_code == 200
    (review,) = listed.json()["items"]
    assert review["reason"] == {"code": "too_many_profiles", "profiles": 3, "limit": 2}
    assert review["profile_ids"] == [ids[2], ids[0], ids[1]] and review["attached_to"] == ids[2]
    assert review["status"] == "open" and review["source"] == "erp"
    forbidden = await client.get("/v1/merge-reviews", headers=keys["marketing"])
    assert forbidden.status_code == 403


async def test_a_batch_merges_profiles_as_its_records_would_one_after_another(client, keys):
    """Four customers, and four records each linking one of them to one new phone: one request
    each merges them two at a time (no record links more than two profiles), and so does one
    batch of the four. The batch used to count every profile its records connected as one
    merge, and refused it as a merge of four; a chunk of `cdp import` did the same, so the
    customers a file made depended on where its chunks began."""
    for way in ("one by one", "batch"):
        ids = [
            (await post(client, keys, source="crm", email=f"p{n}.{way[0]}@example.com"))[
                "profile_id"
            ]
            for n in range(4)
        ]
        phone = "+7 916 555-44-3" + ("3" if way == "batch" else "4")
        links = [
            {"source": "shop", "email": f"p{n}.{way[0]}@example.com", "phone": phone}
            for n in range(4)
        ]
        if way == "batch":
            r = await client.post(
                "/v1/profiles/batch", json={"records": links}, headers=keys["ingest"]
            )
            assert r.status_code == 200, r.text
            results = r.json()["results"]
        else:
            results = [await post(client, keys, **body) for body in links]
        assert {r["profile_id"] for r in results} == {ids[0]}, way
        assert [r["merged_profile_ids"] for r in results] == [[], *([x] for x in ids[1:])], way
        assert all("ignored" not in r for r in results), way
        for pid in ids:
            assert (await read(client, keys, pid))["profile_id"] == ids[0]
    assert (await client.get("/v1/merge-reviews", headers=keys["admin"])).json()["items"] == []


async def test_profiles_with_different_external_ids_of_one_source_are_not_merged(
    client, keys, platform
):
    first = await post(client, keys, source="crm", external_id="C-1", email="olga@example.com")
    other = await post(client, keys, source="crm", external_id="C-2", phone="+7 916 111-22-33")
    bridge = {"source": "shop", "email": "olga@example.com", "phone": "+7 916 111-22-33"}
    linked = await post(client, keys, **bridge)
    assert linked["profile_id"] == first["profile_id"]
    assert linked["merged_profile_ids"] == []
    assert linked["matched_on"] == ["email"]
    assert [e["field"] for e in linked["ignored"]] == ["phone"]
    again = await post(client, keys, **bridge)  # the same evidence again: one review, not two
    assert again["merged_profile_ids"] == []
    assert await count(platform, merge_reviews) == 1

    (review,) = (await client.get("/v1/merge-reviews", headers=keys["admin"])).json()["items"]
    assert review["reason"]["code"] == "conflicting_external_ids"
    assert review["reason"]["sources"] == ["crm"]
    assert review["profile_ids"] == [first["profile_id"], other["profile_id"]]

    # A reviewer may override the guard: the merge happens, provenance "reviewed".
    accepted = await client.post(
        f"/v1/merge-reviews/{review['review_id']}/accept", headers=keys["admin"]
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["merged_profile_ids"] == [other["profile_id"]]
    assert accepted.json()["status"] == "accepted"
    async with platform.db.read() as conn:
        provenance = (await conn.execute(select(merges.c.provenance))).scalars().all()
    assert provenance == ["reviewed"]
    twice = await client.post(
        f"/v1/merge-reviews/{review['review_id']}/accept", headers=keys["admin"]
    )
    assert twice.status_code == 409
    open_now = await client.get("/v1/merge-reviews?status=open", headers=keys["admin"])
    assert open_now.json()["items"] == []


async def test_external_ids_of_different_sources_still_merge(client, keys):
    crm = await post(client, keys, source="crm", external_id="C-9", email="ivan@example.com")
    shop = await post(client, keys, source="shop", external_id="S-9", phone="+7 916 999-88-77")
    linked = await post(
        client, keys, source="web", email="ivan@example.com", phone="+7 916 999-88-77"
    )
    assert linked["profile_id"] == crm["profile_id"]
    assert linked["merged_profile_ids"] == [shop["profile_id"]]
    assert "ignored" not in linked


async def test_the_merge_size_limit_comes_from_the_policy(client, keys, platform):
    with_guards(platform, max_profiles_per_merge=2)
    ids = [
        (await post(client, keys, source="crm", email="x@example.com"))["profile_id"],
        (await post(client, keys, source="shop", phone="+7 916 000-11-22"))["profile_id"],
        (await post(client, keys, source="erp", external_id="E-1"))["profile_id"],
    ]
    three = await post(
        client, keys, source="erp", external_id="E-1", email="x@example.com", phone="+79160001122"
    )
    # stored in the profile its own external id names, not merged
    assert three["profile_id"] == ids[2] and three["merged_profile_ids"] == []
    (review,) = (await client.get("/v1/merge-reviews", headers=keys["admin"])).json()["items"]
    assert review["reason"] == {"code": "too_many_profiles", "profiles": 3, "limit": 2}
    rejected = await client.post(
        f"/v1/merge-reviews/{review['review_id']}/reject", headers=keys["admin"]
    )
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    assert rejected.json()["decided_by"] == "admin-key"
    assert await count(platform, merges) == 0


async def test_two_customers_of_one_shop_meeting_in_one_batch_are_not_merged(client, keys):
    """The shop's customers C-1 and C-2, then a record carrying the email of one and the phone
    of the other: one request each refuses the merge and queues it for review, and so must a
    batch (or a chunk of `cdp import`) holding the three, which used to make them one profile."""
    records = [
        {"source": "crm", "external_id": "C-1", "email": "olga@example.com"},
        {"source": "crm", "external_id": "C-2", "phone": "+7 916 111-22-33"},
        {"source": "shop", "email": "olga@example.com", "phone": "+7 916 111-22-33"},
    ]
    r = await client.post("/v1/profiles/batch", json={"records": records}, headers=keys["ingest"])
    assert r.status_code == 200, r.text
    first, other, linked = r.json()["results"]
    assert first["created"] and other["created"]
    assert first["profile_id"] != other["profile_id"]
    assert linked["profile_id"] == first["profile_id"] and linked["merged_profile_ids"] == []
    assert [e["field"] for e in linked["ignored"]] == ["phone"]
    (review,) = (await client.get("/v1/merge-reviews", headers=keys["admin"])).json()["items"]
    assert review["reason"]["code"] == "conflicting_external_ids"
    assert review["profile_ids"] == [first["profile_id"], other["profile_id"]]
    assert review["review_id"] == linked["review_id"]


async def test_an_erased_customer_is_named_in_no_merge_review(client, keys, platform):
    """Пётр's own CRM record carries Olga's email: the merge is refused, and the review is
    stored on his profile (`attached_to`) naming hers. Her erasure deleted only the reviews
    stored on her profiles: this one stayed open in the list, naming her erased profile as half
    of a doubtful merge, and accepting it answered 410 for ever."""
    from consent.dsr.worker import run_pending

    olga = await post(client, keys, source="crm", external_id="C-1", email="olga@example.com")
    petr = await post(client, keys, source="crm", external_id="C-2", phone="+7 916 111-22-33")
    his = await post(client, keys, source="crm", external_id="C-2", email="olga@example.com")
    assert his["profile_id"] == petr["profile_id"] and his["review_id"]
    (review,) = (await client.get("/v1/merge-reviews", headers=keys["admin"])).json()["items"]
    assert review["attached_to"] == petr["profile_id"]
    assert olga["profile_id"] in review["profile_ids"]

    r = await client.post(
        "/v1/erasure-requests",
        json={"email": "olga@example.com", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    await run_pending(platform)
    for status in ("open", "accepted", "rejected"):
        listed = await client.get(f"/v1/merge-reviews?status={status}", headers=keys["admin"])
        assert listed.status_code == 200 and listed.json()["items"] == [], status
    assert await count(platform, merge_reviews) == 0
    gone = await client.post(
        f"/v1/merge-reviews/{review['review_id']}/accept", headers=keys["admin"]
    )
    assert gone.status_code == 404
    assert (await read(client, keys, petr["profile_id"]))["profile_id"] == petr["profile_id"]
