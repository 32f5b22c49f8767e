"""`consent.lapsed`: a grant past its jurisdiction's validity period is announced by webhook.

A sending tool that mirrors consent from `consent.granted` / `consent.withdrawn` learns of a
lapse too: once per grant that lapses, with when it lapsed, ordered with the address's other
events; never for a grant renewed or withdrawn before it lapsed, an opt-out channel, or an erased
customer; once however many workers run the pass (consent/outbox/lapses.py); also when the
customer comes under rules the grant has lapsed under (a record, a merge, an unmerge), once
however often they move. Time: grants are dated in the past and the pass is given its `now`
(the dispatcher's loop uses the clock).
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select

from cdp.platform import open_platform
from consent.dsr.worker import run_pending
from consent.outbox.dispatcher import run_dispatcher
from consent.outbox.lapses import announce_lapses
from consent.outbox.receiver import Receiver
from consent.outbox.tables import outbox_events
from tests.conftest import make_settings
from tests.helpers import record, until
from tests.test_rule import with_validity
from tests.test_webhooks_delivery import FAST, PAYLOAD_KEYS, drain, subscribe

DAYS = 30
S = timedelta(seconds=1)
GRANT = {"wording_id": "newsletter-v3", "method": "double_opt_in"}
# well in the past (a grant may not be dated ahead of the clock), whole seconds
T0 = (datetime.now(UTC) - timedelta(days=120)).replace(microsecond=0)
LAPSE = T0 + timedelta(days=DAYS)  # a grant at T0 is in force up to here, lapsed a moment after


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def customer(client, keys, email: str, jurisdiction: str = "RU", **more) -> str:  # type: ignore[no-untyped-def]
    body = {"source": "crm", "email": email, "jurisdiction": jurisdiction, **more}
    r = await client.post("/v1/profiles", json=body, headers=keys["ingest"])
    assert r.status_code in (200, 201), r.text
    return r.json()["profile_id"]


async def consent(client, keys, at: datetime, status: str = "granted", **body) -> None:  # type: ignore[no-untyped-def]
    full = {"purpose": "marketing", "channel": "email", "status": status, "source": "web"}
    full |= {"occurred_at": iso(at), **body}
    if status == "granted":
        full["evidence"] = GRANT
    r = await client.post("/v1/consents", json=full, headers=keys["ingest"])
    assert r.status_code in (200, 201), r.text


async def lapsed_events(p) -> list:  # type: ignore[no-untyped-def]
    """The consent.lapsed events in the outbox, in order."""
    oe = outbox_events.c
    async with p.db.read() as conn:
        query = select(outbox_events).where(oe.kind == "consent.lapsed").order_by(oe.seq)
        return (await conn.execute(query)).all()


def with_period(p, days: int = DAYS, **only: int) -> None:  # type: ignore[no-untyped-def]
    p.policy = with_validity(p.policy, days, **({"RU": days} | only))


async def test_a_lapse_is_announced_once_with_when_it_lapsed(client, keys, platform, receiver):
    pid = await customer(client, keys, "lapse@example.com", phone="+79161112233")
    await consent(client, keys, T0, email="lapse@example.com")
    await consent(client, keys, T0 + S, phone="+79161112233", channel="sms")
    await consent(client, keys, T0 + 2 * S, profile_id=pid, channel="push")
    # US: marketing email is opt-out (CAN-SPAM), no grant to lapse; sms is opt-in (TCPA)
    us = await customer(client, keys, "us@example.com", "US", phone="+12025550143")
    await consent(client, keys, T0, email="us@example.com")
    await consent(client, keys, T0, phone="+12025550143", channel="sms")
    with_period(platform, US=DAYS)
    await subscribe(client, keys, receiver, kinds=["consent.lapsed"])
    shown = Receiver(secret="")
    await shown.start()
    await subscribe(client, keys, shown, kinds=["consent.lapsed"], include_address=True)

    try:
        assert await announce_lapses(platform, now=LAPSE) == 0  # in force to its last moment
        assert await announce_lapses(platform, now=LAPSE + 3 * S) == 4
        assert await announce_lapses(platform, now=LAPSE + 3 * S) == 0
        assert await announce_lapses(platform, now=LAPSE + timedelta(days=400)) == 0
        await drain(platform)
    finally:
        await shown.stop()

    for r in (receiver, shown):
        assert len(r.requests) == 4 and all(q.valid for q in r.requests)
    bodies = {(b["profile_id"], b["channel"]): b for b in (q.payload for q in receiver.requests)}
    assert set(bodies) == {(pid, "email"), (pid, "sms"), (pid, "push"), (us, "sms")}
    email = bodies[(pid, "email")]
    assert set(email) == PAYLOAD_KEYS | {"lapsed_at"}
    assert (email["kind"], email["purpose"], email["address_kind"]) == (
        "consent.lapsed",
        "marketing",
        "email",
    )
    assert datetime.fromisoformat(email["lapsed_at"]) == LAPSE
    assert email["occurred_at"] == email["lapsed_at"]
    assert email["address_blind_index"] == platform.keys.indexer.email("lapse@example.com").hex()
    assert datetime.fromisoformat(bodies[(pid, "sms")]["lapsed_at"]) == LAPSE + S
    push = bodies[(pid, "push")]
    assert (push["address_kind"], push["address_blind_index"]) == ("profile", None)
    addresses = {(q.payload["profile_id"], q.payload["channel"]): q.payload for q in shown.requests}
    assert addresses[(pid, "email")]["address"] == "lapse@example.com"
    assert addresses[(us, "sms")]["address"] == "+12025550143"
    assert "address" not in addresses[(pid, "push")]


async def test_a_renewed_or_withdrawn_grant_is_not_announced(client, keys, platform):
    for email in ("renewed@example.com", "withdrawn@example.com", "kept@example.com"):
        await customer(client, keys, email)
        await consent(client, keys, T0, email=email)
    await consent(client, keys, T0 + timedelta(days=10), email="renewed@example.com")
    await consent(client, keys, T0 + timedelta(days=5), "withdrawn", email="withdrawn@example.com")
    with_period(platform)

    assert await announce_lapses(platform, now=LAPSE + S) == 1
    renewal_lapses = LAPSE + timedelta(days=10)
    assert await announce_lapses(platform, now=renewal_lapses + S) == 1  # the renewal's own
    assert await announce_lapses(platform, now=renewal_lapses + timedelta(days=900)) == 0
    bidx = platform.keys.indexer.email
    got = [(e.address_bidx, e.occurred_at) for e in await lapsed_events(platform)]
    assert got == [(bidx("kept@example.com"), LAPSE), (bidx("renewed@example.com"), renewal_lapses)]


async def test_an_erased_customer_is_not_announced(client, keys, platform):
    gone = await customer(client, keys, "erased@example.com", phone="+79165550001")
    pid = await customer(client, keys, "kept@example.com")
    await consent(client, keys, T0, email="kept@example.com")
    await consent(client, keys, T0, email="erased@example.com")
    await consent(client, keys, T0, phone="+79165550001", channel="sms")
    await consent(client, keys, T0, profile_id=gone, channel="push")  # the profile's own
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": "erased@example.com", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    await run_pending(platform)
    with_period(platform)
    assert await announce_lapses(platform, now=LAPSE + S) == 1
    [event] = await lapsed_events(platform)
    assert str(event.profile_id) == pid


async def test_a_lapse_is_ordered_with_the_addresses_other_events(client, keys, platform):
    """Its order key is the address's: a renewal after it is sent after it."""
    await customer(client, keys, "order@example.com")
    await consent(client, keys, T0, email="order@example.com")
    with_period(platform)
    await announce_lapses(platform, now=datetime.now(UTC))
    await consent(client, keys, datetime.now(UTC) - S, email="order@example.com")
    oe = outbox_events.c
    async with platform.db.read() as conn:
        rows = (
            await conn.execute(
                select(oe.kind, oe.order_key).where(oe.recorded_at > T0).order_by(oe.seq)
            )
        ).all()
    bidx = platform.keys.indexer.email("order@example.com")
    mine = [kind for kind, key in rows if key == bidx]
    assert mine[-2:] == ["consent.lapsed", "consent.granted"]


