"""Dispatcher settings, from the environment (tests pass their own, with millisecond delays).

CDP_WEBHOOK_DISPATCHER      "off" keeps `cdp serve` from dispatching (run `cdp dispatch`)
CDP_WEBHOOK_MAX_ATTEMPTS    tries before a delivery becomes dead (default 8)
CDP_WEBHOOK_RETRY_BASE_MS   first retry delay (default 5000); each next one x4
CDP_WEBHOOK_RETRY_CAP_MS    longest retry delay (default 6 h)
CDP_WEBHOOK_TIMEOUT_MS      per request, the whole of it (default 10000)
CDP_WEBHOOK_POLL_MS         how often an idle dispatcher looks for work (default 200)
CDP_WEBHOOK_CONCURRENCY     requests in flight per dispatcher (default 8); one subscription
                            gets at most half of them
CDP_NATS_URL                e.g. nats://127.0.0.1:4222: also publish to NATS JetStream
CDP_NATS_STREAM             stream name (default CDP_CONSENT)
CDP_NATS_SUBJECT_PREFIX     subjects are <prefix>.<kind> (default cdp.consent)
CDP_WEBHOOK_ALLOW_PRIVATE   1: deliveries may reach private addresses even in production (for
                            receivers inside the same network); 0: never, even in development

Retention (`consent.outbox.retention`, run by the dispatcher every CDP_RETENTION_INTERVAL_S):
CDP_WEBHOOK_KEEP_DELIVERED_DAYS  delivered deliveries, and unused events (default 30)
CDP_WEBHOOK_KEEP_DEAD_DAYS       dead and cancelled deliveries (default 90)
CDP_SEGMENT_EXPORT_KEEP_DAYS     segment export records (default 180)
CDP_RETENTION_INTERVAL_S         seconds between prunes (default 3600; 0 turns them off)

Consent lapses (`consent.outbox.lapses`, run by the dispatcher every CDP_LAPSE_INTERVAL_S):
CDP_LAPSE_INTERVAL_S        seconds between passes announcing grants past their validity period
                            (default 60; 0 turns them off)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from cdp.settings import env_flag, env_number


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    max_attempts: int = 8
    retry_base: float = 5.0  # seconds
    retry_factor: float = 4.0
    retry_cap: float = 6 * 3600.0
    timeout: float = 10.0
    lease: float = 120.0  # a claimed delivery not finished by then is retried by anyone
    poll_interval: float = 0.2
    min_interval: float = 0.05  # between passes, so a busy dispatcher works in batches
    concurrency: int = 8  # httpx's pool costs more CPU per request the more connections
    batch: int = 200  # leased and not yet answered, per dispatcher
    nats_url: str | None = None
    nats_stream: str = "CDP_CONSENT"
    nats_subject_prefix: str = "cdp.consent"
    in_app: bool = True
    keep_delivered_days: float = 30.0
    keep_dead_days: float = 90.0
    keep_exports_days: float = 180.0
    prune_interval: float = 3600.0  # seconds; 0: no periodic pruning
    prune_batch: int = 1000  # rows per write transaction
    lapse_interval: float = 60.0  # seconds between passes announcing lapses; 0: none
    # Whether deliveries may reach private, loopback and link-local addresses; None: only
    # outside production (consent.outbox.targets)
    allow_private: bool | None = None

    @property
    def per_subscription(self) -> int:
        """Deliveries of one subscription a dispatcher holds at once (in flight or waiting for
        a request slot): half the slots, so one hanging receiver leaves the rest to others."""
        return max(1, self.concurrency // 2)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DispatchConfig:
        """The settings above; one that cannot work raises InvalidInput naming it."""
        e = os.environ if env is None else env
        base = cls()

        def ms(name: str, default: float) -> float:
            return env_number(e, name, default * 1000, whole=True, least=1) / 1000

        def days(name: str, default: float) -> float:
            return env_number(e, name, default)

        return cls(
            max_attempts=int(
                env_number(e, "CDP_WEBHOOK_MAX_ATTEMPTS", base.max_attempts, whole=True, least=1)
            ),
            retry_base=ms("CDP_WEBHOOK_RETRY_BASE_MS", base.retry_base),
            retry_cap=ms("CDP_WEBHOOK_RETRY_CAP_MS", base.retry_cap),
            timeout=ms("CDP_WEBHOOK_TIMEOUT_MS", base.timeout),
            poll_interval=ms("CDP_WEBHOOK_POLL_MS", base.poll_interval),
            concurrency=int(
                env_number(e, "CDP_WEBHOOK_CONCURRENCY", base.concurrency, whole=True, least=1)
            ),
            nats_url=e.get("CDP_NATS_URL") or None,
            nats_stream=e.get("CDP_NATS_STREAM") or base.nats_stream,
            nats_subject_prefix=e.get("CDP_NATS_SUBJECT_PREFIX") or base.nats_subject_prefix,
            in_app=bool(env_flag(e, "CDP_WEBHOOK_DISPATCHER", True)),
            keep_delivered_days=days("CDP_WEBHOOK_KEEP_DELIVERED_DAYS", base.keep_delivered_days),
            keep_dead_days=days("CDP_WEBHOOK_KEEP_DEAD_DAYS", base.keep_dead_days),
            keep_exports_days=days("CDP_SEGMENT_EXPORT_KEEP_DAYS", base.keep_exports_days),
            prune_interval=env_number(e, "CDP_RETENTION_INTERVAL_S", base.prune_interval),
            lapse_interval=env_number(e, "CDP_LAPSE_INTERVAL_S", base.lapse_interval),
            allow_private=env_flag(e, "CDP_WEBHOOK_ALLOW_PRIVATE", None),
        )
