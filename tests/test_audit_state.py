"""Verification checks the derived consent state and the suppression list against the ledger:
tampering with what segments read is caught, and no legitimate operation (opt-outs, merges,
unmerges, erasures, the preference centre, channel "*") ever raises a false alarm."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, update

from cdp.ids import utcnow
from cdp.platform import Platform
from consent.audit import parallel
from consent.audit.state import check_state
from consent.audit.verify import snapshot
from consent.subjects import profile_subject
from consent.tables import address_erasures, consent_ledger, consent_state, suppressions
from consent.tokens import TokenClaims, issue
from tests.helpers import sql
from tests.test_audit_checkpoints import cli
from tests.test_console import EN, signed_in
from tests.test_preferences import choices_of, form_for

GRANT = {"wording_id": "newsletter-v3", "method": "double_opt_in"}
ANNA, ANNA_PHONE = "anna.state@example.com", "+79161112233"
BOB, BOB_PHONE = "bob.state@example.com", "+79164445566"
GHOST = "ghost.state@example.com"
SEGMENT = {
    "purpose": "marketing",
    "channel": "email",
    "rules": {"field": "country", "op": "eq", "value": "RU"},
}


async def post(client, keys, path: str, body: dict, role: str = "ingest") -> Any:  # type: ignore[no-untyped-def]
    r = await client.post(path, json=body, headers=keys[role])
    assert r.status_code in (200, 201, 202), r.text
    return r.json()


async def verified(client, keys) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    assert r.status_code == 200, r.text
    return r.json()


async def assert_verifies(client, keys) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    body = await verified(client, keys)
    assert body["state"]["examples"] == [], body["state"]
    assert body["ok"] is True and body["state_mismatches"] == 0, body
    return body


async def profile(client, keys, **record: Any) -> str:  # type: ignore[no-untyped-def]
    return (await post(client, keys, "/v1/profiles", {"source": "crm", **record}))["profile_id"]


async def consent(client, keys, status: str = "granted", **body: Any) -> dict:  # type: ignore[no-untyped-def]
    evidence = {"evidence": GRANT} if status == "granted" else {}
    full = {"purpose": "marketing", "source": "web_form", "status": status, **evidence, **body}
    return await post(client, keys, "/v1/consents", full)


def granted(channel: str, occurred_at: str | None = None) -> dict[str, Any]:
    c = {"purpose": "marketing", "channel": channel, "status": "granted", "evidence": GRANT}
    return c | ({"occurred_at": occurred_at} if occurred_at else {})


async def opted_out_anna(client, keys) -> str:  # type: ignore[no-untyped-def]
    """Anna granted marketing by email, sms and push, then opted her email out; an address
    never seen before was opted out too."""
    anna = await profile(
        client, keys, email=ANNA, phone=ANNA_PHONE, country="RU", consents=[granted("email")]
    )
    await consent(client, keys, phone=ANNA_PHONE, channel="sms")
    await consent(client, keys, profile_id=anna, channel="push")
    await post(client, keys, "/v1/opt-outs", {"email": ANNA, "channel": "email", "source": "esp"})
    await post(client, keys, "/v1/opt-outs", {"email": GHOST, "source": "esp"})
    await assert_verifies(client, keys)
    return anna


async def opt_out_seqs(p: Platform) -> list[int]:
    async with p.db.read() as conn:
        rows = await conn.execute(
            select(consent_ledger.c.seq)
            .where(consent_ledger.c.method == "opt_out")
            .order_by(consent_ledger.c.seq)
        )
        return list(rows.scalars())


async def members(client, keys) -> set[str]:  # type: ignore[no-untyped-def]
    body = await post(client, keys, "/v1/segments/query", SEGMENT, role="marketing")
    return {m["profile_id"] for m in body["items"]}


def assert_no_personal_data(text: str, p: Platform) -> None:
    for email in (ANNA, GHOST):
        assert email not in text
        assert p.keys.indexer.email(email).hex() not in text


async def test_the_reviewers_tampering_is_caught(client, keys, platform):
    anna = await opted_out_anna(client, keys)
    before = await verified(client, keys)
    assert anna not in await members(client, keys)

    await sql(
        platform,
        "update consent_state set status='granted' "
        "where status='withdrawn' and purpose='marketing'",
    )
    await sql(platform, "delete from suppressions")
    assert anna in await members(client, keys)  # what the tampering does to a segment

    body = await verified(client, keys)
    assert body["ok"] is False
    assert (body["entries"], body["head_hash"]) == (before["entries"], before["head_hash"])
    assert body["first_invalid_seq"] is None  # the ledger itself is intact
    assert body["state_mismatches"] == 4
    assert body["state"]["by_kind"] == {
        "state_differs": 2,  # Anna's and the never-seen address's marketing email
        "state_missing": 0,
        "state_extra": 0,
        "suppression_unbacked": 0,
        "suppression_missing": 2,
        "erasure_unbacked": 0,
    }
    opt_outs = await opt_out_seqs(platform)
    assert {e["seq"] for e in body["state"]["examples"]} == set(opt_outs)
    flipped = next(e for e in body["state"]["examples"] if e["kind"] == "state_differs")
    assert flipped["stored"]["status"] == "granted"
    assert flipped["expected"]["status"] == "withdrawn"
    assert "consent state disagrees with the ledger" in body["reason"]
    assert_no_personal_data(str(body), platform)


async def test_deleting_one_suppression_is_caught(client, keys, platform):
    await opted_out_anna(client, keys)
    ghost = platform.keys.indexer.email(GHOST)
    async with platform.db.write() as conn:
        await conn.execute(delete(suppressions).where(suppressions.c.bidx == ghost))
    body = await verified(client, keys)
    assert (body["ok"], body["state_mismatches"]) == (False, 1)
    (example,) = body["state"]["examples"]
    assert example == {
        "kind": "suppression_missing",
        "seq": (await opt_out_seqs(platform))[-1],
        "purpose": "marketing",
        "channel": "*",
    }


async def test_the_suppression_of_a_withdrawal_of_an_address_no_one_holds_is_checked(
    client, keys, platform
):
    """A withdrawal through POST /v1/consents naming an address no customer holds suppresses
    it, as an opt-out of it does (consent.service): the check accepts that suppression, and
    catches its deletion as it catches an opt-out's."""
    await opted_out_anna(client, keys)
    stray = "stray.state@example.com"
    await consent(client, keys, "withdrawn", email=stray, channel="*", source="esp")
    await assert_verifies(client, keys)
    async with platform.db.write() as conn:
        await conn.execute(
            delete(suppressions).where(suppressions.c.bidx == platform.keys.indexer.email(stray))
        )
    body = await verified(client, keys)
    assert (body["ok"], body["state_mismatches"]) == (False, 1)
    (example,) = body["state"]["examples"]
    assert (example["kind"], example["channel"]) == ("suppression_missing", "*")


