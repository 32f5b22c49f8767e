"""Reads that must not grow with the base (docs/testing.md, "Scale review (2026-12-07)").

Each test fills a table with FILL rows that the request or background pass has no business
reading (delivered deliveries, fanned-out events, split data keys, old ledger entries), runs
it, and measures each of its reads of that table again (tests/reads.py): rows produced or
filtered on PostgreSQL, virtual machine steps on SQLite. Before the fixes each read the whole
table (FILL rows and more); through the partial indexes they read next to nothing. The
planner's statistics are refreshed after each fill, as `cdp serve` does every 10 minutes.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import insert

from api.controllers.console import recent_access
from cdp.db.tables import access_log, profile_keys
from cdp.ids import utcnow
from cdp.keyring import whole_keys_left
from cdp.ops_figures import figures
from cdp.platform import Platform
from consent.audit import access
from consent.chain import verify_chain
from consent.outbox import delivery, dispatcher, fanout
from consent.outbox.config import DispatchConfig
from consent.outbox.tables import outbox_events, webhook_deliveries, webhook_subscriptions
from consent.tables import consent_ledger
from tests.reads import captured, most_read

FILL = 5000
LITTLE = FILL // 100  # far below a scan of FILL rows on either measure


async def _bulk(p: Platform, table, rows: list[dict], analyze: bool = True) -> None:  # type: ignore[no-untyped-def]
    async with p.db.write() as conn:
        await conn.execute(insert(table), rows)
    if analyze:
        await p.db.refresh_statistics()  # as `cdp serve` keeps them: plans as in production


async def _delivered(p: Platform, pending: int = 0) -> None:
    """FILL events fanned out long ago, each delivered to three subscriptions; the last
    `pending` deliveries still to send (their next try in an hour), queued after the planner's
    statistics were taken (when none was pending, as most of the time)."""
    now, subscriptions = utcnow(), [uuid.uuid4() for _ in range(3)]
    await _bulk(
        p,
        webhook_subscriptions,
        [
            {
                "id": sid,
                "url": "https://hooks.example/x",
                "kinds": ["consent.withdrawn"],
                "include_address": False,
                "secret": b"\0" * 60,
                "created_at": now,
                "created_by": "test",
            }
            for sid in subscriptions
        ],
    )
    events = [
        {
            "seq": i + 1,
            "id": uuid.uuid4(),
            "kind": "consent.withdrawn",
            "order_key": b"k%d" % i,
            "occurred_at": now - timedelta(days=1),
            # recorded in bursts, 30 a second, as a batch's opt-outs are
            "recorded_at": now - timedelta(days=1) + timedelta(seconds=i // 30),
            "fanned_out": True,
            "streamed_at": now,
        }
        for i in range(FILL)
    ]
    await _bulk(p, outbox_events, events)
    rows = [
        {
            "id": uuid.uuid4(),
            "subscription_id": sid,
            "event_seq": e["seq"],
            "event_id": e["id"],
            "order_key": e["order_key"],
            "status": "delivered",
            "attempts": 1,
            "total_attempts": 1,
            "replays": 0,
            "next_attempt_at": now - timedelta(days=1),
            "created_at": now - timedelta(days=1),
            "delivered_at": now - timedelta(days=1),
        }
        for e in events
        for sid in subscriptions
    ]
    for row in rows[len(rows) - pending :]:
        row.update(status="pending", next_attempt_at=now + timedelta(hours=1), delivered_at=None)
    await _bulk(p, webhook_deliveries, rows[: len(rows) - pending])
    if pending:
        await _bulk(p, webhook_deliveries, rows[len(rows) - pending :], analyze=False)


async def test_an_idle_dispatcher_reads_no_delivered_delivery_nor_fanned_out_event(
    platform: Platform,
) -> None:
    """The dispatcher asks "any work?" every 200 ms, and the fan-out and the claim run when
    it answers yes: with nothing to do, each read every event and delivery kept for the
    retention period (30 days of them), on both databases."""
    await _delivered(platform)
    with captured(platform) as seen:
        assert not await delivery.work_waiting(platform)
        assert await fanout.fan_out(platform) == 0
        assert await delivery.claim(platform, DispatchConfig(), 10) == []
        assert await dispatcher.outstanding(platform) == 0
    assert await most_read(platform, seen, "outbox_events") < LITTLE
    assert await most_read(platform, seen, "webhook_deliveries") < LITTLE


async def test_metrics_and_the_start_up_check_read_no_delivered_delivery_nor_split_key(
    platform: Platform,
) -> None:
    """GET /metrics counted the pending and dead deliveries by reading every delivery, and
    looked for a data key stored whole (as `cdp serve` does at its start) by reading every
    data key: a scrape every 15 s read the whole base. And it found the oldest pending one
    by walking every event in time order (SQLite, with the planner's statistics)."""
    now = utcnow()
    await _bulk(
        platform,
        profile_keys,
        [
            {
                "profile_id": uuid.uuid4(),
                "key_id": 1,
                "master_key_id": "m",
                "wrapped": b"\0" * 60,
                "created_at": now,
                "split": True,
            }
            for _ in range(FILL)
        ],
    )
    await _delivered(platform, pending=3)
    with captured(platform) as seen:
        shown = {(f.name, f.labels): f.value for f in await figures(platform)}
        assert not await whole_keys_left(platform.db)
    assert shown[("cdp_webhook_deliveries", (("status", "pending"),))] == 3
    assert shown[("cdp_webhook_deliveries", (("status", "dead"),))] == 0
    assert shown[("cdp_webhook_oldest_pending_seconds", ())] > 0
    assert await most_read(platform, seen, "webhook_deliveries") < LITTLE
    assert await most_read(platform, seen, "profile_keys") < LITTLE


async def test_the_ledger_bounds_are_read_off_its_index(platform: Platform) -> None:
    """An evidence bundle, a checkpoint and a verification from a checkpoint begin with the
    ledger's lowest and highest seq: on SQLite that read the whole ledger (min and max in one
    SELECT are not read off an index)."""
    now = utcnow()
    entries = [
        {
            "seq": i + 1,
            "event_id": uuid.uuid4(),
            "subject_kind": "profile",
            "purpose": "marketing",
            "channel": "push",
            "status": "granted",
            "occurred_at": now,
            "recorded_at": now,
            "source": "test",
            "actor": "test",
            "policy_version": "test",
            "effective": True,
            "prev_hash": b"\0" * 32,
            "hash": bytes([i % 256]) * 32,
        }
        for i in range(FILL)
    ]
    await _bulk(platform, consent_ledger, entries)
    with captured(platform) as seen:
        async with platform.db.read() as conn:
            result = await verify_chain(conn, after=(FILL, entries[-1]["hash"]))
    assert result.ok
    assert await most_read(platform, seen, "consent_ledger") < LITTLE


async def _access_log(p: Platform) -> list[dict]:
    """FILL access-log entries by one busy key, a minute apart, the newest last."""
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4(),
            "at": now - timedelta(minutes=FILL - i),
            "actor": "crm-key",
            "role": "compliance",
            "action": "profile.read",
            "object_type": "profile",
            "object_id": None,
            "profile_id": None,
            "rows": 1,
        }
        for i in range(FILL)
    ]
    await _bulk(p, access_log, rows)
    return rows


