"""The Litestar application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from api.auth import auth_guard
from api.background import background_services
from api.controllers.audit import AuditController
from api.controllers.consents import (
    inbound_sms,
    post_consent,
    post_opt_out,
    unsubscribe_now,
    unsubscribe_page,
)
from api.controllers.console import ConsoleController, with_console_sessions
from api.controllers.dsr import ErasureRequestController, post_access_request
from api.controllers.events import post_event
from api.controllers.matching import MATCHING_ROUTES
from api.controllers.metrics import PROMETHEUS, metrics
from api.controllers.preferences import PreferenceCentre, post_preference_link
from api.controllers.profiles import ProfileController
from api.controllers.segments import SegmentController
from api.controllers.system import health, live
from api.controllers.webhooks import WebhookController
from api.deps import provide_platform, provide_principal
from api.errors import EXCEPTION_HANDLERS
from api.i18n import template_config
from api.in_flight import InFlightBound
from api.nul_guard import refuse_nul_text
from api.openapi import (
    document_batch_records,
    document_closed_bodies,
    document_problems,
    document_unions,
)
from api.options import answer_options
from api.query_params import refuse_repeated_query
from api.requests import ApiRequest
from api.workers import open_worker_platform
from cdp.platform import Platform, open_platform
from cdp.settings import Settings

ROUTES = [
    AuditController,
    health,
    live,
    metrics,
    ProfileController,
    post_event,
    post_consent,
    post_opt_out,
    unsubscribe_page,
    unsubscribe_now,
    inbound_sms,
    ErasureRequestController,
    post_access_request,
    post_preference_link,
    SegmentController,
    WebhookController,
    *MATCHING_ROUTES,
    PreferenceCentre,
    ConsoleController,
]


async def before_request(request: Request) -> Response | None:
    """OPTIONS is answered here (`api.options`); every other request has its query and text
    checked."""
    answer = answer_options(request)
    if answer is None:
        refuse_repeated_query(request)
        await refuse_nul_text(request)
    return answer


def create_app(
    settings: Settings | None = None, platform: Platform | None = None, *, worker: bool = False
) -> Litestar:
    """An app over `platform` (tests pass one) or one opened from `settings` at start-up.
    `worker`: one of the processes of `cdp serve --workers N` (`api.workers`), whose supervisor
    has applied the migrations and runs the background services."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if platform is not None:  # owned by the caller (tests, benchmarks)
            yield
            return
        opener = open_worker_platform if worker else open_platform
        app.state.platform = p = await opener(settings or Settings.from_env())
        try:
            async with nullcontext() if worker else background_services(p):
                yield
        finally:
            await p.close()

    # `settings` with a platform: the app's own (tests bound its requests in flight)
    configured = settings or (platform.settings if platform else Settings.from_env())
    max_body = configured.max_body_bytes
    # request figures cost every request (20-28 % of a trivial one, in process): only when
    # something scrapes them (api.controllers.metrics)
    # the bound on requests in flight first: a request beyond it costs nothing more
    middleware: list[Any] = [InFlightBound(configured.max_in_flight)]
    if configured.metrics_token:
        middleware.append(PROMETHEUS.middleware)
    app = Litestar(
        route_handlers=ROUTES,
        lifespan=[lifespan],
        state=State({"platform": platform}) if platform is not None else None,
        guards=[with_console_sessions(auth_guard)],  # console pages also accept a session
        template_config=template_config(),
        dependencies={
            "platform": Provide(provide_platform, sync_to_thread=False),
            "principal": Provide(provide_principal, sync_to_thread=False),
        },
        request_class=ApiRequest,
        before_request=before_request,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        request_max_body_size=max_body,
        middleware=middleware,
        openapi_config=OpenAPIConfig(
            title="Consent and customer data platform",
            version="1.0.0",
            path="/schema",
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
            ),
            security=[{"bearer": []}],
        ),
        logging_config=None,
    )
    document_problems(app)
    document_batch_records(app)
    document_unions(app)
    document_closed_bodies(app)
    return app
