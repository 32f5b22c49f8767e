"""The documented receiver check: a genuine request passes; a forged, altered or stale one is
detected. And retry delays grow exponentially, with jitter, up to a cap."""

from __future__ import annotations

import random
import time

import httpx
import pytest

from consent.outbox import signing
from consent.outbox.config import DispatchConfig
from consent.outbox.delivery import retry_delay
from consent.outbox.receiver import Receiver

BODY = b'{"event_id":"01890000-0000-7000-8000-000000000000","kind":"opt_out"}'
MSG_ID = "01890000-0000-7000-8000-000000000000"


def test_the_signature_matches_the_standard_webhooks_construction():
    import base64
    import hashlib
    import hmac

    secret = signing.new_secret()
    assert secret.startswith("whsec_")
    key = base64.b64decode(secret.removeprefix("whsec_"))
    h = signing.headers(signing.secret_key(secret), MSG_ID, BODY, timestamp=1_700_000_000)
    mac = hmac.new(key, f"{MSG_ID}.1700000000.".encode() + BODY, hashlib.sha256).digest()
    assert h == {
        "webhook-id": MSG_ID,
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }
    signing.verify(secret, h, BODY, now=1_700_000_010)


@pytest.mark.parametrize(
    "forge",
    [
        "other_secret",
        "altered_body",
        "altered_id",
        "stale",
        "no_signature",
        "wrong_version",
    ],
)
def test_forgeries_are_detected(forge: str):
    secret = signing.new_secret()
    key = signing.secret_key(secret)
    now = int(time.time())
    body, msg_id, ts = BODY, MSG_ID, now
    signer = key
    if forge == "other_secret":
        signer = signing.secret_key(signing.new_secret())
    h = signing.headers(signer, msg_id, body, timestamp=ts - (600 if forge == "stale" else 0))
    if forge == "altered_body":
        body = body.replace(b"opt_out", b"consent.granted")
    if forge == "altered_id":
        h["webhook-id"] = MSG_ID[:-1] + "1"
    if forge == "no_signature":
        del h["webhook-signature"]
    if forge == "wrong_version":
        h["webhook-signature"] = h["webhook-signature"].replace("v1,", "v2,")
    with pytest.raises(signing.SignatureError):
        signing.verify(secret, h, body)


def test_any_of_several_signatures_may_match_during_a_secret_rotation():
    old, new = signing.new_secret(), signing.new_secret()
    h = signing.headers(signing.secret_key(new), MSG_ID, BODY)
    other = signing.sign(signing.secret_key(old), MSG_ID, int(h["webhook-timestamp"]), BODY)
    h["webhook-signature"] = f"{other} {h['webhook-signature']}"
    signing.verify(new, h, BODY)
    signing.verify(old, h, BODY)


async def test_the_reference_receiver_refuses_forged_requests_over_http():
    secret = signing.new_secret()
    receiver = Receiver(secret)
    await receiver.start()
    try:
        async with httpx.AsyncClient() as http:
            good = signing.headers(signing.secret_key(secret), MSG_ID, BODY)
            forged = signing.headers(signing.secret_key(signing.new_secret()), MSG_ID, BODY)
            r1 = await http.post(receiver.url, content=BODY, headers=forged)
            r2 = await http.post(receiver.url, content=BODY + b" ", headers=good)
            r3 = await http.post(receiver.url, content=BODY, headers=good)
    finally:
        await receiver.stop()
    assert (r1.status_code, r2.status_code, r3.status_code) == (401, 401, 200)
    assert [r.valid for r in receiver.requests] == [False, False, True]
    assert receiver.seen == {MSG_ID}


def test_retry_delays_grow_exponentially_with_jitter_up_to_the_cap():
    cfg = DispatchConfig(retry_base=5.0, retry_factor=4.0, retry_cap=3600.0)
    rng = random.Random(7)
    for attempt, full in [(1, 5.0), (2, 20.0), (3, 80.0), (4, 320.0), (5, 1280.0), (6, 3600.0)]:
        delays = [retry_delay(attempt, cfg, rng) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1  # jittered, so failed receivers are not hit in lockstep
    assert retry_delay(30, cfg, rng) <= 3600.0


def test_the_environment_configures_the_dispatcher():
    cfg = DispatchConfig.from_env(
        {
            "CDP_WEBHOOK_MAX_ATTEMPTS": "5",
            "CDP_WEBHOOK_RETRY_BASE_MS": "2",
            "CDP_NATS_URL": "nats://127.0.0.1:4222",
            "CDP_WEBHOOK_DISPATCHER": "off",
        }
    )
    assert (cfg.max_attempts, cfg.retry_base, cfg.nats_url, cfg.in_app) == (
        5,
        0.002,
        "nats://127.0.0.1:4222",
        False,
    )
    assert DispatchConfig.from_env({}).nats_url is None