async def test_deleting_a_consent_state_row_is_caught(client, keys, platform):
    await opted_out_anna(client, keys)
    anna = platform.keys.indexer.email(ANNA)
    async with platform.db.write() as conn:
        await conn.execute(delete(consent_state).where(consent_state.c.subject == anna))
    body = await verified(client, keys)
    assert (body["ok"], body["state_mismatches"]) == (False, 1)
    (example,) = body["state"]["examples"]
    assert example["kind"] == "state_missing"
    assert (example["purpose"], example["channel"]) == ("marketing", "email")
    assert example["expected"]["status"] == "withdrawn"
    assert example["seq"] == example["expected"]["seq"] == (await opt_out_seqs(platform))[0]


async def test_flipping_push_consent_is_caught_with_or_without_a_merge(client, keys, platform):
    anna = await opted_out_anna(client, keys)
    bob = await profile(client, keys, email=BOB, phone=BOB_PHONE, country="RU")
    await consent(client, keys, "withdrawn", profile_id=bob, channel="push")
    carl = await profile(client, keys, email="carl.state@example.com", country="RU")
    await consent(client, keys, "withdrawn", profile_id=carl, channel="messenger")
    merged = await post(
        client, keys, "/v1/profiles", {"source": "callcenter", "email": BOB, "phone": ANNA_PHONE}
    )
    assert merged["merged_profile_ids"] == [bob] or merged["merged_profile_ids"] == [anna]
    await assert_verifies(client, keys)

    survivor = uuid.UUID(merged["profile_id"])
    async with platform.db.write() as conn:
        for pid, channel in ((survivor, "push"), (uuid.UUID(carl), "messenger")):
            await conn.execute(
                update(consent_state)
                .where(consent_state.c.subject == profile_subject(pid))
                .where(consent_state.c.channel == channel)
                .values(status="granted")
            )
    body = await verified(client, keys)
    assert body["ok"] is False
    assert body["state"]["by_kind"]["state_differs"] == 2
    assert {(e["channel"], e["stored"]["status"]) for e in body["state"]["examples"]} == {
        ("push", "granted"),
        ("messenger", "granted"),
    }


