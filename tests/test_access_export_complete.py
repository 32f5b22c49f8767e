"""The access export holds everything the platform keeps about the customer (API.md: "everything
held about the customer"), and nothing about anyone else (SQLite and PostgreSQL):

- the values merge snapshots keep for an unmerge (her surname before a merge overwrote it);
- match suggestions and merge reviews that name her profile, without the other profile;
- who received her data: segment exports that handed her out and webhook deliveries that
  carried her address (`recipients`);
- her erasure requests as the request's own page shows them: note and transitions.
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

from sqlalchemy import insert, select

from cdp.db.tables import identities, segment_export_chunks, segment_exports
from cdp.ids import new_id, utcnow
from cdp.matching.suggestions import run_matching
from cdp.matching.tables import merge_reviews, merge_snapshots
from cdp.profiles.merge import SURVIVOR_PLACE
from consent.dsr import access
from tests.test_erasure import EMAIL, PHONE, create_anna
from tests.test_webhooks_delivery import drain, subscribe

RU = {"field": "country", "op": "eq", "value": "RU"}


async def export_of(client, keys, **ident) -> dict:  # type: ignore[no-untyped-def]
    r = await client.post("/v1/access-requests", json=ident, headers=keys["compliance"])
    assert r.status_code == 200, r.text
    return r.json()


def dumped(body: dict) -> str:
    return json.dumps(body, ensure_ascii=False, default=str)


async def ingest(client, keys, **body) -> dict:  # type: ignore[no-untyped-def]
    r = await client.post("/v1/profiles", json=body, headers=keys["ingest"])
    assert r.status_code in (200, 201), r.text
    return r.json()


# --- merge snapshots ------------------------------------------------------------------------
async def test_access_export_shows_the_surname_kept_in_the_merge_snapshot(client, keys, platform):
    """create_anna: the CRM record says last_name "Стирающаяся", the shop record (merged in
    later) says "Ст.". The profile now shows "Ст."; the full surname is still held, readable
    under her live data key, in merge_snapshots (for an unmerge)."""
    ids = await create_anna(client, keys)
    async with platform.db.read() as conn:
        (snap,) = (await conn.execute(select(merge_snapshots))).all()
        cipher = await platform.keys.reader_cipher(conn, uuid.UUID(ids["survivor"]))
    held = cipher.decrypt_bytes(SURVIVOR_PLACE, snap.survivor_state).decode()
    assert "Стирающаяся" in held  # the database holds it, readable
    body = await export_of(client, keys, email=EMAIL)
    assert body["profile"]["last_name"] == "Ст."
    assert "Стирающаяся" in dumped(body)

    sides = {s["as"]: s for s in body["merge_snapshots"]}
    assert set(sides) == {"survivor", "absorbed"}
    survivor, absorbed = sides["survivor"], sides["absorbed"]
    assert survivor["merge_id"] == absorbed["merge_id"] == str(snap.merge_id)
    assert survivor["profile_id"] == ids["survivor"] and absorbed["profile_id"] == ids["absorbed"]
    assert survivor["readable"] and absorbed["readable"]
    # as survivor: her values from before the merge, not what the merge wrote over them
    assert survivor["values"]["fields"]["last_name"] == "Стирающаяся"
    assert "Ст." not in survivor["values"]["fields"].values()
    assert survivor["values"]["traits"] == {"vip": True}
    assert {s["source"] for s in survivor["values"]["sources"]} == {"crm"}
    # as absorbed: what her shop record brought
    assert absorbed["values"]["fields"]["last_name"] == "Ст."
    assert absorbed["values"]["fields"]["country"] == "RU"
    assert [s["source"] for s in absorbed["values"]["sources"]] == ["shop"]


async def test_no_snapshot_of_an_undone_merge_is_left_to_show_the_other_customer(client, keys):
    from tests.test_consent_attribution import mentions_other, merged_then_split
    from tests.test_unmerge import ANNA, OTHER

    anna, other = await merged_then_split(client, keys)
    for ident, them, their in ((ANNA["email"], other, OTHER), ("+79161234567", anna, ANNA)):
        body = await export_of(
            client, keys, **({"email": ident} if "@" in ident else {"phone": ident})
        )
        text = dumped(body)
        assert them not in text
        assert their["last_name"] not in text
        assert body["merge_snapshots"] == []
    assert not mentions_other(await export_of(client, keys, email=ANNA["email"]))


# --- match suggestions and merge reviews ------------------------------------------------------
async def test_access_export_names_match_suggestions_and_merge_reviews(client, keys, platform):
    ids = await create_anna(client, keys)
    look_alike = await ingest(  # the matcher proposes her as a duplicate of this one
        client,
        keys,
        source="shop2",
        email="anna.latin@example.com",
        first_name="Anna",
        last_name="Stirayushchayasya",
        birth_date="1990-05-01",
        postal_address="ul. Zabveniya 7 kv 42",
        postcode="101000",
        city="Moscow",
    )
    assert (await run_matching(platform, 0.3)).stored == 1
    second = await ingest(  # a second CRM customer number: the guard queues a merge review
        client, keys, source="crm", external_id="C-2002", phone="+79161230099"
    )
    r = await ingest(client, keys, source="web", email=EMAIL, phone="+79161230099")
    review_id = r["review_id"]
    (suggestion,) = (
        await client.get("/v1/match-suggestions?status=open", headers=keys["admin"])
    ).json()["items"]
    assert ids["survivor"] in suggestion["profile_ids"]

    body = await export_of(client, keys, email=EMAIL)
    [s] = body["match_suggestions"]
    assert s["suggestion_id"] == suggestion["suggestion_id"]
    assert s["profile_ids"] == [ids["survivor"]]
    assert s["status"] == "open" and s["score"] == suggestion["score"]
    assert s["reasons"] == suggestion["reasons"] and s["created_at"] and s["decided_at"] is None
    [review] = body["merge_reviews"]
    assert review["review_id"] == review_id
    assert review["profile_ids"] == [ids["survivor"]]
    assert review["status"] == "open" and review["reason"]["code"] == "conflicting_external_ids"
    assert review["created_at"] and review["decided_at"] is None
    text = dumped(body)
    for theirs in (look_alike["profile_id"], second["profile_id"], "anna.latin@example.com"):
        assert theirs not in text  # never the other profile, nor its values
    assert "Stirayushchayasya" not in text

    # decided: the times come with it
    r = await client.post(
        f"/v1/match-suggestions/{s['suggestion_id']}/reject", headers=keys["admin"]
    )
    assert r.status_code == 200, r.text
    [s] = (await export_of(client, keys, email=EMAIL))["match_suggestions"]
    assert s["status"] == "rejected" and s["decided_at"]


async def test_a_review_stored_on_the_other_profile_that_names_hers_is_in_her_export(
    client, keys, platform
):
    """Another customer's record (his own CRM number) carries her email: the merge is refused
    and the record stays on his profile (`attached_to`), but the review names hers too."""
    ids = await create_anna(client, keys)
    his = await ingest(client, keys, source="crm", external_id="C-3003", phone="+79161230077")
    r = await ingest(client, keys, source="crm", external_id="C-3003", email=EMAIL)
    assert r["profile_id"] == his["profile_id"] and r["review_id"]
    async with platform.db.read() as conn:
        row = (await conn.execute(select(merge_reviews))).one()
    assert str(row.attached_to) == his["profile_id"]
    assert ids["survivor"] in row.profile_ids

    body = await export_of(client, keys, email=EMAIL)
    [review] = body["merge_reviews"]
    assert review["review_id"] == r["review_id"]
    assert review["profile_ids"] == [ids["survivor"]]
    assert his["profile_id"] not in dumped(body)
    [his_review] = (await export_of(client, keys, phone="+79161230077"))["merge_reviews"]
    assert his_review["profile_ids"] == [his["profile_id"]]


# --- who received her data ---------------------------------------------------------------------
async def test_access_export_names_who_her_address_was_handed_to(client, keys, platform, receiver):
    """A segment export handed out her email and first name; a webhook delivery carried her
    phone to a sending tool. Her export says so, with the export, the segment, the key and the
    time, and the subscription, the event's kind and the time; the other customer in the same
    export and his own delivery are not in it."""
    ids = await create_anna(client, keys)
    other = await ingest(
        client,
        keys,
        source="crm",
        email="boris@example.com",
        phone="+79161230055",
        country="RU",
        consents=[
            {
                "purpose": "marketing",
                "channel": "email",
                "status": "granted",
                "evidence": {"wording_id": "newsletter-v3", "method": "checkbox"},
            }
        ],
    )
    hook = await subscribe(client, keys, receiver, include_address=True, description="sending tool")
    for phone in (PHONE, "+79161230055"):
        r = await client.post(
            "/v1/opt-outs",
            json={"phone": phone, "channel": "sms", "source": "crm"},
            headers=keys["ingest"],
        )
        assert r.status_code == 200
    await drain(platform)
    sent = [q.payload.get("address") for q in receiver.requests]
    assert PHONE in sent and "+79161230055" in sent
    seg = await client.post(
        "/v1/segments",
        headers=keys["marketing"],
        json={"name": "ru", "purpose": "marketing", "channel": "email", "rules": RU},
    )
    sid = seg.json()["id"]
    export = await client.get(f"/v1/segments/{sid}/export", headers=keys["marketing"])
    assert export.status_code == 200
    assert EMAIL in export.text and "boris@example.com" in export.text
    eid = export.headers["x-export-id"]

    body = await export_of(client, keys, email=EMAIL)
    [handed] = body["recipients"]["segment_exports"]
    assert handed["export_id"] == eid and handed["segment_id"] == sid
    assert handed["exported_by"] == "marketing-key" and handed["started_at"]
    assert handed["purpose"] == "marketing" and handed["channel"] == "email"
    assert handed["addresses"] == [EMAIL]
    deliveries = body["recipients"]["webhook_deliveries"]
    mine = [q.payload["event_id"] for q in receiver.requests if q.payload.get("address") == PHONE]
    assert sorted(d["event_id"] for d in deliveries) == sorted(mine)
    assert {d["event_kind"] for d in deliveries} == {
        "opt_out",
        "consent.withdrawn",
        "suppression.added",
    }
    for delivery in deliveries:
        assert delivery["subscription_id"] == hook["id"]
        assert delivery["subscription"] == "sending tool"
        assert delivery["status_code"] == 200 and delivery["at"]
    assert "webhook_delivery" in {a["action"] for a in body["access_log"]}
    text = dumped(body)
    for theirs in ("boris@example.com", "+79161230055", other["profile_id"]):
        assert theirs not in text
    assert receiver.url not in text  # a subscription's URL may carry the receiver's token

    his = await export_of(client, keys, email="boris@example.com")
    assert [h["addresses"] for h in his["recipients"]["segment_exports"]] == [["boris@example.com"]]
    assert len(his["recipients"]["webhook_deliveries"]) == 3
    assert ids["survivor"] not in dumped(his)


async def test_export_records_are_searched_page_by_page_for_her_ids(
    client, keys, platform, monkeypatch
):
    """The export records have no index by customer: they are searched a page of chunks at a
    time. A record is hers by her profile id or by the id of her address's identity (handed
    out while the address sat on another profile, merged by mistake); 16 bytes of hers that
    straddle two records are not a record of hers; an export that finished before her first
    profile existed is not searched."""
    monkeypatch.setattr(access, "SCAN_PAGE", 2)
    ids = await create_anna(client, keys)
    pid = uuid.UUID(ids["survivor"])
    async with platform.db.read() as conn:
        email_iid = (
            await conn.execute(
                select(identities.c.id).where(
                    identities.c.profile_id == pid, identities.c.kind == "email"
                )
            )
        ).scalar_one()

    def record(profile: uuid.UUID, identity: uuid.UUID | None) -> bytes:
        return profile.bytes + (identity.bytes if identity else bytes(16))

    def filler(n: int) -> bytes:
        return b"".join(record(uuid.uuid4(), uuid.uuid4()) for _ in range(n))

    now = utcnow()
    stranger = uuid.uuid4()
    exports = {
        "old": (now - timedelta(days=400), now - timedelta(days=399)),  # before she existed
        "running": (now, None),  # the client went away: no finished_at
        "straddling": (now, now),
        "plain": (now, now),
    }
    chunks = {
        "old": [filler(3) + record(pid, None)],
        # her email, handed out on another profile, in the 4th of 5 chunks
        "running": [
            filler(5),
            filler(5),
            filler(5),
            filler(2) + record(stranger, email_iid),
            filler(5),
        ],
        # her profile id split across two records: bytes 8..24 of a record pair
        "straddling": [filler(1) + bytes(8) + pid.bytes + bytes(8) + filler(1)],
        "plain": [filler(2) + record(pid, None) + filler(2), filler(3)],
    }
    export_ids = {}
    async with platform.db.write() as conn:
        for name, (started, finished) in exports.items():
            export_ids[name] = eid = new_id()
            await conn.execute(
                insert(segment_exports).values(
                    id=eid,
                    segment_id=uuid.uuid4(),
                    actor="marketing-key",
                    role="marketing",
                    purpose="marketing",
                    channel="email",
                    format="ndjson",
                    started_at=started,
                    finished_at=finished,
                    rows=0,
                )
            )
            for seq, members in enumerate(chunks[name]):
                await conn.execute(
                    insert(segment_export_chunks).values(
                        export_id=eid, seq=seq, rows=len(members) // 32, members=members
                    )
                )
    body = await export_of(client, keys, email=EMAIL)
    found = {h["export_id"]: h for h in body["recipients"]["segment_exports"]}
    assert set(found) == {str(export_ids["running"]), str(export_ids["plain"])}
    assert found[str(export_ids["running"])]["addresses"] == [EMAIL]
    assert found[str(export_ids["plain"])]["addresses"] == []  # push / messenger: no address
    assert str(stranger) not in dumped(body)


# --- her erasure requests ----------------------------------------------------------------------
async def test_access_export_shows_the_note_and_history_of_her_erasure_request(
    client, keys, monkeypatch
):
    import api.controllers.dsr as dsr_api

    async def later(*_a, **_k):  # type: ignore[no-untyped-def]
        return None

    monkeypatch.setattr(dsr_api, "run_one", later)  # the request waits (received)
    await create_anna(client, keys)
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": EMAIL, "requested_by": "customer", "note": "Анна called from her work line"},
        headers=keys["compliance"],
    )
    rid = r.json()["request_id"]
    r = await client.post(
        f"/v1/erasure-requests/{rid}/extend",
        json={"reason": "identity check by post"},
        headers=keys["compliance"],
    )
    assert r.status_code == 200, r.text
    detail = (await client.get(f"/v1/erasure-requests/{rid}", headers=keys["compliance"])).json()
    assert detail["note"] == "Анна called from her work line"  # held, readable

    body = await export_of(client, keys, email=EMAIL)
    (req,) = body["erasure_requests"]
    assert req["request_id"] == rid
    assert req["note"] == "Анна called from her work line"
    assert [t["event"] for t in req["transitions"]] == ["created", "extension"]
    assert req["transitions"][1]["reason"] == "identity check by post"
    assert req["extended"] is True and req["due_at"] == detail["due_at"]
    assert {k: v for k, v in req.items() if k != "overdue"} == {
        k: v for k, v in detail.items() if k != "overdue"
    }
