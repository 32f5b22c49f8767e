"""An officer's reason for rejecting or extending an erasure request is free text that may name
the customer: it is kept encrypted under the customer's data key, bound to its transition, and
goes with their erasure; the request history's hash chain covers the ciphertext, so it still
verifies afterwards. The platform's own reasons are fixed texts and stay plain."""

from __future__ import annotations

import uuid

from sqlalchemy import select, update

from cdp.ids import utcnow
from cdp.profiles.identifiers import parse_identifier
from consent.dsr.chain import append_transition, verify_transitions
from consent.dsr.requests import SEALED_REASON, submit_erasure
from consent.dsr.worker import run_pending
from consent.dsr_tables import dsr_transitions
from tests.helpers import holds_plaintext, raw_database_bytes
from tests.test_erasure import EMAIL, PHONE, create_anna

NAMING_HER = f"caller could not confirm {EMAIL} / {PHONE}, Анна Стирающаяся"


async def held_request(  # type: ignore[no-untyped-def]
    platform, email: str = EMAIL, note: str | None = None
) -> uuid.UUID:
    """A request that stays open (no worker has run yet)."""
    ident = parse_identifier(platform.policy, platform.keys.indexer, email=email)
    submitted = await submit_erasure(
        platform, ident, requested_by="customer", actor="test", note=note
    )
    return submitted.request_id


async def verified(client, keys) -> dict:  # type: ignore[no-untyped-def]
    body = (await client.get("/v1/audit/verify", headers=keys["compliance"])).json()
    return body["dsr_transitions"]


async def test_a_rejection_reason_naming_the_customer_is_erased_with_her(client, keys, platform):
    await create_anna(client, keys)
    rid = await held_request(platform)
    r = await client.post(
        f"/v1/erasure-requests/{rid}/reject",
        json={"reason": NAMING_HER},
        headers=keys["compliance"],
    )
    assert r.status_code == 200, r.text
    last = r.json()["transitions"][-1]
    assert (last["reason"], last["reason_encrypted"], last["reason_readable"]) == (
        NAMING_HER,
        True,
        True,
    )
    raw = await raw_database_bytes(platform)
    assert not holds_plaintext(raw, "could not confirm")  # never stored in plain text

    r = await client.post(  # she asks again, proven this time: erased
        "/v1/erasure-requests",
        json={"email": EMAIL, "requested_by": "customer"},
        headers=keys["compliance"],
    )
    done = await client.get(
        f"/v1/erasure-requests/{r.json()['request_id']}", headers=keys["compliance"]
    )
    assert done.json()["status"] == "completed"
    raw = await raw_database_bytes(platform)
    left = [s for s in (EMAIL, PHONE, "Стирающаяся") if holds_plaintext(raw, s)]
    assert left == []

    # the history still verifies, and says the reason is unreadable now
    dsr = await verified(client, keys)
    assert dsr["ok"] is True and dsr["entries"] >= 5, dsr
    rejected = (await client.get(f"/v1/erasure-requests/{rid}", headers=keys["admin"])).json()
    created, last = rejected["transitions"]
    assert (last["event"], last["to"], last["actor"]) == ("status", "rejected", "compliance-key")
    assert (last["reason"], last["reason_encrypted"], last["reason_readable"]) == (
        None,
        True,
        False,
    )
    # the platform's own reasons are fixed texts: plain, and readable after the erasure
    assert (created["reason"], created["reason_encrypted"]) == (
        "erasure requested by the customer",
        False,
    )
    completed = done.json()["transitions"]
    assert completed[-1]["reason"] == "customer erased" and completed[-1]["reason_readable"]


async def test_an_extension_reason_is_sealed_and_read_back_while_the_key_exists(
    client, keys, platform
):
    await create_anna(client, keys)
    rid = await held_request(platform)
    r = await client.post(
        f"/v1/erasure-requests/{rid}/extend",
        json={"reason": f"backups to search for {EMAIL}"},
        headers=keys["compliance"],
    )
    assert r.status_code == 200, r.text
    async with platform.db.read() as conn:
        row = (
            await conn.execute(
                select(dsr_transitions).where(dsr_transitions.c.event == "extension")
            )
        ).one()
    assert row.reason == SEALED_REASON and EMAIL.encode() not in row.reason_sealed
    assert row.reason_owner is not None and row.reason_key_id is not None
    body = (await client.get(f"/v1/erasure-requests/{rid}", headers=keys["admin"])).json()
    assert body["transitions"][-1]["reason"] == f"backups to search for {EMAIL}"
    # reading it is written to the access log, named by the request
    log = (await client.get("/v1/audit/access-log", headers=keys["admin"])).json()["items"]
    assert any(
        e["action"] == "erasure_request.read_note" and e["object_id"] == str(rid) for e in log
    ), log

    await run_pending(platform)  # erased: the reason goes with her key
    body = (await client.get(f"/v1/erasure-requests/{rid}", headers=keys["admin"])).json()
    extension = next(t for t in body["transitions"] if t["event"] == "extension")
    assert extension["reason"] is None and extension["reason_readable"] is False
    assert (await verified(client, keys))["ok"] is True


