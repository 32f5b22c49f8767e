"""The decision matrix of POLICIES.md: for every jurisdiction, purpose, channel and consent
situation, who may be contacted. The expected answer is written out here from POLICIES.md's
table (not read from policies/), and both the domain rule (`consent_view`, which runs
`consent.rule.decide`) and the segment SQL (members and stats) must give it.

Purposes: service, marketing and the operator-added sale_share (POLICIES.md names it for
California only; elsewhere the shipped files say opt-in, and US federal says nothing: "no").
"""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from api.controllers.preferences import GPC_METHOD, gpc_applies
from cdp.errors import InvalidInput
from cdp.events import record_event
from cdp.profiles.identifiers import Identifier, parse_identifier
from cdp.profiles.schemas import EventIn
from cdp.profiles.service import upsert_batch
from cdp.segments.members import Definition, members_page
from cdp.segments.rules import AllOf
from cdp.segments.service import definition_stats
from consent.optout import opt_out
from consent.policy import GPC_PURPOSE
from consent.schemas import ConsentIn, EvidenceIn
from consent.service import consent_view, record_consent
from tests.test_rule import with_soft_opt_in, with_validity

JURISDICTIONS = ("RU", "EU", "US-CA", "US")
PURPOSES = ("service", "marketing", "sale_share")
CHANNELS = ("email", "sms", "phone", "push", "messenger")
ADDRESS = {
    "email": "email",
    "sms": "phone",
    "phone": "phone",
    "push": "email",
    "messenger": "email",
}

# POLICIES.md, "Defaults by jurisdiction": the basis by purpose, "*" for every other channel.
# None: the policy says nothing, so nobody is contactable (fail closed).
BASIS: dict[str, dict[str, dict[str, str | None]]] = {
    "RU": {
        "service": {"*": "contract"},  # the customer may refuse a channel
        "marketing": {"*": "opt_in"},  # per address (and per advertiser)
        "sale_share": {"*": "opt_in"},  # not in POLICIES.md: the shipped default, fail closed
    },
    "EU": {
        "service": {"*": "contract"},
        "marketing": {"*": "opt_in"},  # soft opt-in only where the operator enables it
        "sale_share": {"*": "opt_in"},
    },
    "US-CA": {
        "service": {"*": "contract"},
        "marketing": {"*": "opt_in", "email": "opt_out"},  # TCPA; CAN-SPAM
        "sale_share": {"*": "opt_out"},  # CCPA: opt-out, and GPC is a valid opt-out
    },
    "US": {
        "service": {"*": "contract", "sms": "opt_in"},  # automated SMS needs prior consent
        "marketing": {"*": "opt_in", "email": "opt_out"},
        "sale_share": {"*": None},
    },
}

SITUATIONS = (
    "none",  # no consent event at all
    "granted",  # an evidenced grant (wording and method)
    "bare_grant",  # a grant without wording or method: not a grant
    "withdrawn",  # granted, then withdrawn on that channel
    "opted_out",  # granted, then an opt-out of the purpose on every channel
    "suppressed",  # an opt-out of an address never seen; then an import with an older grant
    "regranted",  # opted out, then a newer evidenced grant: the only thing that lifts it
    "gpc",  # the browser's Global Privacy Control signal
    "customer",  # has bought, no grant (soft opt-in's condition)
)
T0 = datetime(2026, 6, 1, tzinfo=UTC)


def expected(
    j: str, purpose: str, channel: str, situation: str, *, soft: bool = False, lapsed: bool = False
) -> bool:
    """`lapsed`: the marketing grant is older than its validity period (consent_valid_days):
    no grant in force, as if never given (the basis decides)."""
    rules = BASIS[j][purpose]
    basis = rules.get(channel, rules["*"])
    if basis is None:
        return False
    if situation in ("withdrawn", "opted_out", "suppressed"):
        return False
    if situation == "gpc" and j == "US-CA" and purpose == "sale_share":
        return False
    in_force = situation in ("granted", "regranted") and not (lapsed and purpose == "marketing")
    if in_force or basis in ("contract", "opt_out"):
        return True
    # opt-in without an evidenced grant: only EU soft opt-in, where enabled, for advertising email
    return (
        soft and situation == "customer" and (j, purpose, channel) == ("EU", "marketing", "email")
    )