async def test_a_grant_already_lapsed_when_recorded_is_announced(client, keys, platform):
    """An import of grants dated years ago, after the pass went past their time."""
    with_period(platform)
    await customer(client, keys, "first@example.com")
    await consent(client, keys, T0, email="first@example.com")
    assert await announce_lapses(platform, now=LAPSE + S) == 1
    await customer(client, keys, "old.import@example.com")
    await consent(client, keys, T0 - timedelta(days=365), email="old.import@example.com")
    assert await announce_lapses(platform, now=LAPSE + 2 * S) == 1
    assert await announce_lapses(platform, now=LAPSE + 3 * S) == 0
    last = (await lapsed_events(platform))[-1]
    assert last.address_bidx == platform.keys.indexer.email("old.import@example.com")
    assert last.occurred_at == T0 - timedelta(days=365 - DAYS)


async def test_a_period_set_changed_or_removed(client, keys, platform):
    """Set: every grant lapsed by then, in batches. Shortened: those between the two cuts.
    Removed: nothing. Lengthened: a grant in force again is not announced again when it lapses
    again (once per grant), one that never lapsed is announced when it does."""
    emails = [f"c{n}@example.com" for n in range(7)]
    for n, email in enumerate(emails):  # one grant a day, from T0
        await customer(client, keys, email)
        await consent(client, keys, T0 + timedelta(days=n), email=email)
    shipped = platform.policy
    now = T0 + timedelta(days=DAYS + 3) + S  # c0..c3 lapsed under DAYS
    assert await announce_lapses(platform, now=now) == 0  # no period: nothing lapses
    with_period(platform)
    assert await announce_lapses(platform, now=now, batch=2) == 4  # the burst, 2 a step
    platform.policy = with_validity(shipped, DAYS - 2, RU=DAYS - 2)  # c4, c5 now lapsed too
    assert await announce_lapses(platform, now=now, batch=2) == 2
    platform.policy = shipped  # removed: c6 lapsing under any period says nothing
    assert await announce_lapses(platform, now=now + timedelta(days=400)) == 0
    platform.policy = with_validity(shipped, DAYS + 10, RU=DAYS + 10)  # longer: c0.. in force
    assert await announce_lapses(platform, now=now) == 0
    assert await announce_lapses(platform, now=now + timedelta(days=13)) == 1  # c6 only
    bidx = platform.keys.indexer.email
    events = await lapsed_events(platform)
    assert [e.address_bidx for e in events] == [bidx(e) for e in emails]
    assert events[-1].occurred_at == T0 + timedelta(days=6 + DAYS + 10)


