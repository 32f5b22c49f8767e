"""The suppression list keeps each address's latest opt-out: its time, reason and source. A new
suppression is announced once to the webhook outbox; repeating one announces nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from consent import suppressions as sup
from consent.outbox.tables import outbox_events
from consent.suppressions import Suppression, suppress_many
from consent.tables import suppressions

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
ADDRESS = b"\x01" * 32


def item(at: datetime, *, reason: str = "opt_out", source: str = "esp") -> Suppression:
    return Suppression(ADDRESS, "marketing", "*", reason, source, at)


async def stored(platform) -> tuple[tuple, int]:  # type: ignore[no-untyped-def]
    """(the address's row: time, reason, source; suppression.added events so far)"""
    s = suppressions.c
    async with platform.db.read() as conn:
        row = (await conn.execute(select(s.at, s.reason, s.source).where(s.bidx == ADDRESS))).one()
        events = (
            await conn.execute(
                select(func.count()).where(outbox_events.c.kind == "suppression.added")
            )
        ).scalar()
    return tuple(row), events


async def test_the_latest_opt_out_of_an_address_is_kept(platform) -> None:
    async def add(*items: Suppression) -> None:
        async with platform.db.write() as conn:
            await suppress_many(conn, list(items))

    await add(item(T0 + timedelta(hours=1)), item(T0, reason="stop_word"))  # one batch
    assert await stored(platform) == ((T0 + timedelta(hours=1), "opt_out", "esp"), 1)
    await add(item(T0 - timedelta(days=1), reason="complaint", source="crm"))  # older
    assert await stored(platform) == ((T0 + timedelta(hours=1), "opt_out", "esp"), 1)
    await add(item(T0 + timedelta(days=1), reason="complaint", source="crm"))  # later
    assert await stored(platform) == ((T0 + timedelta(days=1), "complaint", "crm"), 1)


@pytest.mark.parametrize("theirs", [timedelta(hours=-1), timedelta(hours=1)])
async def test_a_row_another_writer_added_meanwhile_keeps_the_later_time(
    platform, monkeypatch: pytest.MonkeyPatch, theirs: timedelta
) -> None:
    """Another process inserts the address's row between this batch's look-up and its write:
    the row ends with whichever of the two times is later."""
    async with platform.db.write() as conn:
        await suppress_many(conn, [item(T0 + theirs, reason="theirs", source="crm")])

    async def nothing_yet(conn, bidxs):  # type: ignore[no-untyped-def]
        return {}  # the look-up ran before the other writer's row was there

    monkeypatch.setattr(sup, "suppressed_at", nothing_yet)
    async with platform.db.write() as conn:
        await suppress_many(conn, [item(T0, reason="ours")])
    (at, reason, _), _ = await stored(platform)
    later = max(T0, T0 + theirs)
    assert (at, reason) == (later, "theirs" if later > T0 else "ours")