def evidenced() -> EvidenceIn:
    return EvidenceIn(wording_id="matrix-v1", method="checkbox", ip="203.0.113.7")


def grant_claim(purpose: str, channel: str, at: datetime) -> dict:
    return {
        "purpose": purpose,
        "channel": channel,
        "status": "granted",
        "occurred_at": at.isoformat(),
        "evidence": {"wording_id": "matrix-v1", "method": "checkbox"},
    }


async def build(p, situation: str) -> dict[tuple[str, str, str], uuid.UUID]:  # type: ignore[no-untyped-def]
    """One customer per (jurisdiction, purpose, channel) in the situation."""
    cases = [(j, pu, ch) for j in JURISDICTIONS for pu in PURPOSES for ch in CHANNELS]
    records = []
    for n, (j, purpose, channel) in enumerate(cases):
        record = {
            "source": "crm",
            "external_id": f"M{n}",
            "email": f"m{n}@ex.com",
            "phone": f"+7916{n:07d}",
            "jurisdiction": j,
        }
        if situation == "suppressed":
            ident = parse_identifier(
                p.policy, p.keys.indexer, **{ADDRESS[channel]: record[ADDRESS[channel]]}
            )
            await opt_out(p, ident, purpose=purpose, source="esp", actor="t", occurred_at=T0)
            record["consents"] = [grant_claim(purpose, channel, T0 - timedelta(days=30))]
        records.append(record)
    items = await upsert_batch(p, records, "test")
    assert all(i.error is None for i in items), [i.error for i in items if i.error]
    pids = {case: item.outcome.profile_id for case, item in zip(cases, items, strict=True)}

    for (j, purpose, channel), pid in pids.items():
        n = cases.index((j, purpose, channel))
        whole = Identifier("profile_id", profile_id=pid)
        address = parse_identifier(
            p.policy,
            p.keys.indexer,
            **{
                ADDRESS[channel]: f"m{n}@ex.com" if ADDRESS[channel] == "email" else f"+7916{n:07d}"
            },
        )

        def event(status: str, at: datetime, evidence: EvidenceIn | None) -> ConsentIn:
            return ConsentIn(purpose, channel, status, "web", occurred_at=at, evidence=evidence)  # noqa: B023

        if situation in ("granted", "withdrawn", "opted_out", "regranted"):
            await record_consent(p, event("granted", T0, evidenced()), whole, "t")
        if situation == "withdrawn":
            await record_consent(p, event("withdrawn", T0 + timedelta(hours=1), None), whole, "t")
        if situation in ("opted_out", "regranted"):
            at = T0 + timedelta(hours=1)
            await opt_out(p, address, purpose=purpose, source="esp", actor="t", occurred_at=at)
        if situation == "regranted":
            later = event("granted", T0 + timedelta(hours=2), evidenced())
            await record_consent(p, later, whole, "t")
        if situation == "bare_grant":
            with contextlib.suppress(InvalidInput):  # refused: nothing stored ("not a grant")
                await record_consent(p, event("granted", T0, None), whole, "t")
        if situation == "gpc" and gpc_applies(p.policy, j, "1"):
            signal = EvidenceIn(wording_id="preference-centre", method=GPC_METHOD)
            body = ConsentIn(GPC_PURPOSE, "*", "withdrawn", "gpc", occurred_at=T0, evidence=signal)
            await record_consent(p, body, whole, "customer")
        if situation == "customer":
            await record_event(
                p,
                EventIn(
                    source="shop",
                    event_id=f"o{n}",
                    type="purchase",
                    occurred_at=T0,
                    profile_id=str(pid),
                    amount=Decimal("10.00"),
                    currency="RUB",
                ),
                "t",
            )
    return pids


async def members(  # type: ignore[no-untyped-def]
    p, purpose: str, channel: str, *, automated: bool = False, now: datetime | None = None
) -> set[uuid.UUID]:
    d = Definition(purpose, channel, AllOf(()), automated)
    got: set[uuid.UUID] = set()
    after = None
    while True:
        async with p.db.read() as conn:
            page = await members_page(conn, p, d, after=after, limit=500, now=now)
        got |= {uuid.UUID(m.profile_id) for m in page.items}
        if page.next_after is None:
            return got
        after = page.next_after