def eu_and_us_period(p) -> None:  # type: ignore[no-untyped-def]
    """A period in the EU and the US (marketing sms is opt-in there), none in Russia."""
    p.policy = with_validity(p.policy, DAYS, EU=DAYS, US=DAYS)


async def test_a_grant_lapsed_under_the_rules_a_customer_moves_to_is_announced(
    client, keys, platform
):
    """A RU customer (no period) granted long ago, and the EU's watermark passed the grant; a
    record puts them under EU rules: the grant has lapsed there, and the next pass says so,
    once, however often they move back and forth. Not a grant renewed since or withdrawn, nor
    one whose lapse was announced under the rules the customer left (the same period)."""
    eu_and_us_period(platform)
    pid = await customer(client, keys, "mover@example.com")
    await consent(client, keys, T0, email="mover@example.com")
    await consent(client, keys, T0 + S, profile_id=pid, channel="push")
    for email in ("renewed@example.com", "withdrawn@example.com"):
        await customer(client, keys, email)
        await consent(client, keys, T0, email=email)
    now = datetime.now(UTC)
    await consent(client, keys, now - timedelta(days=1), email="renewed@example.com")
    await consent(client, keys, T0 + 5 * S, "withdrawn", email="withdrawn@example.com")
    us = await customer(client, keys, "us@example.com", "US", phone="+12025550143")
    await consent(client, keys, T0, phone="+12025550143", channel="sms")
    assert await announce_lapses(platform, now=now) == 1  # the US sms; RU's lapse nothing

    movers = ("mover@example.com", "renewed@example.com", "withdrawn@example.com", us)
    for email in movers[:3]:
        await customer(client, keys, email, "EU")
    await customer(client, keys, "us@example.com", "EU")
    assert await announce_lapses(platform, now=now) == 2  # the mover's email and push
    assert await announce_lapses(platform, now=now) == 0
    for jurisdiction in ("RU", "EU", "US", "EU"):  # back and forth: announced already
        await customer(client, keys, "mover@example.com", jurisdiction)
        assert await announce_lapses(platform, now=now) == 0

    bidx = platform.keys.indexer
    got = [
        (str(e.profile_id), e.channel, e.address_bidx, e.occurred_at)
        for e in await lapsed_events(platform)
    ]
    assert got == [
        (us, "sms", bidx.phone("+12025550143"), LAPSE),
        (pid, "email", bidx.email("mover@example.com"), LAPSE),
        (pid, "push", None, LAPSE + S),
    ]


