"""For random customer bases, the segment SQL agrees with `consent.rule.decide` run in Python.

Seeded random histories of grants, withdrawals, opt-outs (per channel and "*"), merges and
never-seen addresses, at times that often tie. The oracle reads the raw tables, applies
`decide` to every address, and picks the most recently confirmed contactable one; members
(walked in small pages) and stats must match it exactly, for every purpose and channel.
With a consent validity period (`consent_valid_days`), the times also fall a second either
side of minutes and the answer is asked at a minute's boundary of the period, so grants lapse
one second before it, exactly at it and a second after it.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from cdp.db.tables import identities, profiles
from cdp.errors import DomainError
from cdp.profiles.identifiers import parse_identifier
from cdp.profiles.service import upsert_batch
from cdp.segments.members import Definition, members_page
from cdp.segments.rules import AllOf
from cdp.segments.service import definition_stats
from consent.optout import opt_out
from consent.rule import Facts, decide
from consent.schemas import ConsentIn, EvidenceIn
from consent.service import record_consent
from consent.subjects import profile_subject
from consent.suppressions import latest_for_profile, latest_suppression, suppressed_at
from consent.tables import consent_state
from tests.test_rule import with_validity

T0 = datetime(2026, 6, 1, tzinfo=UTC)
JURISDICTIONS = ["RU", "EU", "US", "US-CA"]
PURPOSES = ["marketing", "service"]
CHANNELS = ["email", "sms", "phone", "push", "messenger"]


def phone(n: int) -> str:
    return f"+7916{n:07d}"


async def random_base(p, rng: random.Random) -> list[str]:  # type: ignore[no-untyped-def]
    """Create customers; return the addresses (emails and phones) they and strangers use."""
    records: list[dict] = []
    addresses: list[str] = []
    for c in range(24):
        base = {
            "source": "crm",
            "external_id": f"C{c}",
            "jurisdiction": rng.choice(JURISDICTIONS),
            "first_name": f"N{c}",
        }
        emails = [f"c{c}e{e}@ex.com" for e in range(rng.choice([0, 1, 1, 2, 3]))]
        phones = [phone(c * 10 + f) for f in range(rng.choice([0, 0, 1, 2]))]
        records.append(base)
        records += [base | {"email": e} for e in emails] + [base | {"phone": f} for f in phones]
        addresses += emails + phones
    items = await upsert_batch(p, records, "test")
    assert all(i.error is None for i in items)
    return [*addresses, "stranger@ex.com", phone(9_999_999)]


async def random_history(  # type: ignore[no-untyped-def]
    p, rng: random.Random, addresses: list[str], *, seconds: bool = False
) -> None:
    """`seconds`: times a second either side of the minutes too."""
    for step in range(70):
        address = rng.choice(addresses)
        by = {"email": address} if "@" in address else {"phone": address}
        ident = parse_identifier(p.policy, p.keys.indexer, **by)
        when = T0 + timedelta(minutes=rng.randrange(8))
        if seconds:
            when += timedelta(seconds=rng.choice([-1, 0, 1]))
        purpose = rng.choice(PURPOSES)
        action = rng.choice(["grant", "grant", "withdraw", "opt_out"])
        if step in (30, 50):  # a record naming two customers' addresses merges them
            email = rng.choice([a for a in addresses if "@" in a])
            tel = rng.choice([a for a in addresses if "@" not in a])
            await upsert_batch(p, [{"source": "crm", "email": email, "phone": tel}], "t")
            continue
        try:
            if action == "opt_out":
                channel = rng.choice([*CHANNELS, "*", "*"])
                await opt_out(
                    p,
                    ident,
                    purpose=purpose,
                    channel=channel,
                    source="esp",
                    actor="t",
                    occurred_at=when,
                )
                continue
            status = "granted" if action == "grant" else "withdrawn"
            channel = rng.choice([*CHANNELS, "*"] if status == "withdrawn" else CHANNELS)
            body = ConsentIn(
                purpose=purpose,
                channel=channel,
                status=status,
                source="web",
                occurred_at=when,
                evidence=EvidenceIn(wording_id="w1", method="checkbox"),
            )
            await record_consent(p, body, ident, "t")
        except DomainError:
            pass  # e.g. a phone-only customer granting email: refused, nothing stored


async def oracle(p, purpose: str, channel: str, now: datetime):  # type: ignore[no-untyped-def]
    """(members {profile_id: address}, reasons {profile_id: reason|None}) by `decide` at
    `now`."""
    kind = p.policy.address_kind(channel)
    async with p.db.read() as conn:
        people = (
            await conn.execute(
                select(profiles.c.id, profiles.c.jurisdiction).where(profiles.c.status == "active")
            )
        ).all()
        addrs = (
            await conn.execute(
                select(identities).where(
                    identities.c.kind.in_(("email", "phone") if kind == "profile" else (kind,))
                )
            )
        ).all()
        states = {
            (r.subject, r.purpose, r.channel): r for r in await conn.execute(select(consent_state))
        }
        supp = await suppressed_at(conn, [a.bidx for a in addrs])
        ciphers = await p.keys.ciphers(conn, [pid for pid, _ in people])
    by_profile: dict[uuid.UUID, list] = {}
    for a in addrs:
        by_profile.setdefault(a.profile_id, []).append(a)
    members, reasons = {}, {}
    for pid, jurisdiction in people:
        if kind == "profile":
            state = states.get((profile_subject(pid), purpose, channel))
            held = [a.bidx for a in by_profile.get(pid, [])]
            facts = Facts(
                "active",
                jurisdiction,
                True,
                state and state.status,
                state and state.since,
                latest_for_profile(supp, held, purpose, channel),
            )
            reason = decide(p.policy, purpose, channel, facts, now=now)
            reasons[pid] = reason
            if reason is None:
                members[pid] = str(pid)
            continue
        mine = by_profile.get(pid, [])
        # most recently confirmed first, then last seen, created, id (all descending)
        mine.sort(
            key=lambda a: (
                a.confirmed_at is not None,
                a.confirmed_at or T0,
                a.last_seen_at,
                a.created_at,
                a.id,
            ),
            reverse=True,
        )
        judged = []
        for a in mine:
            state = states.get((a.bidx, purpose, channel))
            facts = Facts(
                "active",
                jurisdiction,
                True,
                state and state.status,
                state and state.since,
                latest_suppression(supp, a.bidx, purpose, channel),
            )
            judged.append((decide(p.policy, purpose, channel, facts, now=now), a))
        if not judged:
            reasons[pid] = decide(
                p.policy,
                purpose,
                channel,
                Facts("active", jurisdiction, False, None, None, None),
                now=now,
            )
            continue
        ok = [a for reason, a in judged if reason is None]
        reasons[pid] = None if ok else judged[0][0]
        if ok:
            members[pid] = ciphers[pid].decrypt("identities.value", ok[0].value)
    return members, reasons


@pytest.mark.parametrize(
    ("seed", "validity"), [(1, False), (2, False), (3, False), (4, True), (5, True)]
)
async def test_segment_sql_agrees_with_decide(platform, seed, validity):
    """`validity`: marketing consent valid for 1 day in every jurisdiction, asked at the
    moment grants made at T0 + 4 minutes reach it."""
    rng = random.Random(seed)
    await random_history(platform, rng, await random_base(platform, rng), seconds=validity)
    now = datetime.now(UTC)
    if validity:
        platform.policy = with_validity(platform.policy, 1)
        now = T0 + timedelta(days=1, minutes=4)
    checked_members = 0
    lapsed = 0
    for purpose in PURPOSES:
        for channel in CHANNELS:
            want_members, want_reasons = await oracle(platform, purpose, channel, now)
            d = Definition(purpose, channel, AllOf(()))
            got, after = {}, None
            while True:
                async with platform.db.read() as conn:
                    page = await members_page(conn, platform, d, after=after, limit=5, now=now)
                for m in page.items:
                    assert uuid.UUID(m.profile_id) not in got
                    got[uuid.UUID(m.profile_id)] = m.address
                if page.next_after is None:
                    break
                after = page.next_after
            assert got == want_members, (purpose, channel)
            checked_members += len(got)

            stats = await definition_stats(platform, d, now=now)
            assert stats.matched == len(want_reasons)
            assert stats.contactable == len(want_members)
            want = {}
            for reason in want_reasons.values():
                if reason is not None:
                    want[reason] = want.get(reason, 0) + 1
            assert {k: v for k, v in stats.excluded.items() if v} == want, (purpose, channel)
            if validity:  # members the period leaves out: asked before any grant lapsed
                before = T0 - timedelta(days=1)
                lapsed += len((await oracle(platform, purpose, channel, before))[0])
                lapsed -= len(want_members)
    assert checked_members > (20 if validity else 50)  # the random base is not degenerate
    assert lapsed > 0 if validity else lapsed == 0  # and some grants did lapse
