"""Webhook subscriptions for consent changes, and their delivery status (role admin)."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.params import FromPath, FromQuery, JSONBody

from api.auth import roles
from api.deps import PlatformDep, PrincipalDep
from api.params import Limit
from consent.outbox import status as delivery_status
from consent.outbox import subscriptions
from consent.outbox.schemas import (
    DeliveryList,
    RotateIn,
    SubscriptionIn,
    SubscriptionList,
    SubscriptionOut,
)

ADMIN = roles("admin")


class WebhookController(Controller):
    path = "/v1/webhooks"
    tags = ("webhooks",)

    @post(
        "/",
        opt=ADMIN,
        status_code=201,
        summary="Subscribe a URL to consent events; the signing secret is shown only here",
        response_description="The subscription with its signing `secret` (shown only here)",
    )
    async def create(
        self, data: JSONBody[SubscriptionIn], platform: PlatformDep, principal: PrincipalDep
    ) -> SubscriptionOut:
        return await subscriptions.create(platform, principal, data)

    @get(
        "/",
        opt=ADMIN,
        summary="Live subscriptions, oldest first (cursor-paginated)",
        response_description="A page of live subscriptions",
    )
    async def list_all(
        self,
        platform: PlatformDep,
        limit: Limit = None,
        cursor: FromQuery[str | None] = None,
    ) -> SubscriptionList:
        return await subscriptions.list_all(platform, limit=limit, cursor=cursor)

    @get(
        "/{webhook_id:str}",
        opt=ADMIN,
        summary="One subscription with delivery counts",
        response_description="The subscription with its delivery counts",
    )
    async def read(self, webhook_id: FromPath[str], platform: PlatformDep) -> SubscriptionOut:
        return await subscriptions.get(platform, webhook_id)

    @post(
        "/{webhook_id:str}/rotate-secret",
        opt=ADMIN,
        status_code=200,
        summary="Replace the signing secret; the new one is shown only here",
        description=(
            "Answers the subscription with its new `secret` (shown only in this answer) and "
            "`previous_secret_expires_at`. For `overlap_seconds` (default 86400, at most "
            "604800; 0: none) every request is signed with both secrets, space-separated in "
            "`webhook-signature` (Standard Webhooks), so a receiver holding either accepts it; "
            "after that only the new one signs and the old one is forgotten. Rotating again "
            "during an overlap drops the oldest secret at once. 404 unknown or deleted id."
        ),
        response_description=(
            "The subscription with its new `secret` (shown only here) and when the previous one "
            "stops signing"
        ),
    )
    async def rotate_secret(
        self,
        webhook_id: FromPath[str],
        platform: PlatformDep,
        principal: PrincipalDep,
        data: JSONBody[RotateIn | None] = None,
    ) -> SubscriptionOut:
        return await subscriptions.rotate(platform, principal, webhook_id, data)

    @delete(
        "/{webhook_id:str}",
        opt=ADMIN,
        summary="Unsubscribe: pending deliveries are cancelled, history is kept",
        response_description="The subscription was deleted",
    )
    async def remove(
        self, webhook_id: FromPath[str], platform: PlatformDep, principal: PrincipalDep
    ) -> None:
        await subscriptions.delete(platform, principal, webhook_id)

    @get(
        "/{webhook_id:str}/deliveries",
        opt=ADMIN,
        summary="Deliveries, newest event first: attempts, response codes, lag",
        response_description="A page of deliveries with their attempts, response codes and lag",
    )
    async def deliveries(
        self,
        webhook_id: FromPath[str],
        platform: PlatformDep,
        status: FromQuery[str | None] = None,
        limit: Limit = None,
        cursor: FromQuery[str | None] = None,
    ) -> DeliveryList:
        return await delivery_status.deliveries(
            platform, webhook_id, status=status, limit=limit, cursor=cursor
        )