async def test_an_address_an_unmerge_gives_back_is_announced_under_its_holders_rules(
    client, keys, platform
):
    """An EU customer's address, merged into a RU customer, was under RU rules (no period) when
    the EU's watermark passed its grant; the unmerge gives it back to the EU customer: the
    next pass announces its lapse, once."""
    phone, email = "+79161230001", "eva.split@example.com"
    await record(client, keys, phone=phone, jurisdiction="RU")
    eu = (await record(client, keys, email=email, jurisdiction="EU"))["profile_id"]
    await consent(client, keys, T0, email=email)
    merged = await record(client, keys, email=email, phone=phone)  # the older one survives
    assert merged["merged_profile_ids"] == [eu]
    eu_and_us_period(platform)
    now = datetime.now(UTC)
    assert await announce_lapses(platform, now=now) == 0  # under RU rules while merged

    r = await client.post(f"/v1/profiles/{eu}/unmerge", headers=keys["admin"])
    assert r.status_code == 200, r.text
    assert await announce_lapses(platform, now=now) == 1
    assert await announce_lapses(platform, now=now) == 0
    [event] = await lapsed_events(platform)
    assert (str(event.profile_id), event.address_bidx, event.occurred_at) == (
        eu,
        platform.keys.indexer.email(email),
        LAPSE,
    )


async def test_an_address_a_merge_brings_to_a_customer_under_a_period_is_announced(
    client, keys, platform
):
    """A RU customer's address (no period there) merges into an older EU customer: its grant,
    which the EU's watermark passed while RU rules held it, has lapsed under the EU's, and the
    next pass says so, once."""
    phone, email = "+4915112340002", "ru.merged@example.com"
    eu = (await record(client, keys, phone=phone, jurisdiction="EU"))["profile_id"]
    await record(client, keys, email=email, jurisdiction="RU")
    await consent(client, keys, T0, email=email)
    eu_and_us_period(platform)
    now = datetime.now(UTC)
    assert await announce_lapses(platform, now=now) == 0  # under RU rules

    merged = await record(client, keys, email=email, phone=phone)
    assert merged["profile_id"] == eu  # the older survives, under EU rules (both given)
    assert await announce_lapses(platform, now=now) == 1
    assert await announce_lapses(platform, now=now) == 0
    [event] = await lapsed_events(platform)
    assert (str(event.profile_id), event.address_bidx, event.occurred_at) == (
        eu,
        platform.keys.indexer.email(email),
        LAPSE,
    )


