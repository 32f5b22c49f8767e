"""An export hands out nobody after their opt-out has been answered, however slowly its client
reads (found by review on 2026-12-07: ranges selected ahead of a slow client were sent as
selected). SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib

from cdp.profiles.identifiers import parse_identifier
from cdp.profiles.identity import lookup_bidx
from cdp.profiles.service import upsert_batch
from cdp.segments.members import Definition
from cdp.segments.pages import member_pages
from cdp.segments.rules import AllOf
from consent.optout import opt_out
from consent.schemas import ConsentIn, EvidenceIn
from consent.service import record_consent

EV = {"wording_id": "w-v1", "method": "checkbox"}


async def customers(platform, n: int, **extra) -> None:  # type: ignore[no-untyped-def]
    records = [
        {"source": "crm", "email": f"x{i}@example.com", "jurisdiction": "US", **extra}
        for i in range(n)
    ]
    await upsert_batch(platform, records, "t")


async def test_an_export_hands_out_nobody_after_their_opt_out_answered(platform):
    await customers(platform, 8)
    d = Definition("marketing", "email", AllOf(()))
    pages = member_pages(platform, d, page_size=2, span=2)
    async with contextlib.aclosing(pages):
        first = await anext(pages)  # the client reads the first page...
        await asyncio.sleep(0.3)  # ...slowly: meanwhile the next ranges were selected ahead
        sent = {m.address for m in first.items}
        assert len(sent) == 2
        stopped = sorted(f"x{i}@example.com" for i in range(8) if f"x{i}@example.com" not in sent)
        for address in stopped[:4]:
            ident = parse_identifier(platform.policy, platform.keys.indexer, email=address)
            await opt_out(platform, ident, source="esp", actor="t")  # answered
        rest = [m.address async for page in pages for m in page.items]
    # the others are all still sent, once each; those who opted out, never
    assert sorted(rest) == stopped[4:]


async def test_an_opt_out_by_profile_reaches_a_push_range_selected_before_it(platform):
    """Push is addressed by the profile: an opt-out naming the customer takes them out of a
    page selected before it."""
    push = {"purpose": "marketing", "channel": "push", "status": "granted", "evidence": EV}
    await customers(platform, 6, consents=[push])
    d = Definition("marketing", "push", AllOf(()))
    pages = member_pages(platform, d, page_size=2, span=2)
    async with contextlib.aclosing(pages):
        first = await anext(pages)
        await asyncio.sleep(0.3)
        assert len(first.items) == 2
        sent = {pid for pid, _ in first.handed}
        async with platform.db.read() as conn:
            held = await lookup_bidx(
                conn,
                [
                    parse_identifier(
                        platform.policy, platform.keys.indexer, email=f"x{i}@example.com"
                    ).bidx
                    for i in range(6)
                ],
            )
        later = sorted(pid for pid in held.values() if pid not in sent)
        ident = parse_identifier(platform.policy, platform.keys.indexer, profile_id=str(later[0]))
        await opt_out(platform, ident, channel="push", source="app", actor="t")
        rest = [pid async for page in pages for pid, _ in page.handed]
    assert sorted(rest) == later[1:]


async def test_a_customer_whose_sent_address_opted_out_is_exported_with_their_other_one(platform):
    """One item per customer, with the contactable address most recently confirmed: where that
    address opts out after its range was selected, the customer is still a member by their
    other address, and the export must hand that one out, as a members read after the opt-out
    does (found by the linearizability review, 2026-12-07: the customer was dropped, and an
    export listed no address of a customer every read before and after listed)."""
    ev = {"wording_id": "w-v1", "method": "checkbox"}

    def grant(minute: int) -> list[dict]:
        at = f"2026-11-01T10:{minute:02d}:00Z"
        return [{"purpose": "marketing", "channel": "email", "status": "granted",
                 "occurred_at": at, "evidence": ev}]  # fmt: skip

    await upsert_batch(platform, [{"source": "crm", "email": "first@example.com"}], "t")
    await upsert_batch(
        platform,
        [
            {"source": "crm", "email": "old@example.com", "external_id": "K", "consents": grant(1)},
            {"source": "crm", "email": "new@example.com", "external_id": "K", "consents": grant(5)},
        ],
        "t",
    )
    first = parse_identifier(platform.policy, platform.keys.indexer, email="first@example.com")
    await record_consent(
        platform,
        ConsentIn(
            purpose="marketing",
            channel="email",
            status="granted",
            source="t",
            evidence=EvidenceIn(wording_id="w-v1", method="checkbox"),
        ),
        first,
        "t",
    )
    d = Definition("marketing", "email", AllOf(()))
    pages = member_pages(platform, d, page_size=1, span=1)
    async with contextlib.aclosing(pages):
        page = await anext(pages)
        await asyncio.sleep(0.3)  # the next range, K's, is selected meanwhile: new@example.com
        assert [m.address for m in page.items] == ["first@example.com"]
        new = parse_identifier(platform.policy, platform.keys.indexer, email="new@example.com")
        await opt_out(platform, new, channel="email", source="esp", actor="t")  # answered
        rest = [m.address async for page in pages for m in page.items]
    assert rest == ["old@example.com"]
