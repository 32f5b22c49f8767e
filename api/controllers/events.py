from __future__ import annotations

from litestar import Response, post
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody

from api.auth import roles
from api.deps import PlatformDep, PrincipalDep
from cdp.events import record_event
from cdp.profiles.schemas import EventIn


@post(
    "/v1/events",
    opt=roles("admin", "ingest"),
    tags=["events"],
    summary="Record a behavioural event (idempotent on source + event_id)",
    description="201 when the event is new, 200 when it was already recorded.",
    responses={200: ResponseSpec(dict, description="The event was already recorded")},
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
    return Response(body, status_code=201 if result.created else 200)