async def test_rows_that_no_ledger_entry_accounts_for_are_caught(client, keys, platform):
    await opted_out_anna(client, keys)
    stranger = platform.keys.indexer.email("stranger.state@example.com")
    now = utcnow()
    async with platform.db.write() as conn:
        await conn.execute(
            insert(consent_state).values(
                subject=stranger,
                purpose="marketing",
                channel="email",
                status="granted",
                since=now,
                seq=1,
                source="forged",
            )
        )
        await conn.execute(
            insert(suppressions).values(
                bidx=stranger,
                purpose="marketing",
                channel="*",
                reason="erasure",
                source="erasure",
                at=now,
                created_at=now,
            )
        )
    body = await verified(client, keys)
    assert body["ok"] is False
    kinds = {e["kind"]: e for e in body["state"]["examples"]}
    assert set(kinds) == {"state_extra", "suppression_unbacked"}
    assert kinds["state_extra"]["stored"]["seq"] == 1
    assert kinds["suppression_unbacked"]["seq"] is None  # the ledger never saw the address
    assert kinds["suppression_unbacked"]["reason"] == "erasure"


async def test_a_broken_chain_is_not_compared_with_the_state(client, keys, platform):
    await opted_out_anna(client, keys)
    async with platform.db.write() as conn:
        await conn.execute(
            update(consent_ledger).where(consent_ledger.c.seq == 2).values(source="forged")
        )
    body = await verified(client, keys)
    assert (body["ok"], body["first_invalid_seq"], body["state_mismatches"]) == (False, 2, None)
    assert body["state"]["checked"] is False


async def test_the_cli_and_the_console_report_the_mismatches(client, keys, platform):
    await opted_out_anna(client, keys)
    ok = await asyncio.to_thread(cli, platform, "verify")
    assert ok.returncode == 0, ok.stdout
    assert "4 consent states and 2 suppressions agree with the ledger" in ok.stdout

    anna = platform.keys.indexer.email(ANNA)
    async with platform.db.write() as conn:
        await conn.execute(
            update(consent_state).where(consent_state.c.subject == anna).values(status="granted")
        )
    failed = await asyncio.to_thread(cli, platform, "verify")
    assert failed.returncode == 1
    seq = (await opt_out_seqs(platform))[0]
    summary, example = failed.stdout.splitlines()
    assert summary == (
        "FAILED: the derived consent state disagrees with the ledger: 1 mismatches "
        "(1 state_differs)"
    )
    assert example.startswith("  state_differs: marketing/email: consent_state holds granted")
    assert f"(seq {seq}), the ledger implies withdrawn since " in example
    assert example.endswith(f"(seq {seq})")
    assert_no_personal_data(failed.stdout + failed.stderr, platform)

    await signed_in(client, keys)
    page = await client.get("/console/verify", headers=EN)
    assert "does NOT verify" in page.text
    assert "1 disagreements" in page.text
    assert "state_differs" in page.text and f"granted (Seq {seq})" in page.text