async def test_racing_passes_announce_each_move_once(client, keys, platform, db_url, tmp_path):
    """Forty customers moved under a period in one batch, their moves read three at a time by
    passes of two processes, two of each at once: each lapse once."""
    emails = [f"moved{n}@example.com" for n in range(40)]

    async def batch(jurisdiction: str) -> None:
        records = [{"source": "crm", "email": e, "jurisdiction": jurisdiction} for e in emails]
        r = await client.post(
            "/v1/profiles/batch", json={"records": records}, headers=keys["ingest"]
        )
        assert r.status_code in (200, 201, 207), r.text

    await batch("RU")
    for n, email in enumerate(emails):
        await consent(client, keys, T0 + n * S, email=email)
    eu_and_us_period(platform)
    now = datetime.now(UTC)
    assert await announce_lapses(platform, now=now) == 0
    await batch("EU")
    other = await open_platform(make_settings(db_url, tmp_path / "other"), run_migrations=False)
    other.policy = platform.policy
    try:
        await asyncio.gather(*(announce_lapses(p, now=now, moves=3) for p in (platform, other) * 2))
        await announce_lapses(platform, now=now, moves=3)  # after a pass that met another
    finally:
        await other.close()
    events = await lapsed_events(platform)
    bidx = platform.keys.indexer.email
    assert sorted(e.address_bidx for e in events) == sorted(bidx(e) for e in emails)


async def test_racing_passes_announce_each_lapse_once(client, keys, platform, db_url, tmp_path):
    """Passes of two processes (two platforms on the database) and two of each at once: every
    lapse once, however their small steps interleave."""
    emails = [f"race{n}@example.com" for n in range(40)]
    records = [{"source": "crm", "email": e, "jurisdiction": "RU"} for e in emails]
    r = await client.post("/v1/profiles/batch", json={"records": records}, headers=keys["ingest"])
    assert r.status_code in (200, 201, 207), r.text
    for n, email in enumerate(emails):
        await consent(client, keys, T0 + n * S, email=email)
    with_period(platform)
    other = await open_platform(make_settings(db_url, tmp_path / "other"), run_migrations=False)
    other.policy = platform.policy
    try:
        assert await announce_lapses(platform, now=LAPSE) == 0  # none yet; its watermark is set
        for now in (LAPSE + 20 * S, LAPSE + 60 * S):  # half, then the rest
            await asyncio.gather(
                *(announce_lapses(p, now=now, batch=3) for p in (platform, other) * 2)
            )
            # a pass that met another one stopped: one more after them completes the step
            await announce_lapses(platform, now=now, batch=3)
    finally:
        await other.close()
    events = await lapsed_events(platform)
    bidx = platform.keys.indexer.email
    assert sorted(e.address_bidx for e in events) == sorted(bidx(e) for e in emails)


async def test_the_dispatcher_announces_and_sends_a_lapse(client, keys, platform, receiver):
    """The loop of `cdp serve` and `cdp dispatch`, on the clock."""
    await customer(client, keys, "loop@example.com")
    await consent(client, keys, T0, email="loop@example.com")
    with_period(platform)
    await subscribe(client, keys, receiver, kinds=["consent.lapsed"])
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_dispatcher(platform, stop, dataclasses.replace(FAST, lapse_interval=0.05))
    )
    try:
        await until(lambda: receiver.requests, "the lapse delivered")
    finally:
        stop.set()
        await task
    [request] = receiver.requests
    assert request.payload["kind"] == "consent.lapsed" and request.valid


async def test_consent_lapsed_is_asked_for_by_name(client, keys, receiver, tmp_path: Path):
    r = await client.post("/v1/webhooks", json={"url": receiver.url}, headers=keys["admin"])
    assert r.status_code == 201 and "consent.lapsed" not in r.json()["kinds"]
    r = await client.post(
        "/v1/webhooks",
        json={"url": receiver.url, "kinds": ["consent.lapsed", "opt_out"]},
        headers=keys["admin"],
    )
    assert r.status_code == 201 and r.json()["kinds"] == ["opt_out", "consent.lapsed"]