async def test_a_sealed_reason_is_bound_to_its_transition_and_hashed(client, keys, platform):
    """Moved to another transition it does not open; changed or removed, verification fails."""
    await create_anna(client, keys)
    rid = await held_request(platform)
    await client.post(
        f"/v1/erasure-requests/{rid}/extend",
        json={"reason": "first, about her"},
        headers=keys["compliance"],
    )
    await client.post(
        f"/v1/erasure-requests/{rid}/reject",
        json={"reason": "second, about her"},
        headers=keys["compliance"],
    )
    t = dsr_transitions.c
    async with platform.db.read() as conn:
        ext, rej = (
            await conn.execute(
                select(t.seq, t.reason_sealed).where(t.reason_owner.is_not(None)).order_by(t.seq)
            )
        ).all()
    async with platform.db.write() as conn:  # the extension's ciphertext in the rejection
        await conn.execute(
            update(dsr_transitions).where(t.seq == rej.seq).values(reason_sealed=ext.reason_sealed)
        )
    body = (await client.get(f"/v1/erasure-requests/{rid}", headers=keys["admin"])).json()
    assert [x["reason"] for x in body["transitions"]] == [
        "erasure requested by the customer",
        "first, about her",
        None,  # not "first, about her": the ciphertext names its transition
    ]
    dsr = await verified(client, keys)
    assert (dsr["ok"], dsr["first_invalid_seq"], dsr["reason"]) == (
        False,
        rej.seq,
        "hash mismatch",
    )
    async with platform.db.write() as conn:  # put back: verifies again
        await conn.execute(
            update(dsr_transitions).where(t.seq == rej.seq).values(reason_sealed=rej.reason_sealed)
        )
    assert (await verified(client, keys))["ok"] is True
    for removed in ({"reason_sealed": None}, {"reason_sealed": None, "reason_owner": None}):
        async with platform.db.write() as conn:
            await conn.execute(
                update(dsr_transitions)
                .where(t.seq == ext.seq)
                .values(reason_key_id=None, **removed)
            )
        dsr = await verified(client, keys)
        assert (dsr["ok"], dsr["first_invalid_seq"]) == (False, ext.seq), removed


async def test_transitions_recorded_before_0017_keep_their_plain_reason_and_verify(
    client, keys, platform
):
    """A transition written as before 0017 (no sealed reason: its hash covers the plain text)
    verifies next to sealed ones, and reads as it was written."""
    await create_anna(client, keys)
    rid = await held_request(platform)
    async with platform.db.write() as conn:
        await append_transition(
            conn,
            {
                "id": uuid.uuid4(),
                "request_id": rid,
                "event": "extension",
                "from_status": "received",
                "to_status": "received",
                "at": utcnow(),
                "actor": "compliance-key",
                "reason": "written before 0017",
                "due_at": utcnow(),
            },
        )
    await client.post(
        f"/v1/erasure-requests/{rid}/reject",
        json={"reason": "written after 0017"},
        headers=keys["compliance"],
    )
    async with platform.db.read() as conn:
        assert (await verify_transitions(conn)).ok
    body = (await client.get(f"/v1/erasure-requests/{rid}", headers=keys["admin"])).json()
    assert [(x["reason"], x["reason_encrypted"]) for x in body["transitions"][1:]] == [
        ("written before 0017", False),
        ("written after 0017", True),
    ]


async def test_the_holders_reasons_survive_an_unmerge_and_the_erasure_of_the_other_customer(
    client, keys, platform
):
    """An unmerge gives the holder a new data key (cdp.profiles.rekey), and the erasure of the
    customer given back destroys the old one: a reason sealed under the old key stays readable
    from its copy under the new key (`rekey_reasons`), and the chain is untouched."""
    from tests.test_unmerge import ANNA, OTHER, WRONG_LINK, post

    anna = (await post(client, keys, "/v1/profiles", ANNA))["profile_id"]
    other = (await post(client, keys, "/v1/profiles", OTHER))["profile_id"]
    assert (await post(client, keys, "/v1/profiles", WRONG_LINK))["merged_profile_ids"] == [other]
    rid = await held_request(platform, ANNA["email"], note="asked by phone, Анна")
    r = await client.post(
        f"/v1/erasure-requests/{rid}/reject",
        json={"reason": "Анна could not prove it was her"},
        headers=keys["compliance"],
    )
    assert r.status_code == 200, r.text
    r = await client.post(f"/v1/profiles/{anna}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/erasure-requests",
        json={"profile_id": other, "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202
    await run_pending(platform)
    body = (await client.get(f"/v1/erasure-requests/{rid}", headers=keys["admin"])).json()
    assert body["transitions"][-1]["reason"] == "Анна could not prove it was her"
    assert body["note"] == "asked by phone, Анна"  # re-encrypted under her new key
    assert (await verified(client, keys))["ok"] is True
    # and with her own erasure it goes
    r = await client.post(
        "/v1/erasure-requests",
        json={"profile_id": anna, "requested_by": "customer"},
        headers=keys["compliance"],
    )
    await run_pending(platform)
    body = (await client.get(f"/v1/erasure-requests/{rid}", headers=keys["admin"])).json()
    assert body["transitions"][-1]["reason_readable"] is False
    assert (await verified(client, keys))["ok"] is True
