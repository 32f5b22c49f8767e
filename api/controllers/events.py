from __future__ import annotations

from litestar import Response, post
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import JSONBody

from api.auth import roles
from api.deps import PlatformDep, PrincipalDep
from api.openapi import NAMES_A_CUSTOMER
from cdp.events import record_event
from cdp.profiles.schemas import EventIn

# what a purchase sent again answers (200), for the OpenAPI document
RECORDED = {
    "event_id": "ord-77",
    "profile_id": "0193a5f2-7c1e-7b3a-9d2e-5f0a1b2c3d4e",
    "created": False,
    "stats_currency": "RUB",
    "in_total_spent": True,
}


@post(
    "/v1/events",
    opt={**roles("admin", "ingest"), **NAMES_A_CUSTOMER},
    tags=["events"],
    summary="Record a behavioural event (idempotent on source + event_id)",
    description=(
        "201 when the event is new, 200 when it was already recorded. 409 when another event"
        " was recorded under the same source and event_id: one whose type, amount or currency"
        " differ (a refund sent under its order's id) is not a replay, and is not stored; the"
        " detail names those fields. The type is stored trimmed"
        " and lower-cased, the category trimmed, whitespace collapsed and case-folded. A"
        " purchase counts as an order in any currency; customer stats keep `total_spent` in one"
        " currency, the policy's stats currency, so for a purchase or refund the answer also"
        " gives `stats_currency` and `in_total_spent`: false when the event's currency is"
        " another one, whose amount is stored with the event but not added."
    ),
    response_description="The event is new",
    responses={
        200: ResponseSpec(
            dict,
            description="The event was already recorded",
            generate_examples=False,  # Litestar's were random keys and values
            examples=[Example(id="sent_again", summary="A purchase sent again", value=RECORDED)],
        )
    },
)
async def post_event(
    data: JSONBody[EventIn], platform: PlatformDep, principal: PrincipalDep
) -> Response[dict]:
    result = await record_event(platform, data, principal.name)
    body = {
        "event_id": result.event_id,
        "profile_id": str(result.profile_id),
        "created": result.created,
    }
    if result.in_total_spent is not None:
        body["stats_currency"] = platform.policy.stats_currency
        body["in_total_spent"] = result.in_total_spent
    return Response(body, status_code=201 if result.created else 200)
