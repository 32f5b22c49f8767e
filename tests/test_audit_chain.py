"""The consent ledger's hash chain: any edit, deletion or reordering is caught at that entry;
an erasure is not an edit; concurrent writers never leave gaps."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, update

from cdp.db.tables import profile_keys
from cdp.platform import Platform
from consent import ledger
from consent.chain import HASHED_FIELDS, canonical_payload, entry_hash, verify_chain
from consent.dsr.worker import run_pending
from consent.ledger import Entry
from consent.tables import consent_ledger

ANNA = "anna.audit@example.com"
ANNA_PHONE = "+79161234567"
BOB = "bob.audit@example.com"
EVIDENCE = {
    "wording_id": "newsletter-v3",
    "method": "double_opt_in",
    "ip": "203.0.113.7",
    "user_agent": "Mozilla/5.0",
    "page_url": "https://shop.example/subscribe",
}


async def seed_ledger(client: Any, keys: dict) -> dict[str, str]:
    """Six ledger entries: Anna (email, phone, push), Bob, and an address never seen."""
    h = keys["ingest"]
    r = await client.post(
        "/v1/profiles",
        headers=h,
        json={
            "source": "crm",
            "external_id": "A-1",
            "email": ANNA,
            "phone": ANNA_PHONE,
            "first_name": "Анна",
            "country": "RU",
        },
    )
    assert r.status_code == 201, r.text
    anna = r.json()["profile_id"]
    consents = [
        {"email": ANNA, "channel": "email", "occurred_at": "2026-11-20T09:00:00Z"},
        {"phone": ANNA_PHONE, "channel": "sms", "occurred_at": "2026-11-20T10:00:00+03:00"},
        {"email": BOB, "channel": "email", "occurred_at": "2026-11-20T11:00:00.250000Z"},
    ]
    seqs = []
    for c in consents:
        body = {"purpose": "marketing", "status": "granted", "source": "web_form", **c}
        r = await client.post("/v1/consents", headers=h, json={**body, "evidence": EVIDENCE})
        assert r.status_code == 201, r.text
        seqs.append(r.json()["seq"])
    bob = r.json()["profile_id"]
    r = await client.post(
        "/v1/opt-outs",
        headers=h,
        json={
            "email": ANNA,
            "channel": "email",
            "source": "web",
            "occurred_at": "2026-11-21T08:00:00Z",
        },
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/v1/consents",
        headers=h,
        json={
            "profile_id": anna,
            "purpose": "marketing",
            "channel": "push",
            "status": "granted",
            "source": "app",
            "evidence": {"wording_id": "push-v1", "method": "checkbox"},
        },
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/opt-outs", headers=h, json={"email": "never.seen@example.com", "source": "web"}
    )
    assert r.status_code == 200, r.text
    assert seqs == [1, 2, 3]
    return {"anna": anna, "bob": bob}


async def verify(p: Platform):  # type: ignore[no-untyped-def]
    async with p.db.read() as conn:
        return await verify_chain(conn)


async def ledger_rows(p: Platform) -> list[dict[str, Any]]:
    async with p.db.read() as conn:
        rows = await conn.execute(select(consent_ledger).order_by(consent_ledger.c.seq))
        return [dict(r._mapping) for r in rows]


def altered(name: str, value: Any) -> Any:
    """A different value of the same type, as someone editing the database would write."""
    if name == "seq":
        return value + 1000
    if value is None:
        return {
            "profile_id": uuid.uuid4(),
            "address_bidx": bytes(32),
            "evidence": b"x",
            "evidence_key_id": 1,
            "via_profile": True,  # a profile's own entry (push), or one from before 0018
        }.get(name, "x")
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, bytes):
        return value[:-1] + bytes([value[-1] ^ 1])
    if isinstance(value, str):
        return value[:-1] + ("x" if value[-1] != "x" else "y")
    if isinstance(value, datetime):
        return value + timedelta(microseconds=1)
    if isinstance(value, uuid.UUID):
        return uuid.uuid4()
    raise AssertionError(f"no way to alter column {name} ({type(value).__name__})")


async def set_column(p: Platform, seq: int, name: str, value: Any) -> None:
    async with p.db.write() as conn:
        await conn.execute(
            update(consent_ledger).where(consent_ledger.c.seq == seq).values({name: value})
        )


async def test_a_fresh_ledger_verifies_and_the_fast_path_hashes_like_the_reference(
    platform, client, keys
):
    await seed_ledger(client, keys)
    async with platform.db.write() as conn:  # values the API does not produce
        await ledger.append(
            conn,
            platform.policy,
            [
                Entry(
                    profile_id=None,
                    subject_kind="email",
                    subject=bytes(range(32)),
                    purpose="service",
                    channel="email",
                    status="withdrawn",
                    occurred_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-7))),
                    source='импорт "crm"\n\t\x01\u2028/',
                    actor="operator ✓",
                ),
            ],
        )
    rows = await ledger_rows(platform)
    prev = bytes(32)
    for row in rows:  # the stored hashes are the reference encoding of what is read back
        assert row["prev_hash"] == prev
        assert entry_hash(prev, row) == row["hash"]
        prev = row["hash"]
    result = await verify(platform)
    assert result.ok and result.first_invalid_seq is None
    assert result.entries == len(rows) == 7
    assert result.head_hash == rows[-1]["hash"].hex()


async def test_changing_any_column_of_any_row_fails_at_that_entry(platform, client, keys):
    await seed_ledger(client, keys)
    rows = await ledger_rows(platform)
    columns = [c.name for c in consent_ledger.columns]
    for row in rows:
        seq = row["seq"]
        for name in columns:
            original = row[name]
            changed = altered(name, original)
            await set_column(platform, seq, name, changed)
            result = await verify(platform)
            assert not result.ok, (seq, name)
            assert result.first_invalid_seq == seq, (seq, name, result)
            assert result.entries == seq - 1
            await set_column(platform, changed if name == "seq" else seq, name, original)
        assert (await verify(platform)).ok


async def test_deleting_a_row_fails_at_that_entry(platform, client, keys):
    await seed_ledger(client, keys)
    rows = await ledger_rows(platform)
    for row in rows[:-1]:  # the last one is caught by a checkpoint (test_audit_checkpoints)
        async with platform.db.write() as conn:
            await conn.execute(delete(consent_ledger).where(consent_ledger.c.seq == row["seq"]))
        result = await verify(platform)
        assert (result.ok, result.first_invalid_seq, result.reason) == (
            False,
            row["seq"],
            "missing entry",
        )
        async with platform.db.write() as conn:
            await conn.execute(insert(consent_ledger).values(row))
    assert (await verify(platform)).ok


@pytest.mark.parametrize("first", [1, 3, 5])
async def test_reordering_rows_fails_at_the_first_moved_entry(platform, client, keys, first):
    await seed_ledger(client, keys)
    led = consent_ledger.c
    async with platform.db.write() as conn:  # swap entries `first` and `first + 1`
        await conn.execute(update(consent_ledger).where(led.seq == first).values(seq=-1))
        await conn.execute(update(consent_ledger).where(led.seq == first + 1).values(seq=first))
        await conn.execute(update(consent_ledger).where(led.seq == -1).values(seq=first + 1))
    result = await verify(platform)
    assert not result.ok
    assert result.first_invalid_seq == first


async def test_destroying_data_keys_leaves_the_chain_valid(platform, client, keys):
    ids = await seed_ledger(client, keys)
    before = await verify(platform)
    async with platform.db.write() as conn:  # crypto-shredding by hand
        await conn.execute(
            delete(profile_keys).where(profile_keys.c.profile_id == uuid.UUID(ids["bob"]))
        )
    platform.keys.forget(uuid.UUID(ids["bob"]))
    after = await verify(platform)
    assert after.ok and after.head_hash == before.head_hash


async def test_an_erasure_does_not_break_the_chain(platform, client, keys):
    ids = await seed_ledger(client, keys)
    before = await verify(platform)
    r = await client.post(
        "/v1/erasure-requests",
        headers=keys["compliance"],
        json={"email": ANNA, "requested_by": "customer"},
    )
    assert r.status_code == 202, r.text
    await run_pending(platform)  # in case the API left it to the worker
    r = await client.get(f"/v1/erasure-requests/{r.json()['request_id']}", headers=keys["admin"])
    assert r.json()["status"] == "completed"
    r = await client.get(f"/v1/profiles/{ids['anna']}", headers=keys["admin"])
    assert r.status_code == 410
    after = await verify(platform)
    assert after.ok, after
    assert after.entries >= before.entries
    rows = await ledger_rows(platform)
    assert rows[0]["evidence"] is not None  # the ciphertext stays; only its key is gone


async def test_concurrent_writers_leave_no_gaps(platform, client, keys):
    h = keys["ingest"]

    async def grant(i: int):  # type: ignore[no-untyped-def]
        return await client.post(
            "/v1/consents",
            headers=h,
            json={
                "email": f"c{i}@example.com",
                "purpose": "marketing",
                "channel": "email",
                "status": "granted",
                "source": "web_form",
                "evidence": {"wording_id": "w1", "method": "checkbox"},
            },
        )

    async def opt_out(i: int):  # type: ignore[no-untyped-def]
        return await client.post(
            "/v1/opt-outs", headers=h, json={"email": f"o{i}@example.com", "source": "web"}
        )

    answers = await asyncio.gather(*[grant(i) for i in range(30)], *[opt_out(i) for i in range(20)])
    assert [r.status_code for r in answers] == [201] * 30 + [200] * 20
    seqs = sorted(r.json()["seq"] for r in answers[:30])
    assert len(set(seqs)) == 30
    rows = await ledger_rows(platform)
    assert [r["seq"] for r in rows] == list(range(1, 51))
    result = await verify(platform)
    assert result.ok and result.entries == 50


async def test_verification_reports_chain_heads_at_requested_sizes(platform, client, keys):
    await seed_ledger(client, keys)
    rows = await ledger_rows(platform)
    async with platform.db.read() as conn:
        result = await verify_chain(conn, marks={0, 2, 6, 99})
        partial = await verify_chain(conn, after=(2, rows[1]["hash"]))
        wrong = await verify_chain(conn, after=(2, rows[0]["hash"]))
    assert result.heads == {0: "00" * 32, 2: rows[1]["hash"].hex(), 6: rows[5]["hash"].hex()}
    assert partial.ok and partial.entries == 6 and partial.head_hash == result.head_hash
    assert not wrong.ok and wrong.first_invalid_seq == 2


async def test_verification_reads_batches(platform, client, keys):
    await seed_ledger(client, keys)
    await set_column(platform, 5, "status", "withdrawn")
    async with platform.db.read() as conn:
        result = await verify_chain(conn, batch=2)
    assert (result.ok, result.first_invalid_seq, result.entries) == (False, 5, 4)


async def test_request_transitions_are_hash_chained(client, keys, platform):
    """Erasure-request history is chained too: rewriting a transition fails verification."""
    from sqlalchemy import text

    await client.post(
        "/v1/profiles", json={"source": "crm", "email": "dsr@example.com"}, headers=keys["ingest"]
    )
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": "dsr@example.com", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202
    ok = (await client.get("/v1/audit/verify", headers=keys["compliance"])).json()
    assert ok["ok"] is True and ok["dsr_transitions"]["entries"] >= 2
    async with platform.db.write() as conn:
        await conn.execute(text("UPDATE dsr_transitions SET actor = 'someone else' WHERE seq = 1"))
    bad = (await client.get("/v1/audit/verify", headers=keys["compliance"])).json()
    assert bad["ok"] is False
    assert bad["dsr_transitions"]["first_invalid_seq"] == 1


_HASHED_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**62), max_value=2**62),
    st.text(alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "Zs"))),
    st.binary(max_size=64),
    st.uuids(),
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()
    ),
)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(_HASHED_VALUES, min_size=len(HASHED_FIELDS), max_size=len(HASHED_FIELDS)))
def test_the_canonical_encoding_is_the_documented_one(values: list[Any]) -> None:
    """What an auditor re-implements from consent.chain's docstring: a compact JSON array of
    the fields in order, bytes as standard base64, datetimes in UTC with +00:00, UUIDs dashed
    and lower-case, the rest as itself. Any other encoding would make the published hashes
    unverifiable outside this code."""

    def documented(v: Any) -> Any:
        if isinstance(v, bytes):
            return base64.b64encode(v).decode()
        if isinstance(v, datetime):
            return v.astimezone(UTC).isoformat()
        if isinstance(v, uuid.UUID):
            return str(v).lower()
        return v

    row = dict(zip(HASHED_FIELDS, values, strict=True))
    expected = json.dumps(
        [documented(v) for v in values], separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert canonical_payload(row) == expected
    assert entry_hash(bytes(32), row) == hashlib.sha256(bytes(32) + expected).digest()