async def test_a_large_ledger_gets_the_same_verdicts_with_the_chain_in_a_child_process(
    client, keys, platform, monkeypatch
):
    await opted_out_anna(client, keys)
    sequential = await verified(client, keys)
    monkeypatch.setattr(parallel, "PARALLEL_FROM", 1)  # as from 200,000 entries
    assert await verified(client, keys) == sequential

    async with platform.db.write() as conn:  # an address's and a profile's state flipped
        await conn.execute(
            update(consent_state)
            .where(consent_state.c.status == "withdrawn")
            .values(status="granted")
        )
        await conn.execute(
            update(consent_state)
            .where(consent_state.c.channel == "push")
            .values(status="withdrawn")
        )
    tampered = await verified(client, keys)
    monkeypatch.setattr(parallel, "PARALLEL_FROM", 10**9)
    assert tampered == await verified(client, keys)
    assert tampered["state"]["by_kind"]["state_differs"] == 3
    assert {e["channel"] for e in tampered["state"]["examples"]} == {"email", "push"}

    monkeypatch.setattr(parallel, "PARALLEL_FROM", 1)
    async with platform.db.write() as conn:
        await conn.execute(
            update(consent_ledger).where(consent_ledger.c.seq == 3).values(source="forged")
        )
    broken = await verified(client, keys)
    assert (broken["ok"], broken["first_invalid_seq"], broken["reason"]) == (
        False,
        3,
        "hash mismatch",
    )
    assert broken["state_mismatches"] is None


async def test_concurrent_writes_never_look_like_mismatches(client, keys, platform):
    await opted_out_anna(client, keys)

    async def writes() -> None:
        for i in range(15):
            email = f"busy{i}.state@example.com"
            await profile(client, keys, email=email, country="RU", consents=[granted("email")])
            await post(client, keys, "/v1/opt-outs", {"email": email, "source": "esp"})

    async def checks() -> list[int]:
        found = []
        for _ in range(15):
            async with snapshot(platform.db) as conn:
                found.append((await check_state(conn, platform.policy, chunk=2)).mismatches)
        return found

    _, mismatches = await asyncio.gather(writes(), checks())
    assert set(mismatches) == {0}
    await assert_verifies(client, keys)


