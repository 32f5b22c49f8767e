"""Reads that must not grow with the base (README, "Scale review (2026-12-07)").

Each test fills a table with FILL rows that the request or background pass has no business
reading (delivered deliveries, fanned-out events, split data keys, old ledger entries), runs
it, and measures each of its reads of that table again (tests/reads.py): rows produced or
filtered on PostgreSQL, virtual machine steps on SQLite. Before the fixes each read the whole
table (FILL rows and more); through the partial indexes they read next to nothing.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import insert

from cdp.db.tables import profile_keys
from cdp.ids import utcnow
from cdp.keyring import whole_keys_left
from cdp.ops_figures import figures
from cdp.platform import Platform
from consent.chain import verify_chain
from consent.outbox import delivery, dispatcher, fanout
from consent.outbox.config import DispatchConfig
from consent.outbox.tables import outbox_events, webhook_deliveries, webhook_subscriptions
from consent.tables import consent_ledger
from tests.reads import captured, most_read

FILL = 5000
LITTLE = FILL // 100  # far below a scan of FILL rows on either measure


async def _bulk(p: Platform, table, rows: list[dict]) -> None:  # type: ignore[no-untyped-def]
    async with p.db.write() as conn:
        await conn.execute(insert(table), rows)


async def _delivered(p: Platform) -> None:
    """FILL events fanned out long ago, each delivered to one subscription."""
    now, sid = utcnow(), uuid.uuid4()
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
        ],
    )
    events = [
        {
            "seq": i + 1,
            "id": uuid.uuid4(),
            "kind": "consent.withdrawn",
            "order_key": b"k%d" % i,
            "occurred_at": now - timedelta(days=1),
            "recorded_at": now - timedelta(days=1),
            "fanned_out": True,
            "streamed_at": now,
        }
        for i in range(FILL)
    ]
    await _bulk(p, outbox_events, events)
    await _bulk(
        p,
        webhook_deliveries,
        [
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
        ],
    )


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
    data key: a scrape every 15 s read the whole base."""
    await _delivered(platform)
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
    with captured(platform) as seen:
        shown = {(f.name, f.labels): f.value for f in await figures(platform)}
        assert not await whole_keys_left(platform.db)
    assert shown[("cdp_webhook_deliveries", (("status", "pending"),))] == 0
    assert shown[("cdp_webhook_deliveries", (("status", "dead"),))] == 0
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
