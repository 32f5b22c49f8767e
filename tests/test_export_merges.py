"""An export lists a customer merged while it runs once (found by the linearizability review,
2026-12-07: two addresses each listed twice in one NDJSON export). The survivor of a merge has
the lower id, so its page goes first; but ranges are selected ahead, and a range's remainder
after the ranges ahead of it, so the survivor's page may be selected after the merge (holding
the absorbed profile's address too) and the absorbed profile's before it. SQLite and
PostgreSQL."""

from __future__ import annotations

import contextlib

from cdp.profiles.service import upsert_batch
from cdp.segments import pages as pages_module
from cdp.segments.audience import LAST_ID
from cdp.segments.members import Definition
from cdp.segments.pages import member_pages
from cdp.segments.rules import AllOf
from tests.helpers import until

EV = {"wording_id": "w-v1", "method": "checkbox"}
GRANT = [{"purpose": "marketing", "channel": "email", "status": "granted", "evidence": EV}]


async def test_a_customer_merged_while_an_export_runs_is_listed_once(platform, monkeypatch):
    await upsert_batch(
        platform,
        [
            {"source": "crm", "email": f"m{i}@example.com", "jurisdiction": "US", "consents": GRANT}
            for i in range(5)
        ],
        "t",
    )
    # the survivor: no consent to its own address, so not a member until the merge
    await upsert_batch(
        platform,
        [
            {
                "source": "shop",
                "email": "b@example.com",
                "phone": "+14155550123",
                "jurisdiction": "US",
            }
        ],
        "t",
    )
    await upsert_batch(
        platform,
        [{"source": "crm", "email": "a@example.com", "jurisdiction": "US", "consents": GRANT}],
        "t",
    )
    # ranges of six profiles: the five members and the survivor, then the absorbed one; pages
    # of two, two ranges selected at once (as on PostgreSQL), so the first range's remainders
    # are selected after the second range
    monkeypatch.setitem(pages_module.AHEAD, platform.db.engine.dialect.name, 2)
    selected: list[tuple] = []
    select_rows = pages_module.select_rows

    async def noted(conn, p, d, *, after, until, **kw):  # type: ignore[no-untyped-def]
        got = await select_rows(conn, p, d, after=after, until=until, **kw)
        selected.append((until, len(got.rows)))
        return got

    monkeypatch.setattr(pages_module, "select_rows", noted)
    d = Definition("marketing", "email", AllOf(()))
    pages = member_pages(platform, d, page_size=2, span=6)
    async with contextlib.aclosing(pages):
        first = [m.address for m in (await anext(pages)).items]
        # the second range (the absorbed profile's, a member now) was selected before the merge
        await until(lambda: (LAST_ID, 1) in selected, "the second range selected")
        await upsert_batch(
            platform,
            [{"source": "crm", "email": "a@example.com", "phone": "+14155550123"}],
            "t",
        )
        rest = [m.address async for page in pages for m in page.items]
    # whether the survivor's address or the absorbed one's is sent, the customer is sent once
    assert sorted(first + rest) == sorted(
        [f"m{i}@example.com" for i in range(5)] + ["a@example.com"]
    )
