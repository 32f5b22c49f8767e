"""Consent-change webhooks end to end, against a real HTTP receiver on loopback.

Every opt-out entry point yields exactly one signed delivery; failed deliveries are retried
with the same event id; events committed while no dispatcher ran are delivered after a restart;
customers' events arrive in order; addresses are sent only where allowed, never stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest
from sqlalchemy import func, select, text, update

from cdp.ids import utcnow
from cdp.platform import open_platform
from consent import tokens
from consent.outbox.config import DispatchConfig
from consent.outbox.delivery import claim
from consent.outbox.dispatcher import open_dispatcher, run_dispatcher
from consent.outbox.enqueue import enqueue
from consent.outbox.fanout import fan_out, fan_out_in
from consent.outbox.receiver import Receiver
from consent.outbox.replay import replay
from consent.outbox.tables import outbox_events, webhook_deliveries, webhook_subscriptions
from tests.helpers import count, holds_plaintext, raw_database_bytes

ROOT = Path(__file__).resolve().parent.parent
FAST = DispatchConfig(
    retry_base=0.001, retry_cap=0.005, poll_interval=0.01, min_interval=0.001, timeout=5.0
)
PAYLOAD_KEYS = {
    "event_id",
    "kind",
    "occurred_at",
    "recorded_at",
    "purpose",
    "channel",
    "source",
    "profile_id",
    "address_kind",
    "address_blind_index",
}


async def subscribe(client, keys, receiver: Receiver, **body) -> dict:  # type: ignore[no-untyped-def]
    r = await client.post("/v1/webhooks", json={"url": receiver.url, **body}, headers=keys["admin"])
    assert r.status_code == 201, r.text
    receiver.secret = r.json()["secret"]
    return r.json()


async def subscribed_server(client, keys, handler) -> asyncio.Server:  # type: ignore[no-untyped-def]
    """A raw TCP receiver on a free port running `handler`, subscribed to opt_out events."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r = await client.post(
        "/v1/webhooks",
        json={"url": f"http://127.0.0.1:{port}/hooks", "kinds": ["opt_out"]},
        headers=keys["admin"],
    )
    assert r.status_code == 201, r.text
    return server


async def drain(p, cfg: DispatchConfig = FAST, settle: bool = True) -> None:  # type: ignore[no-untyped-def]
    async with open_dispatcher(p, cfg) as dispatcher:
        await dispatcher.drain(settle=settle, max_seconds=30)


async def opt_out(client, keys, **body) -> dict:  # type: ignore[no-untyped-def]
    r = await client.post("/v1/opt-outs", json={"source": "crm", **body}, headers=keys["ingest"])
    assert r.status_code == 200, r.text
    return r.json()


async def add_profile(client, keys, **body) -> str:  # type: ignore[no-untyped-def]
    r = await client.post("/v1/profiles", json={"source": "crm", **body}, headers=keys["ingest"])
    assert r.status_code in (200, 201), r.text
    return r.json()["profile_id"]


def only_one_valid(receiver: Receiver) -> dict:
    assert len(receiver.requests) == 1, [r.payload for r in receiver.requests]
    [req] = receiver.requests
    assert req.valid and req.status == 200
    assert req.headers["webhook-id"] == req.payload["event_id"]
    assert req.headers["content-type"] == "application/json"
    return req.payload


async def test_an_api_opt_out_is_delivered_once_signed_without_the_address(
    client, keys, platform, receiver
):
    await subscribe(client, keys, receiver, kinds=["opt_out"])
    await opt_out(client, keys, email="Lena.Optout@Example.com")
    await drain(platform)
    body = only_one_valid(receiver)
    assert set(body) == PAYLOAD_KEYS
    assert body["kind"] == "opt_out"
    assert (body["purpose"], body["channel"], body["address_kind"]) == ("marketing", "*", "email")
    assert (
        body["address_blind_index"] == platform.keys.indexer.email("lena.optout@example.com").hex()
    )
    assert body["profile_id"] is None  # an address the platform had never seen
    assert b"lena.optout" not in receiver.requests[0].body.lower()
    await opt_out(client, keys, email="lena.optout@example.com")  # repeating changes nothing
    await drain(platform)
    assert len(receiver.requests) == 2  # but it is a new opt-out request, with a new id
    assert receiver.requests[1].payload["event_id"] != body["event_id"]


