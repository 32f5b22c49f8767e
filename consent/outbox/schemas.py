"""Request and response bodies of the webhook API (msgspec; they document the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
Kind = Annotated[str, msgspec.Meta(min_length=1, max_length=32)]


class SubscriptionIn(msgspec.Struct, forbid_unknown_fields=True):
    url: Url
    kinds: (
        Annotated[
            list[Kind],
            msgspec.Meta(
                description="consent.withdrawn, consent.granted, opt_out, erasure.completed, "
                "suppression.added (default: these five, the consent changes); "
                "profile.merged, profile.unmerged (ids only), consent.lapsed (a grant past "
                "its validity period): only when named here",
                max_length=10,
            ),
        ]
        | None
    ) = None
    include_address: Annotated[
        bool,
        msgspec.Meta(
            description="send the email or phone itself (decrypted at delivery) next to its "
            "blind index, also for an opt-out of an address no customer held; off by default"
        ),
    ] = False
    description: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class DeliveryCounts(msgspec.Struct):
    pending: int = 0
    delivered: int = 0
    dead: int = 0
    cancelled: int = 0


class SubscriptionOut(msgspec.Struct, omit_defaults=True):
    id: str
    url: str
    kinds: list[str]
    include_address: bool
    description: str | None
    created_at: datetime
    created_by: str
    secret: str | None = None  # only in the answer to POST (or a rotation), never again
    deliveries: DeliveryCounts | None = None
    previous_secret_expires_at: Annotated[
        datetime | None,
        msgspec.Meta(
            description="after a rotation: until when the replaced secret signs too (absent "
            "once it has stopped)"
        ),
    ] = None
    unqueued_since: Annotated[
        datetime | None,
        msgspec.Meta(
            description="when the oldest event not yet queued for the subscriptions was "
            "recorded (the dispatcher queues each event for the subscriptions live then); "
            "absent when every event is queued. Shown by GET /v1/webhooks/{id}"
        ),
    ] = None


MAX_OVERLAP_SECONDS = 7 * 24 * 3600


class RotateIn(msgspec.Struct, forbid_unknown_fields=True):
    overlap_seconds: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            le=MAX_OVERLAP_SECONDS,
            description="how long the replaced secret goes on signing beside the new one "
            "(default 86400: a day; at most 604800: a week; 0: stop at once)",
        ),
    ] = 24 * 3600


class SubscriptionList(msgspec.Struct):
    items: list[SubscriptionOut]
    next_cursor: str | None


class AttemptOut(msgspec.Struct):
    number: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryOut(msgspec.Struct):
    delivery_id: str
    event_id: str
    kind: str
    status: str  # pending | delivered | dead | cancelled
    attempts: int
    total_attempts: int
    replays: int
    last_status_code: int | None
    last_error: str | None
    occurred_at: datetime
    recorded_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime | None
    lag_ms: Annotated[
        int | None, msgspec.Meta(description="delivered_at - occurred_at, in milliseconds")
    ]
    dispatch_lag_ms: Annotated[
        int | None, msgspec.Meta(description="delivered_at - recorded_at, in milliseconds")
    ]
    history: list[AttemptOut]


class DeliveryList(msgspec.Struct):
    items: list[DeliveryOut]
    next_cursor: str | None