async def test_a_busy_legitimate_history_verifies(client, keys, platform):
    """Every operation that changes consent state or suppressions, checked as it happens."""
    # Anna and Bob, with address and profile-keyed consents; a record links them: Bob merges
    # into Anna and his withdrawal of push wins over her grant.
    anna = await profile(
        client,
        keys,
        email=ANNA,
        phone=ANNA_PHONE,
        country="RU",
        consents=[granted("email", "2026-10-01T09:00:00Z"), granted("sms", "2026-10-01T09:00:00Z")],
    )
    await consent(client, keys, profile_id=anna, channel="push", occurred_at="2026-10-02T09:00:00Z")
    bob = await profile(
        client, keys, email=BOB, phone=BOB_PHONE, country="RU", consents=[granted("email")]
    )
    when = {"occurred_at": "2026-10-05T09:00:00Z"}
    await consent(client, keys, "withdrawn", profile_id=bob, channel="push", **when)
    await consent(client, keys, profile_id=bob, channel="messenger", **when)
    linked = await post(
        client, keys, "/v1/profiles", {"source": "callcenter", "email": ANNA, "phone": BOB_PHONE}
    )
    assert (linked["profile_id"], linked["merged_profile_ids"]) == (anna, [bob])
    await assert_verifies(client, keys)

    # A grant older than Bob's withdrawal changes nothing on the merged profile; the unmerge
    # then restores Anna's own earlier grant.
    late = await consent(
        client, keys, profile_id=anna, channel="push", occurred_at="2026-10-03T09:00:00Z"
    )
    assert late["effective"] is False
    await assert_verifies(client, keys)
    await post(client, keys, f"/v1/profiles/{anna}/unmerge", {}, role="admin")
    await assert_verifies(client, keys)

    # Opt-outs: by API (channel "*"), of an address never seen (then imported with an older
    # grant, then granted anew), one-click, SMS STOP.
    await post(client, keys, "/v1/opt-outs", {"email": ANNA, "source": "esp"})
    await post(client, keys, "/v1/opt-outs", {"email": GHOST, "source": "esp"})
    await profile(client, keys, email=GHOST, consents=[granted("email", "2025-01-01T00:00:00Z")])
    await consent(client, keys, email=GHOST, channel="email")
    token = issue(
        platform.keys.token_key,
        TokenClaims(
            uuid.UUID(bob), "email", platform.keys.indexer.email(BOB), "marketing", "email"
        ),
    )
    assert (await client.post(f"/v1/unsubscribe/{token}")).status_code == 200
    await post(client, keys, "/v1/inbound/sms", {"from": ANNA_PHONE, "text": "STOP"})
    await assert_verifies(client, keys)

    # The preference centre: a withdrawal, and "unsubscribe from everything" (channel "*").
    eve_email = "eve.state@example.com"
    eve = await profile(client, keys, email=eve_email, country="RU", consents=[granted("email")])
    frank_email = "frank.state@example.com"
    frank = await profile(client, keys, email=frank_email, jurisdiction="US-CA")
    for pid, email in ((eve, eve_email), (frank, frank_email)):
        claims = TokenClaims(
            uuid.UUID(pid), "email", platform.keys.indexer.email(email), "marketing", "email"
        )
        centre = f"/preferences/{issue(platform.keys.token_key, claims)}"
        if pid == eve:
            page = await client.get(centre)
            allow = {k for k, on in choices_of(page.text).items() if on} - {"marketing:email"}
            r = await client.post(centre, data=form_for(page.text, allow))
        else:
            r = await client.post(f"{centre}/opt-out", data={"lang": "en"})
        assert r.status_code == 303, r.text
    await assert_verifies(client, keys)

    # Withdrawals through the consent API suppress nothing, whatever method they name; an
    # older grant is kept but changes nothing.
    await consent(client, keys, "withdrawn", phone=BOB_PHONE, purpose="service", channel="*")
    await consent(
        client, keys, "withdrawn", email=BOB, channel="email", evidence={"method": "opt_out"}
    )
    old = await consent(
        client, keys, phone=ANNA_PHONE, channel="sms", occurred_at="2020-01-01T00:00:00Z"
    )
    assert old["effective"] is False
    await assert_verifies(client, keys)

    # A merge that stays, then an opt-out naming the absorbed profile.
    carl = await profile(client, keys, email="carl.state@example.com", country="RU")
    await consent(client, keys, profile_id=carl, channel="push")
    dora = await profile(client, keys, phone="+79167778899", country="RU")
    await consent(client, keys, "withdrawn", profile_id=dora, channel="messenger")
    await post(
        client,
        keys,
        "/v1/profiles",
        {"source": "shop", "email": "carl.state@example.com", "phone": "+79167778899"},
    )
    await post(client, keys, "/v1/opt-outs", {"profile_id": dora, "source": "support"})
    await assert_verifies(client, keys)

    # Erasures: a customer whose phone had opted out, re-imported with a stale grant and then
    # granted anew; and a merged customer.
    gina_email, gina_phone = "gina.state@example.com", "+79160001122"
    gina = await profile(
        client,
        keys,
        email=gina_email,
        phone=gina_phone,
        country="RU",
        consents=[granted("email"), granted("sms")],
    )
    await consent(client, keys, profile_id=gina, channel="push")
    await post(client, keys, "/v1/inbound/sms", {"from": gina_phone, "text": "STOP"})
    stale = "2026-09-01T00:00:00Z"
    await post(
        client,
        keys,
        "/v1/erasure-requests",
        {"email": gina_email, "requested_by": "customer"},
        role="compliance",
    )
    await assert_verifies(client, keys)
    await profile(client, keys, email=gina_email, consents=[granted("email", stale)])
    await consent(client, keys, email=gina_email, channel="email")
    await post(
        client,
        keys,
        "/v1/erasure-requests",
        {"email": "carl.state@example.com", "requested_by": "operator"},
        role="compliance",
    )
    body = await assert_verifies(client, keys)
    async with platform.db.read() as conn:  # a grant kept from the state is left out
        kept_out = (
            await conn.execute(
                select(func.count())
                .select_from(consent_ledger)
                .where(consent_ledger.c.status == "granted", consent_ledger.c.effective.is_(False))
            )
        ).scalar_one()
    assert body["state"]["compared"]["entries"] == body["entries"] - kept_out

    # The same answer when every query is read two rows at a time.
    async with snapshot(platform.db) as conn:
        small = await check_state(conn, platform.policy, chunk=2)
    assert small.to_json() == body["state"]