async def check(  # type: ignore[no-untyped-def]
    p, situation: str, *, soft: bool = False, now: datetime | None = None, lapsed: bool = False
) -> None:
    """`now`: the moment asked about (the current time unless given)."""
    pids = await build(p, situation)
    wrong = []
    views = {}
    async with p.db.read() as conn:
        for pid in pids.values():
            views[pid] = (await consent_view(conn, p, pid, now=now)).contactable
    for purpose in PURPOSES:
        for channel in CHANNELS:
            sql = await members(p, purpose, channel, now=now)
            d = Definition(purpose, channel, AllOf(()))
            stats = await definition_stats(p, d, now=now)
            assert stats.contactable == len(sql), (purpose, channel)
            for (j, pu, ch), pid in pids.items():
                want = (
                    expected(j, purpose, channel, situation, soft=soft, lapsed=lapsed)
                    if (pu, ch)
                    == (
                        purpose,
                        channel,
                    )
                    else None
                )
                rule = views[pid][purpose][channel]
                in_sql = pid in sql
                if rule != in_sql:
                    wrong.append(f"{j} {purpose}/{channel}: rule {rule}, segment SQL {in_sql}")
                elif want is not None and rule != want:
                    wrong.append(f"{j} {purpose}/{channel}: contactable {rule}, POLICIES.md {want}")
    assert not wrong, f"{situation}:\n" + "\n".join(sorted(set(wrong)))


@pytest.mark.parametrize("situation", SITUATIONS)
async def test_decision_matrix(platform, situation):
    await check(platform, situation)


async def test_decision_matrix_with_eu_soft_opt_in(platform):
    platform.policy = with_soft_opt_in(platform.policy)
    await check(platform, "customer", soft=True)


@pytest.mark.parametrize(
    ("situation", "seconds", "lapsed"),
    [("granted", -1, False), ("granted", 0, False), ("granted", 1, True), ("regranted", 1, False)],
)
async def test_decision_matrix_with_a_consent_validity_period(platform, situation, seconds, lapsed):
    """Marketing consent valid for 30 days wherever its basis is not the contract, asked a
    second either side of the lapse of the grant made at T0 (a grant made later, after an
    opt-out, is still in force): on opt-in channels the customer is as if they never granted;
    opt-out channels (US marketing email) and other purposes are unaffected."""
    platform.policy = with_validity(platform.policy, 30)
    now = T0 + timedelta(days=30, seconds=seconds)
    await check(platform, situation, now=now, lapsed=lapsed)


# POLICIES.md, RU: "no automated dialling for ads" (38-FZ art. 18(2): automatic dialling and
# automatic mailing): advertising by phone or sms sent without a person choosing each number.
NO_AUTOMATED_ADVERTISING = {("RU", "marketing", "phone"), ("RU", "marketing", "sms")}


@pytest.mark.parametrize("situation", ["granted", "none"])
async def test_a_segment_sent_by_automatic_dialling_or_mailing(platform, situation):
    """A segment declared `automated` holds no Russian customer for advertising by phone or
    sms, whatever their consent (stats: not_allowed); every other cell of the matrix, service
    messages in Russia included, answers as for a person dialling."""
    pids = await build(platform, situation)
    wrong = []
    for purpose in PURPOSES:
        for channel in CHANNELS:
            sent = await members(platform, purpose, channel, automated=True)
            d = Definition(purpose, channel, AllOf(()), automated=True)
            stats = await definition_stats(platform, d)
            assert stats.contactable == len(sent), (purpose, channel)
            forbidden = 0
            for (j, pu, ch), pid in pids.items():
                if (pu, ch) != (purpose, channel):
                    continue
                want = expected(j, purpose, channel, situation)
                if (j, purpose, channel) in NO_AUTOMATED_ADVERTISING:
                    forbidden += 1
                    want = False
                if (pid in sent) != want:
                    wrong.append(f"{j} {purpose}/{channel}: automated {pid in sent}, want {want}")
            if forbidden:
                assert stats.excluded["not_allowed"] >= forbidden, (purpose, channel, stats)
    assert not wrong, f"{situation}:\n" + "\n".join(sorted(wrong))