async def test_one_click_unsubscribe_is_delivered_once(client, keys, platform, receiver):
    pid = await add_profile(client, keys, email="click@example.com")
    await subscribe(client, keys, receiver, kinds=["opt_out"])
    bidx = platform.keys.indexer.email("click@example.com")
    from uuid import UUID

    token = tokens.issue(
        platform.keys.token_key, tokens.TokenClaims(UUID(pid), "email", bidx, "marketing", "email")
    )
    r = await client.post(f"/v1/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200, r.text
    await drain(platform)
    body = only_one_valid(receiver)
    assert (body["kind"], body["channel"], body["source"]) == ("opt_out", "email", "one_click")
    assert body["profile_id"] == pid
    assert body["address_blind_index"] == bidx.hex()


async def test_an_sms_stop_is_delivered_once(client, keys, platform, receiver):
    pid = await add_profile(client, keys, phone="+79161234567")
    await subscribe(client, keys, receiver, kinds=["opt_out"])
    r = await client.post(
        "/v1/inbound/sms", json={"from": "+79161234567", "text": "стоп"}, headers=keys["ingest"]
    )
    assert r.status_code == 200 and r.json()["stop"] is True
    await drain(platform)
    body = only_one_valid(receiver)
    assert (body["kind"], body["channel"], body["address_kind"]) == ("opt_out", "sms", "phone")
    assert (body["profile_id"], body["source"]) == (pid, "sms_keyword")
    assert body["address_blind_index"] == platform.keys.indexer.phone("+79161234567").hex()


async def test_an_erasure_is_delivered_once_per_address(client, keys, platform, receiver):
    """The erasure code calls `enqueue(conn, "erasure.completed", ...)` in its transaction."""
    pid = await add_profile(client, keys, email="gone@example.com", phone="+79160000001")
    await subscribe(client, keys, receiver, kinds=["erasure.completed"])
    email = platform.keys.indexer.email("gone@example.com")
    phone = platform.keys.indexer.phone("+79160000001")
    from uuid import UUID

    async with platform.db.write() as conn:
        await enqueue(
            conn,
            "erasure.completed",
            profile_id=UUID(pid),
            occurred_at=utcnow(),
            addresses=[("email", email), ("phone", phone), ("email", email)],
            source="erasure",
        )
    await drain(platform)
    got = sorted(
        (r.payload["address_kind"], r.payload["address_blind_index"]) for r in receiver.requests
    )
    assert got == [("email", email.hex()), ("phone", phone.hex())]
    assert all(r.valid and r.payload["profile_id"] == pid for r in receiver.requests)
    assert len({r.payload["event_id"] for r in receiver.requests}) == 2


async def test_an_erasure_request_announces_its_suppressions(client, keys, platform, receiver):
    await add_profile(client, keys, email="erase.me@example.com")
    await subscribe(client, keys, receiver, kinds=["suppression.added"])
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": "erase.me@example.com", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    await drain(platform)
    bidx = platform.keys.indexer.email("erase.me@example.com").hex()
    assert receiver.requests and all(r.valid for r in receiver.requests)
    assert {r.payload["address_blind_index"] for r in receiver.requests} == {bidx}
    assert {r.payload["source"] for r in receiver.requests} == {"erasure"}
    assert "marketing" in {r.payload["purpose"] for r in receiver.requests}


async def test_an_erasures_suppressions_say_which_kind_of_address_and_whose(
    client, keys, platform, receiver
):
    """`address_kind` is email, phone or profile (docs/webhooks.md): a receiver that keeps
    email and phone suppressions apart must be able to tell which an index is."""
    pid = await add_profile(client, keys, email="erase.kind@example.com", phone="+79160000002")
    await subscribe(client, keys, receiver, kinds=["suppression.added", "erasure.completed"])
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": "erase.kind@example.com", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    await drain(platform)
    email = platform.keys.indexer.email("erase.kind@example.com").hex()
    phone = platform.keys.indexer.phone("+79160000002").hex()
    sent = {
        (r.payload["kind"], r.payload["address_kind"], r.payload["address_blind_index"])
        for r in receiver.requests
    }
    assert sent == {
        ("suppression.added", "email", email),
        ("suppression.added", "phone", phone),
        ("erasure.completed", "email", email),
        ("erasure.completed", "phone", phone),
    }
    assert {r.payload["profile_id"] for r in receiver.requests} == {pid}


async def test_addresses_only_where_allowed_and_never_stored(client, keys, platform, receiver):
    pid = await add_profile(client, keys, email="show.me@example.com", first_name="Ольга")
    plain = Receiver(secret="")
    await plain.start()
    try:
        await subscribe(client, keys, receiver, kinds=["opt_out"], include_address=True)
        await subscribe(client, keys, plain, kinds=["opt_out"])
        await opt_out(client, keys, profile_id=pid, channel="email")
        await drain(platform)
    finally:
        await plain.stop()
    body = only_one_valid(receiver)
    assert body["address"] == "show.me@example.com"
    assert set(body) == PAYLOAD_KEYS | {"address"}
    assert "address" not in only_one_valid(plain)
    assert "Ольга" not in receiver.requests[0].body.decode()
    raw = await raw_database_bytes(platform)
    assert not holds_plaintext(raw, "show.me@example.com")


async def test_an_erased_identity_is_sent_as_its_blind_index_only(client, keys, platform, receiver):
    await add_profile(client, keys, email="late@example.com")
    await subscribe(client, keys, receiver, kinds=["opt_out"], include_address=True)
    await opt_out(client, keys, email="late@example.com", channel="email")  # not yet delivered
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": "late@example.com", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202
    await drain(platform)
    body = only_one_valid(receiver)
    assert "address" not in body
    assert body["address_blind_index"] == platform.keys.indexer.email("late@example.com").hex()


async def test_an_erased_customers_events_never_name_their_address_even_once_it_is_reused(
    client, keys, platform, receiver
):
    """The address comes back on a new customer (a new sign-up, a reassigned phone number)
    before the erased customer's events went out: those events name the erased profile, and
    must not link it to the address in clear (docs/webhooks.md: left out once erased)."""
    await add_profile(client, keys, email="reused@example.com")
    await subscribe(
        client,
        keys,
        receiver,
        kinds=["opt_out", "erasure.completed", "suppression.added"],
        include_address=True,
    )
    await opt_out(client, keys, email="reused@example.com", channel="email")
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": "reused@example.com", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    await add_profile(client, keys, email="reused@example.com")  # someone new, same address
    await drain(platform)
    kinds = {r.payload["kind"] for r in receiver.requests}
    assert {"opt_out", "erasure.completed"} <= kinds
    assert all(r.valid for r in receiver.requests)
    assert not [r.payload["kind"] for r in receiver.requests if b"reused@" in r.body]


async def test_a_receiver_failing_three_times_gets_it_once_more_with_the_same_id(
    client, keys, platform, receiver
):
    sub = await subscribe(client, keys, receiver, kinds=["opt_out"])
    answers = iter([500, 503, 500, 200])
    receiver.respond = lambda _req: next(answers)
    await opt_out(client, keys, email="flaky@example.com")
    await drain(platform)
    assert [r.status for r in receiver.requests] == [500, 503, 500, 200]
    assert all(r.valid for r in receiver.requests)
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert len({r.body for r in receiver.requests}) == 1
    assert len(receiver.seen) == 1

    r = await client.get(f"/v1/webhooks/{sub['id']}/deliveries", headers=keys["admin"])
    assert r.status_code == 200, r.text
    [item] = r.json()["items"]
    assert item["event_id"] == receiver.requests[0].headers["webhook-id"]
    assert (item["status"], item["attempts"], item["last_status_code"]) == ("delivered", 4, 200)
    assert [a["status_code"] for a in item["history"]] == [500, 503, 500, 200]
    assert item["history"][0]["error"] == "http 500"
    assert item["lag_ms"] is not None and item["lag_ms"] >= 0
    assert item["delivered_at"] >= item["occurred_at"]


async def test_dead_letters_do_not_block_the_customer_and_can_be_replayed(
    client, keys, platform, receiver
):
    sub = await subscribe(client, keys, receiver, kinds=["opt_out"])
    await opt_out(client, keys, email="dead@example.com", channel="email")
    async with platform.db.read() as conn:
        first = (
            await conn.execute(select(outbox_events.c.id).where(outbox_events.c.kind == "opt_out"))
        ).scalar_one()
    broken = True
    receiver.respond = lambda req: 500 if broken and req.payload["event_id"] == str(first) else 200
    cfg = dataclasses.replace(FAST, max_attempts=3)
    await drain(platform, cfg)
    await opt_out(client, keys, email="dead@example.com", purpose="service", channel="email")
    await drain(platform, cfg)
    assert [r.status for r in receiver.requests] == [500, 500, 500, 200]
    r = await client.get(f"/v1/webhooks/{sub['id']}/deliveries?status=dead", headers=keys["admin"])
    [dead] = r.json()["items"]
    assert (dead["event_id"], dead["attempts"], dead["lag_ms"]) == (str(first), 3, None)

    broken = False
    result = await replay(platform, utcnow() - timedelta(minutes=5))
    assert result.deliveries == 2  # the dead one and the delivered one
    await drain(platform, cfg)
    assert [r.payload["event_id"] for r in receiver.accepted].count(str(first)) == 1
    r = await client.get(f"/v1/webhooks/{sub['id']}/deliveries", headers=keys["admin"])
    assert {(i["status"], i["replays"]) for i in r.json()["items"]} == {("delivered", 1)}


async def dead_beside_a_working_one(client, keys, platform, receiver, email: str, **broken):  # type: ignore[no-untyped-def]
    """A working subscription and one whose row is then given `broken` values; an opt-out of
    `email`, dispatched with two tries at most. The working one gets the event; returns the
    broken one's dead delivery, as listed."""
    await subscribe(client, keys, receiver, kinds=["opt_out"])
    r = await client.post(
        "/v1/webhooks",
        json={"url": "https://esp.example/hooks", "kinds": ["opt_out"]},
        headers=keys["admin"],
    )
    sid = r.json()["id"]
    async with platform.db.write() as conn:
        await conn.execute(
            update(webhook_subscriptions)
            .where(webhook_subscriptions.c.id == UUID(sid))
            .values(**broken)
        )
    await opt_out(client, keys, email=email)
    cfg = dataclasses.replace(FAST, max_attempts=2)
    async with open_dispatcher(platform, cfg) as dispatcher:
        await dispatcher.drain(settle=True, max_seconds=10)
    assert len(receiver.accepted) == 1
    r = await client.get(f"/v1/webhooks/{sid}/deliveries?status=dead", headers=keys["admin"])
    [dead] = r.json()["items"]
    return dead


async def test_a_url_the_http_client_refuses_ends_dead_and_visible_not_stuck(
    client, keys, platform, receiver
):
    """A subscription stored before its URL was checked as strictly as now (a port that is
    not a number): the client raises before any request. Each try is recorded, the delivery
    ends dead and listed, and other subscriptions get the event."""
    dead = await dead_beside_a_working_one(
        client,
        keys,
        platform,
        receiver,
        "unsendable@example.com",
        url="https://esp.example:abc/hooks",
    )
    assert (dead["attempts"], dead["last_status_code"]) == (2, None)
    assert dead["last_error"] == "InvalidURL"
    assert [a["error"] for a in dead["history"]] == ["InvalidURL", "InvalidURL"]


async def test_a_subscription_whose_secret_cannot_be_read_ends_dead_and_visible(
    client, keys, platform, receiver
):
    """Its requests cannot be signed, so none is sent: each try is recorded, the delivery ends
    dead and listed (not leased again forever, holding back the customer), and the other
    subscriptions get the event."""
    dead = await dead_beside_a_working_one(
        client, keys, platform, receiver, "unsigned@example.com", secret=b"\x01" + bytes(60)
    )
    assert (dead["attempts"], dead["last_status_code"]) == (2, None)
    assert dead["last_error"] == "secret unreadable"


async def test_events_committed_while_no_dispatcher_ran_are_delivered_after_a_restart(
    client, keys, platform, receiver, tmp_path
):
    await subscribe(client, keys, receiver, kinds=["opt_out"])
    await opt_out(client, keys, email="crash.one@example.com")
    await opt_out(client, keys, email="crash.two@example.com")
    # a dispatcher leases one and dies before sending it: its lease runs out
    dying = dataclasses.replace(FAST, lease=0.0, timeout=0.0)
    assert await fan_out(platform) == 6  # opt_out, consent.withdrawn, suppression.added each
    assert len(await claim(platform, dying, 1)) == 1
    # the service restarts: a new process, a new platform on the same database
    restarted = await open_platform(platform.settings, run_migrations=False)
    try:
        await drain(restarted)
    finally:
        await restarted.close()
    assert len(receiver.requests) == 2 and all(r.valid for r in receiver.requests)
    assert len({r.payload["event_id"] for r in receiver.requests}) == 2


async def test_a_separate_worker_process_delivers_and_replays(client, keys, platform, receiver):
    await subscribe(client, keys, receiver, kinds=["opt_out"])
    since = utcnow()
    await opt_out(client, keys, email="worker@example.com")
    env = {
        **os.environ,
        "CDP_DATABASE_URL": platform.settings.database_url,
        "CDP_MASTER_KEY": platform.settings.master_key or "",
        "CDP_DEV_KEY_DIR": str(platform.settings.dev_key_dir),
        "CDP_WEBHOOK_RETRY_BASE_MS": "1",
    }
    env.pop("CDP_NATS_URL", None)

    async def cdp(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cdp.cli", *args, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()[-2000:]
        return out.decode()

    await cdp("dispatch", "--once")
    body = only_one_valid(receiver)
    out = await cdp("webhooks", "replay", "--since", since.isoformat())
    assert "requeued 1 deliveries" in out
    await cdp("dispatch", "--once")
    assert len(receiver.requests) == 2
    assert receiver.requests[1].payload["event_id"] == body["event_id"]
    assert receiver.requests[1].valid


async def test_a_customers_events_arrive_in_order(client, keys, platform, receiver):
    await subscribe(client, keys, receiver, kinds=["consent.withdrawn", "consent.granted"])
    email = "order@example.com"
    t0 = utcnow() - timedelta(minutes=10)
    consents = [
        ("withdrawn", t0),
        ("granted", t0 + timedelta(minutes=1)),
        ("withdrawn", t0 + timedelta(minutes=2)),
    ]
    for status, at in consents:
        r = await client.post(
            "/v1/consents",
            json={
                "email": email,
                "purpose": "marketing",
                "channel": "email",
                "status": status,
                "source": "web_form",
                "occurred_at": at.isoformat(),
                "evidence": {"wording_id": "newsletter-v3", "method": "checkbox"},
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 201, r.text
    await opt_out(client, keys, email="other@example.com")  # another customer, not held up
    other = platform.keys.indexer.email("other@example.com").hex()
    state = {"other_done": False, "failed": 0}

    def respond(req):  # type: ignore[no-untyped-def]
        if req.payload["address_blind_index"] == other:
            state["other_done"] = True
            return 200
        if not state["other_done"] or state["failed"] < 2:  # the head fails until then
            state["failed"] += 1
            return 500
        return 200

    receiver.respond = respond
    await drain(platform)
    ours = [r.payload for r in receiver.accepted if r.payload["address_blind_index"] != other]
    assert [(p["kind"], p["occurred_at"][:16]) for p in ours] == [
        (f"consent.{status}", at.strftime("%Y-%m-%dT%H:%M")) for status, at in consents
    ]
    order = [r.payload["address_blind_index"] for r in receiver.accepted]
    assert order.index(other) == 0  # delivered while the first customer's head was retried


async def test_only_subscriptions_that_existed_get_the_event_and_deleted_ones_nothing(
    client, keys, platform, receiver
):
    await opt_out(client, keys, email="before@example.com")
    sub = await subscribe(client, keys, receiver, kinds=["opt_out"])
    await drain(platform)
    assert receiver.requests == []
    await opt_out(client, keys, email="after@example.com")
    r = await client.delete(f"/v1/webhooks/{sub['id']}", headers=keys["admin"])
    assert r.status_code == 204
    await drain(platform)
    assert receiver.requests == []
    async with platform.db.read() as conn:
        statuses = (await conn.execute(select(webhook_deliveries.c.status))).scalars().all()
    assert statuses in ([], ["cancelled"])


async def test_a_subscription_deleted_while_its_events_are_fanned_out_gets_nothing(
    client, keys, platform, receiver
):
    """PostgreSQL: the delete commits while a dispatcher's fan-out (which read the
    subscription as live) has not committed yet. Its deliveries must still end cancelled:
    a deleted subscription receives nothing more."""
    if not platform.db.is_postgres:
        pytest.skip("SQLite runs one writer at a time")
    sub = await subscribe(client, keys, receiver, kinds=["opt_out"])
    await opt_out(client, keys, email="raced@example.com")
    async with platform.db.engine.connect() as conn, conn.begin():
        assert await fan_out_in(conn, platform.keys) > 0  # not committed yet
        deleting = asyncio.create_task(
            client.delete(f"/v1/webhooks/{sub['id']}", headers=keys["admin"])
        )
        async with platform.db.engine.connect() as watch:  # done, or waiting for our locks
            for _ in range(600):
                waiting = (
                    await watch.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND datname = current_database()"
                        )
                    )
                ).scalar_one()
                if deleting.done() or waiting:
                    break
                await asyncio.sleep(0.01)
    assert (await deleting).status_code == 204
    await drain(platform)
    assert receiver.requests == []
    async with platform.db.read() as conn:
        statuses = (await conn.execute(select(webhook_deliveries.c.status))).scalars().all()
    assert statuses == ["cancelled"]


async def test_two_dispatchers_deliver_each_event_once(client, keys, platform, receiver):
    await subscribe(client, keys, receiver, kinds=["opt_out"])
    for i in range(20):
        await opt_out(client, keys, email=f"pair{i}@example.com")
    other = await open_platform(platform.settings, run_migrations=False)
    try:
        await asyncio.gather(drain(platform), drain(other))
    finally:
        await other.close()
    assert len(receiver.requests) == 20
    assert len({r.payload["event_id"] for r in receiver.requests}) == 20


async def test_the_in_app_dispatcher_delivers_in_the_background(client, keys, platform, receiver):
    await subscribe(client, keys, receiver, kinds=["opt_out"])
    stop = asyncio.Event()
    task = asyncio.create_task(run_dispatcher(platform, stop, FAST))
    try:
        await opt_out(client, keys, email="background@example.com")
        accepted = await receiver.wait_for(1, seconds=20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)
    assert len(accepted) == 1 and accepted[0].payload["kind"] == "opt_out"


async def test_a_receiver_that_never_answers_does_not_hold_up_another_subscription(
    client, keys, platform, receiver
):
    """One tool's endpoint hangs (a firewall that drops packets, a stuck server): every request
    to it takes the whole timeout. The other subscriptions' opt-outs must still go out at once,
    not wait behind it for the dispatcher's request slots."""
    release = asyncio.Event()
    hung: list[bytes] = []

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hung.append(await reader.readuntil(b"\r\n\r\n"))
            await release.wait()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await subscribed_server(client, keys, hang)
    await subscribe(client, keys, receiver, kinds=["opt_out"])
    stop = asyncio.Event()
    cfg = dataclasses.replace(FAST, concurrency=2, timeout=60.0)
    task = asyncio.create_task(run_dispatcher(platform, stop, cfg))
    try:
        for i in range(4):
            await opt_out(client, keys, email=f"hang{i}@example.com")
        accepted = await receiver.wait_for(4, seconds=15)
        assert len(accepted) == 4, f"{len(accepted)} of 4 delivered; hung requests {len(hung)}"
        for _ in range(1000):  # the hanging endpoint is tried meanwhile
            if hung:
                break
            await asyncio.sleep(0.01)
        assert hung
    finally:
        release.set()
        stop.set()
        await asyncio.wait_for(task, 30)
        server.close()
        await server.wait_closed()


async def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_timeout(
    client, keys, platform
):
    """The timeout bounds the whole request, not each read: a receiver that sends its answer
    a byte at a time, each byte within the timeout, held a request slot (and its customer's
    later events) for as long as it liked, and its lease ran out beneath it. It is a failed
    try at the timeout, retried, then dead, like a receiver that never answers."""
    tries: list[int] = []

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tries.append(len(await reader.readuntil(b"\r\n\r\n")))
        try:
            for _ in range(600):  # a minute at most, ended by the client hanging up
                writer.write(b"H")
                await writer.drain()
                await asyncio.sleep(0.1)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await subscribed_server(client, keys, trickle)
    await opt_out(client, keys, email="trickle@example.com")
    try:
        await drain(platform, dataclasses.replace(FAST, timeout=1.0, max_attempts=2))
    finally:
        server.close()
    assert len(tries) == 2
    async with platform.db.read() as conn:
        status, error = (
            await conn.execute(select(webhook_deliveries.c.status, webhook_deliveries.c.last_error))
        ).one()
    assert (status, error) == ("dead", "TimeoutError")


async def test_nothing_is_enqueued_for_a_rejected_or_rolled_back_change(client, keys, platform):
    r = await client.post(
        "/v1/consents",
        json={
            "email": "nope@example.com",
            "purpose": "marketing",
            "channel": "email",
            "status": "granted",
            "source": "web_form",
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 400  # a marketing grant without wording
    with pytest.raises(RuntimeError):
        async with platform.db.write() as conn:
            await enqueue(conn, "opt_out", occurred_at=utcnow(), address_kind="profile")
            raise RuntimeError("the consent change failed")
    assert await count(platform, outbox_events) == 0


async def test_consent_events_follow_the_effective_state(client, keys, platform, receiver):
    await subscribe(client, keys, receiver, kinds=["consent.granted", "consent.withdrawn"])
    now = utcnow()
    for status, at in (("granted", now), ("withdrawn", now - timedelta(days=1))):
        r = await client.post(
            "/v1/consents",
            json={
                "email": "state@example.com",
                "purpose": "marketing",
                "channel": "email",
                "status": status,
                "source": "web_form",
                "occurred_at": at.isoformat(),
                "evidence": {"wording_id": "newsletter-v3", "method": "checkbox"},
            },
            headers=keys["ingest"],
        )
        assert r.status_code == 201
    await drain(platform)
    body = only_one_valid(receiver)  # the older withdrawal changed nothing: no event
    assert (body["kind"], body["source"], body["channel"]) == (
        "consent.granted",
        "web_form",
        "email",
    )
    async with platform.db.read() as conn:
        n = (await conn.execute(select(func.count()).select_from(outbox_events))).scalar_one()
    assert n == 1


async def test_an_erasure_request_announces_its_completion(client, keys, platform, receiver):
    pid = await add_profile(client, keys, email="bye@example.com", phone="+79160000002")
    await subscribe(client, keys, receiver, kinds=["erasure.completed"])
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": "bye@example.com", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    await drain(platform)
    got = sorted((x.payload["address_kind"], x.payload["profile_id"]) for x in receiver.requests)
    assert got == [("email", pid), ("phone", pid)]
    assert all(x.valid and x.payload["kind"] == "erasure.completed" for x in receiver.requests)


async def test_in_production_a_delivery_never_reaches_a_private_address(
    client, keys, platform, receiver, monkeypatch
):
    """Server-side request forgery: an admin key must not make the dispatcher POST to this
    network's machines (the cloud metadata service, a local port). The receiver listens on
    127.0.0.1: allowed in development, refused in production however the URL names it."""
    import dataclasses

    sub = await subscribe(client, keys, receiver, kinds=["opt_out"])  # registered in development
    await opt_out(client, keys, email="ssrf@example.com")
    monkeypatch.setattr(
        platform, "settings", dataclasses.replace(platform.settings, environment="production")
    )
    await drain(platform, dataclasses.replace(FAST, max_attempts=2))
    assert receiver.requests == []
    r = await client.get(f"/v1/webhooks/{sub['id']}/deliveries", headers=keys["admin"])
    [item] = r.json()["items"]
    assert item["status"] == "dead"
    assert {a["error"] for a in item["history"]} == {"SSRFProtectionError"}

    for url in (
        "https://127.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]:8443/hook",
        "https://10.0.0.7/hook",
        "https://localhost/hook",
        "https://127.1:8746/hook",  # the other spellings of a loopback address
        "https://2130706433/hook",
        "https://0x7f000001/hook",
        "https://metadata.google.internal/computeMetadata",  # names of a private network
        "https://intranet/hook",
    ):
        r = await client.post(
            "/v1/webhooks", json={"url": url, "kinds": ["opt_out"]}, headers=keys["admin"]
        )
        assert r.status_code == 400 and r.json()["errors"][0]["field"] == "url", url
    r = await client.post(
        "/v1/webhooks",
        json={"url": "https://hooks.example.com/cdp", "kinds": ["opt_out"]},
        headers=keys["admin"],
    )
    assert r.status_code == 201

    # CDP_WEBHOOK_ALLOW_PRIVATE=1: receivers inside the same network, by choice
    await opt_out(client, keys, email="inside@example.com")
    await drain(platform, dataclasses.replace(FAST, max_attempts=2, allow_private=True))
    assert [r.payload["kind"] for r in receiver.requests] == ["opt_out"]


async def test_a_protected_client_refuses_a_private_name_without_connecting():
    """The refusal comes before any connection: a port scan through webhook deliveries would
    otherwise tell open ports (refused after connecting) from closed ones (connect error)."""
    import asyncio

    import httpx
    from httpx_secure import SSRFProtectionError

    from consent.outbox.targets import protect

    connections = []

    async def accept(reader, writer):  # type: ignore[no-untyped-def]
        connections.append(1)
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with protect(httpx.AsyncClient()) as http:
            for url in (f"http://localhost:{port}/hook", f"http://127.1:{port}/hook"):
                try:
                    await http.post(url, content=b"{}")
                except SSRFProtectionError:
                    pass
                else:
                    raise AssertionError(f"{url} was not refused")
        await asyncio.sleep(0.05)
        assert connections == []
    finally:
        server.close()


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+10:56", "9999-12-31T23:59:59-05:00"])
def test_a_replay_time_beyond_the_calendar_in_utc_is_a_usage_error(since, tmp_path, monkeypatch):
    """A time whose UTC form falls before year 1 or after 9999 was a traceback
    (OverflowError) once the replay bound it; now click's usage error, exit status 2."""
    from click.testing import CliRunner

    from consent.outbox.cli import webhooks

    monkeypatch.chdir(tmp_path)  # before, it went on to open (and create) a database here
    out = CliRunner().invoke(webhooks, ["replay", "--since", since])
    assert out.exit_code == 2 and "out of range" in out.output, out.output


async def test_an_erasure_done_again_after_a_restore_is_announced(
    client, keys, platform, receiver, tmp_path
):
    """A database restored from a backup taken before an erasure erases the customer again
    when it opens (consent.dsr.restore). Its outbox, from before the erasure, holds no
    erasure.completed, and the erasure done again wrote none: a sending tool subscribed as the
    guide advises (opt_out, consent.withdrawn, erasure.completed) heard nothing from it, also
    where the first one's delivery was still waiting when the database was lost."""
    from cdp.profiles.identifiers import parse_identifier
    from consent.dsr.requests import submit_erasure
    from consent.dsr.worker import run_pending
    from tests.conftest import make_settings
    from tests.test_erasure import EMAIL, PHONE, create_anna
    from tests.test_key_store import take_backup

    await subscribe(client, keys, receiver, kinds=["opt_out", "erasure.completed"])
    await create_anna(client, keys)
    backups = take_backup(platform, tmp_path)
    backup_url = await anext(backups)
    try:
        ident = platform.keys.indexer
        await submit_erasure(
            platform,
            parse_identifier(platform.policy, ident, email=EMAIL),
            requested_by="customer",
            actor="test",
        )
        assert (await run_pending(platform)).completed == 1  # not delivered: the copy is lost
        settings = make_settings(backup_url, tmp_path, key_store=platform.settings.key_store_url)
        restored = await open_platform(settings, run_migrations=False)
        try:
            await drain(restored)
        finally:
            await restored.close()
    finally:
        await backups.aclose()
    sent = {(r.payload["kind"], r.payload["address_blind_index"]) for r in receiver.accepted}
    assert sent == {
        ("erasure.completed", ident.email(EMAIL).hex()),
        ("erasure.completed", ident.phone(PHONE).hex()),
    }
