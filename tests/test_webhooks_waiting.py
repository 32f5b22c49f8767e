"""A delivery that waits for a request slot (slow receivers hold them all) is prepared again
when it gets one: what happened meanwhile (an erasure, a deleted subscription, a rotated
secret) is what it sends, not what was true when it was claimed."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from consent.dsr_tables import dsr_requests
from consent.outbox.dispatcher import Dispatcher, open_dispatcher
from consent.outbox.receiver import Receiver
from tests.test_webhooks_delivery import FAST, add_profile, opt_out, subscribe

ONE_SLOT = dataclasses.replace(FAST, concurrency=1)


class SlowReceiver:
    """Answers 200 after `seconds`: it holds the dispatcher's only request slot."""

    def __init__(self, seconds: float = 1.5) -> None:
        self.seconds = seconds

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}/slow"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(self.seconds)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
        except Exception:
            pass
        writer.close()

    async def stop(self) -> None:
        self.server.close()


@pytest.fixture
async def slow(client, keys) -> AsyncIterator[SlowReceiver]:  # type: ignore[no-untyped-def]
    s = SlowReceiver()
    await s.start()
    r = await client.post(
        "/v1/webhooks", json={"url": s.url, "kinds": ["suppression.added"]}, headers=keys["admin"]
    )
    assert r.status_code == 201, r.text
    yield s
    await s.stop()


async def _claimed_behind_the_slow_one(disp: Dispatcher) -> None:
    await disp.step()  # claims both deliveries; the slow receiver's takes the only slot
    assert len(disp.inflight) == 2
    await asyncio.sleep(0.1)


async def _sent(disp: Dispatcher) -> None:
    await asyncio.wait(list(disp.inflight.values()), timeout=15)
    assert not disp.inflight, "a delivery was still in flight"


async def test_an_address_erased_while_its_delivery_waited_is_not_sent(
    client, keys, platform, receiver: Receiver, slow
):
    await subscribe(client, keys, receiver, kinds=["opt_out"], include_address=True)
    await add_profile(client, keys, email="erase.me.now@example.com")
    await opt_out(client, keys, email="erase.me.now@example.com", channel="email")
    async with open_dispatcher(platform, ONE_SLOT) as disp:
        await _claimed_behind_the_slow_one(disp)
        r = await client.post(
            "/v1/erasure-requests",
            json={"email": "erase.me.now@example.com", "requested_by": "customer"},
            headers=keys["compliance"],
        )
        assert r.status_code == 202, r.text
        async with platform.db.read() as conn:
            assert (await conn.execute(select(dsr_requests.c.status))).scalar() == "completed"
        assert receiver.requests == []
        await _sent(disp)
    [request] = receiver.requests
    assert request.payload["kind"] == "opt_out"
    assert "erase.me.now" not in request.body.decode()
    assert request.payload.get("address") is None


async def test_a_subscription_deleted_while_its_delivery_waited_receives_nothing(
    client, keys, platform, receiver: Receiver, slow
):
    sub = await subscribe(client, keys, receiver, kinds=["opt_out"])
    await opt_out(client, keys, email="gone.sub@example.com", channel="email")
    async with open_dispatcher(platform, ONE_SLOT) as disp:
        await _claimed_behind_the_slow_one(disp)
        r = await client.delete(f"/v1/webhooks/{sub['id']}", headers=keys["admin"])
        assert r.status_code == 204
        await _sent(disp)
    assert receiver.requests == []


async def test_a_secret_rotated_at_once_while_its_delivery_waited_signs_it(
    client, keys, platform, receiver: Receiver, slow
):
    sub = await subscribe(client, keys, receiver, kinds=["opt_out"])
    await opt_out(client, keys, email="rotated@example.com", channel="email")
    async with open_dispatcher(platform, ONE_SLOT) as disp:
        await _claimed_behind_the_slow_one(disp)
        r = await client.post(
            f"/v1/webhooks/{sub['id']}/rotate-secret",
            json={"overlap_seconds": 0},
            headers=keys["admin"],
        )
        assert r.status_code == 200, r.text
        receiver.secret = r.json()["secret"]  # the old one stops signing at once
        await _sent(disp)
    [request] = receiver.requests
    assert request.valid