async def _withdrawn_anna(client, keys, platform):  # type: ignore[no-untyped-def]
    email = "anna.g@example.com"
    anna = await profile(client, keys, email=email, country="RU")
    await consent(client, keys, email=email, channel="email", occurred_at="2025-01-10T09:00:00Z")
    await consent(
        client, keys, "withdrawn", email=email, channel="email", occurred_at="2025-01-10T10:00:00Z"
    )
    assert (await verified(client, keys))["ok"] is True
    assert anna not in await members(client, keys)
    return anna, platform.keys.indexer.email(email)


async def test_a_grant_written_outside_the_chain_is_tampering(client, keys, platform):
    """A row numbered below the chain's first entry was never hashed by the scan, yet the state
    check read it: a forged grant with the state set to match verified as ok."""
    anna, bidx = await _withdrawn_anna(client, keys, platform)
    async with platform.db.write() as conn:
        grant = (
            await conn.execute(select(consent_ledger).where(consent_ledger.c.status == "granted"))
        ).one()
        at = utcnow() - timedelta(minutes=1)  # a grant newer than the withdrawal
        forged = dict(grant._mapping) | {
            "seq": -7,
            "event_id": uuid.uuid4(),
            "occurred_at": at,
            "recorded_at": at,
        }
        await conn.execute(insert(consent_ledger).values(**forged))
        await conn.execute(
            update(consent_state)
            .where(consent_state.c.subject == bidx)
            .values(status="granted", since=at, seq=-7)
        )
    assert anna in await members(client, keys)  # the forgery took effect
    report = await verified(client, keys)
    assert report["ok"] is False, report


async def test_another_spelling_of_a_stored_time_is_tampering(client, keys, platform):
    """SQLite keeps times as text. A grant's time respelled ("T" for the space) hashed as
    before, but as text it sorted after the withdrawal: made current, it verified as ok."""
    if not platform.db.is_sqlite:
        pytest.skip("PostgreSQL keeps times typed")
    anna, bidx = await _withdrawn_anna(client, keys, platform)
    [(seq, at)] = await sql(
        platform, "SELECT seq, occurred_at FROM consent_ledger WHERE status = 'granted'"
    )
    respelled = at.replace(" ", "T")
    await sql(
        platform, "UPDATE consent_ledger SET occurred_at = :t WHERE seq = :s", t=respelled, s=seq
    )
    await sql(
        platform,
        "UPDATE consent_state SET status = 'granted', since = :t, seq = :s WHERE subject = :b",
        t=respelled,
        s=seq,
        b=bidx,
    )
    assert anna in await members(client, keys)  # the respelled grant took effect
    report = await verified(client, keys)
    assert report["ok"] is False, report


async def test_an_erasure_time_written_by_hand_is_caught(client, keys, platform):
    """The audit reads take the entries recorded on an address up to its erasure for the
    erased customer's (address_erasures). A row written there by hand, for no erasure, hid
    Anna's grant and opt-out from her consent events and evidence bundle while verification
    said ok; it is now a mismatch, reported by its time alone."""
    await opted_out_anna(client, keys)
    shown = {"email": ANNA, "channel": "email"}
    r = await client.get("/v1/audit/consent-events", params=shown, headers=keys["compliance"])
    assert len(r.json()["items"]) == 2  # her grant and her opt-out
    async with platform.db.write() as conn:
        await conn.execute(
            insert(address_erasures).values(bidx=platform.keys.indexer.email(ANNA), at=utcnow())
        )
    r = await client.get("/v1/audit/consent-events", params=shown, headers=keys["compliance"])
    assert r.json()["items"] == []  # what the row does
    body = await verified(client, keys)
    assert body["ok"] is False and body["first_invalid_seq"] is None
    assert body["state_mismatches"] == 1 and body["state"]["by_kind"]["erasure_unbacked"] == 1
    assert body["state"]["examples"][0]["kind"] == "erasure_unbacked"
    assert_no_personal_data(str(body), platform)
    out = cli(platform, "verify")
    assert out.returncode == 1 and "erasure_unbacked" in out.stdout, out.stdout
    assert_no_personal_data(out.stdout, platform)
    await signed_in(client, keys)
    page = await client.get("/console/verify", headers=EN)
    assert "erasure_unbacked" in page.text
