"""The NATS JetStream option: every outbox event is published once, marked only after the ack,
and a republish (a crash between the ack and the mark) is dropped by the server's de-duplication.

NATS is optional: where no server answers on CDP_TEST_NATS_URL (default 127.0.0.1:4222) the
test is skipped, also in CI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, update

from consent.outbox.config import DispatchConfig
from consent.outbox.dispatcher import open_dispatcher
from consent.outbox.tables import outbox_events

NATS_URL = os.environ.get("CDP_TEST_NATS_URL", "nats://127.0.0.1:4222")


@pytest.fixture
async def nats_cfg() -> AsyncIterator[DispatchConfig]:
    import nats

    try:
        nc = await nats.connect(NATS_URL, connect_timeout=1, max_reconnect_attempts=0)
    except Exception:
        pytest.skip("no NATS server reachable")
    tag = uuid.uuid4().hex[:10]
    cfg = DispatchConfig(
        retry_base=0.001,
        poll_interval=0.01,
        nats_url=NATS_URL,
        nats_stream=f"CDP_CONSENT_TEST_{tag}",
        nats_subject_prefix=f"cdptest.{tag}",
    )
    yield cfg
    with contextlib.suppress(Exception):
        await nc.jetstream().delete_stream(cfg.nats_stream)
    await nc.close()


async def stream_messages(cfg: DispatchConfig) -> list:  # type: ignore[type-arg]
    import nats

    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        info = await js.stream_info(cfg.nats_stream)
        return [
            await js.get_msg(cfg.nats_stream, seq)
            for seq in range(info.state.first_seq, info.state.last_seq + 1)
        ]
    finally:
        await nc.close()


async def test_events_are_published_to_jetstream_at_least_once_without_duplicates(
    client, keys, platform, nats_cfg
):
    for email in ("nats.one@example.com", "nats.two@example.com"):
        r = await client.post(
            "/v1/opt-outs", json={"source": "crm", "email": email}, headers=keys["ingest"]
        )
        assert r.status_code == 200
    async with open_dispatcher(platform, nats_cfg) as dispatcher:
        await dispatcher.drain()
    async with platform.db.read() as conn:
        events = (await conn.execute(select(outbox_events).order_by(outbox_events.c.seq))).all()
    assert len(events) == 6 and all(e.streamed_at is not None for e in events)

    msgs = await stream_messages(nats_cfg)
    assert [m.headers["Nats-Msg-Id"] for m in msgs] == [str(e.id) for e in events]
    assert [m.subject for m in msgs] == [f"{nats_cfg.nats_subject_prefix}.{e.kind}" for e in events]
    first = json.loads(msgs[0].data)
    assert first["event_id"] == str(events[0].id) and "address" not in first
    assert first["address_blind_index"] == events[0].address_bidx.hex()

    # a crash after the acks but before the marks: everything is published again ...
    async with platform.db.write() as conn:
        await conn.execute(update(outbox_events).values(streamed_at=None))
    async with open_dispatcher(platform, dataclasses.replace(nats_cfg)) as dispatcher:
        await dispatcher.drain()
    # ... and the stream still holds each event once
    again = await stream_messages(nats_cfg)
    assert [m.headers["Nats-Msg-Id"] for m in again] == [str(e.id) for e in events]


async def test_webhooks_go_on_while_nats_is_down_and_nothing_is_marked_published(
    client, keys, platform
):
    import socket

    from consent.outbox.receiver import Receiver

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    receiver = Receiver("")
    await receiver.start()
    try:
        r = await client.post(
            "/v1/webhooks", json={"url": receiver.url, "kinds": ["opt_out"]}, headers=keys["admin"]
        )
        receiver.secret = r.json()["secret"]
        r = await client.post(
            "/v1/opt-outs",
            json={"source": "crm", "email": "down@example.com"},
            headers=keys["ingest"],
        )
        assert r.status_code == 200
        cfg = DispatchConfig(
            retry_base=0.001, poll_interval=0.01, nats_url=f"nats://127.0.0.1:{port}"
        )
        async with open_dispatcher(platform, cfg) as dispatcher:
            await dispatcher.drain()
    finally:
        await receiver.stop()
    assert len(receiver.accepted) == 1
    async with platform.db.read() as conn:
        marks = (await conn.execute(select(outbox_events.c.streamed_at))).scalars().all()
    assert marks and all(m is None for m in marks)  # published later, once NATS is back
