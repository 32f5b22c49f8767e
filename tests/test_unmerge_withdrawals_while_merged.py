"""Consent recorded on a wrongly merged profile binds the absorbed customer after the unmerge
(found by a model-based test of merges, unmerges and erasures on 2026-12-07; these are its
minimised cases):

- a withdrawal of every channel recorded while merged reaches the addresses the absorbed
  customer gains later (it was carried on by the holder's profile id alone);
- a push withdrawal recorded while merged binds the absorbed customer also where a later grant
  superseded it on the merged profile, or where it was older than the state in force there;
- undoing two merges at once does not take the first undo's own withdrawal for a customer's.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from cdp.platform import Platform
from cdp.profiles.identifiers import parse_identifier
from cdp.profiles.service import upsert_one
from cdp.profiles.unmerge import unmerge
from consent.schemas import ConsentIn, EvidenceIn
from consent.service import address_decision, consent_view, record_consent
from tests.test_consent_model_merges import members

BASE = datetime(2026, 1, 1, tzinfo=UTC)
EVIDENCE = EvidenceIn(wording_id="nl-v1", method="checkbox")
_ns = itertools.count(1)


def _at(minute: int) -> datetime:
    return BASE + timedelta(minutes=minute)


async def _members_of(p: Platform, channel: str, pid: uuid.UUID) -> list:  # type: ignore[type-arg]
    return [i for i in await members(p, channel) if i.profile_id == str(pid)]


@pytest.mark.parametrize(
    "merged",
    [
        False,
        True,
    ],
)
async def test_withdrawal_of_everything_while_merged_reaches_later_addresses(platform, merged):
    """Bob says "unsubscribe from everything" (a withdrawal of every channel naming his
    profile, as the preference centre records it). It must reach an email learned to be his
    later (README: "so is one learned after any withdrawal of '*'"), and an unmerge leaves a
    withdrawal recorded while merged binding both halves (cdp.profiles.unmerge: fail closed).
    Said while Bob was wrongly merged into Anna, then undone, it does not reach his later
    email: a CRM record brings it with an older grant and he is handed out for advertising."""
    p = platform
    n = next(_ns)
    anna, bob, bob2 = f"anna{n}@example.com", f"+7916{n % 100000:05d}17", f"bob{n}@example.com"
    await upsert_one(p, {"source": "crm", "email": anna}, "t")
    bob_id = (await upsert_one(p, {"source": "crm", "phone": bob}, "t")).profile_id
    if merged:  # a record wrongly links them: Bob (the newer) is merged into Anna
        out = await upsert_one(p, {"source": "crm", "email": anna, "phone": bob}, "t")
        assert out.merged_profile_ids == [bob_id]
    bob_ident = parse_identifier(p.policy, p.keys.indexer, profile_id=str(bob_id))
    body = ConsentIn(
        purpose="marketing", channel="*", status="withdrawn", source="t", occurred_at=_at(10)
    )
    await record_consent(p, body, bob_ident, "t")
    if merged:
        async with p.db.write() as conn:
            await unmerge(conn, p, bob_id, "t")
    # the CRM's record of Bob brings his other email, with a grant from before his withdrawal
    grant = {"purpose": "marketing", "channel": "email", "status": "granted"}
    grant |= {"occurred_at": _at(3).isoformat(), "evidence": {"wording_id": "nl-v1"}}
    out = await upsert_one(
        p, {"source": "crm", "phone": bob, "email": bob2, "consents": [grant]}, "t"
    )
    assert out.profile_id == bob_id
    bidx = p.keys.indexer.email(bob2)
    async with p.db.read() as conn:
        decision = await address_decision(conn, p, "email", bidx, "marketing", "email")
    handed = await _members_of(p, "email", bob_id)
    assert decision is not None and handed == [], (decision, handed)


@pytest.mark.parametrize(
    "case",
    [
        "withdrawn",
        "then granted",
        "older",
    ],
)
async def test_push_withdrawal_while_merged_binds_the_absorbed_customer(platform, case):
    """While Bob is wrongly merged into Anna, a push withdrawal is recorded on the merged
    profile (it may be Bob's: a sender naming his profile id reaches the merged profile). Once
    undone, it binds both halves (cdp.profiles.unmerge: "A withdrawal recorded on the merged
    profile after the merge applies to both halves (fail closed)"), and a grant recorded while
    merged counts for neither (README, unmerge). So Bob must not be contactable by push:

    - "withdrawn": Bob granted push before the merge; the withdrawal is the last word. Holds.
    - "then granted": the same, then a push grant on the merged profile (it may be Anna's). The
      unmerge sees only the merged profile's current state, a grant, and gives Bob his grant
      from before the merge back: he is handed out for push advertising.
    - "older": Anna granted push before the merge; the withdrawal, dated before her grant,
      changes nothing on the merged profile. Bob gets no state at all from the unmerge, and a
      CRM record bringing him back with an undated push grant (which never undoes a
      withdrawal) makes him contactable."""
    p = platform
    n = next(_ns)
    anna, bob = f"anna{n}@example.com", f"+7916{n % 100000:05d}17"
    anna_id = (await upsert_one(p, {"source": "crm", "email": anna}, "t")).profile_id
    bob_id = (await upsert_one(p, {"source": "crm", "phone": bob}, "t")).profile_id

    async def push(pid: uuid.UUID, status: str, minute: int) -> None:
        body = ConsentIn(
            purpose="marketing",
            channel="push",
            status=status,
            source="t",
            occurred_at=_at(minute),
            evidence=EVIDENCE if status == "granted" else None,
        )
        await record_consent(
            p, body, parse_identifier(p.policy, p.keys.indexer, profile_id=str(pid)), "t"
        )

    if case == "older":
        await push(anna_id, "granted", 8)  # Anna's own, before the merge
    else:
        await push(bob_id, "granted", 1)  # Bob's own, before the merge
    out = await upsert_one(p, {"source": "crm", "email": anna, "phone": bob}, "t")
    assert out.merged_profile_ids == [bob_id]
    await push(bob_id, "withdrawn", 5)  # names Bob: recorded on the merged profile
    if case == "then granted":
        await push(anna_id, "granted", 8)  # on the merged profile: counts for neither
    async with p.db.write() as conn:
        await unmerge(conn, p, bob_id, "t")
    if case == "older":  # the CRM's record of Bob, with an undated grant of push
        grant = {"purpose": "marketing", "channel": "push", "status": "granted"}
        grant["evidence"] = {"wording_id": "nl-v1"}  # type: ignore[assignment]
        await upsert_one(p, {"source": "crm", "phone": bob, "consents": [grant]}, "t")
    async with p.db.read() as conn:
        view = await consent_view(conn, p, bob_id)
    handed = await _members_of(p, "push", bob_id)
    assert not view.contactable["marketing"]["push"] and handed == [], handed


@pytest.mark.parametrize(
    "merges",
    [
        1,
        2,
    ],
)
async def test_undoing_two_merges_keeps_the_absorbed_customers_own_push_grant(platform, merges):
    """Bob granted push before he was wrongly merged into Anna. While merged, only a push grant
    is recorded on the merged profile, which counts for neither once undone; Bob's states are
    those from before the merge (README, unmerge). Undoing that one merge gives his grant back.
    Where a third customer was merged into Anna too and the unmerge of Anna undoes both, Bob
    ends withdrawn: the safe side, but a consent Bob gave is lost without his word."""
    p = platform
    n = next(_ns)
    anna = f"anna{n}@example.com"
    bob, carl = f"+7916{n % 100000:05d}17", f"+7916{n % 100000:05d}27"
    anna_id = (await upsert_one(p, {"source": "crm", "email": anna}, "t")).profile_id
    bob_id = (await upsert_one(p, {"source": "crm", "phone": bob}, "t")).profile_id
    await upsert_one(p, {"source": "crm", "phone": carl}, "t")

    async def push(pid: uuid.UUID, minute: int) -> None:
        ident = parse_identifier(p.policy, p.keys.indexer, profile_id=str(pid))
        body = ConsentIn(
            purpose="marketing",
            channel="push",
            status="granted",
            source="t",
            occurred_at=_at(minute),
            evidence=EVIDENCE,
        )
        await record_consent(p, body, ident, "t")

    await push(bob_id, 1)  # Bob's own, before any merge
    await upsert_one(p, {"source": "crm", "email": anna, "phone": bob}, "t")
    if merges == 2:
        await upsert_one(p, {"source": "crm", "email": anna, "phone": carl}, "t")
    await push(anna_id, 5)  # on the merged profile: counts for neither once undone
    async with p.db.write() as conn:
        done = await unmerge(conn, p, anna_id, "t")
        assert len(done.merge_ids) == merges
        view = await consent_view(conn, p, bob_id)
    assert view.contactable["marketing"]["push"]
    assert len(await _members_of(p, "push", bob_id)) == 1