async def test_a_page_deep_into_the_access_log_reads_one_page(platform: Platform) -> None:
    """The audit API's cursor continued after (at, id) with an OR that no index could seek:
    the page after the 4,900th entry read the 4,900 before it, and paging through a log was
    quadratic."""
    rows = await _access_log(platform)
    mark = rows[-100]
    with captured(platform) as seen:
        async with platform.db.read() as conn:
            items, more = await access.page(
                conn, access.AccessFilter(), (mark["at"], mark["id"]), 10
            )
    assert [i["id"] for i in items] == [str(r["id"]) for r in rows[-99:-89]] and more
    assert await most_read(platform, seen, "access_log") < LITTLE


async def test_one_keys_access_log_entries_are_found_by_index(platform: Platform) -> None:
    """`actor=` (the audit API and the console's access log page) read the whole log to find
    one key's entries."""
    await _access_log(platform)
    officer = await _access_log_entry(platform, "officer-key")
    with captured(platform) as seen:
        async with platform.db.read() as conn:
            items, more = await access.page(
                conn, access.AccessFilter(actor="officer-key"), None, 50
            )
            newest = await recent_access(conn, None, "officer-key")
    assert [i["id"] for i in items] == [str(officer)] and more is None
    assert [r.id for r in newest] == [officer]
    assert await most_read(platform, seen, "access_log") < LITTLE


async def _access_log_entry(p: Platform, actor: str) -> uuid.UUID:
    entry = uuid.uuid4()
    await _bulk(
        p,
        access_log,
        [
            {
                "id": entry,
                "at": utcnow() - timedelta(days=30),
                "actor": actor,
                "role": "compliance",
                "action": "profile.read",
                "object_type": "profile",
                "rows": 1,
            }
        ],
    )
    return entry
