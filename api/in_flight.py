"""A bound on the requests one process answers at once (CDP_MAX_REQUESTS_IN_FLIGHT).

Each request may buffer a body of up to CDP_MAX_BODY_BYTES, and nothing bounded how many did:
100 clients each sending 8 MiB but the last bytes took `cdp serve` from 121 MB to 922 MB, and
more clients would have taken more. Beyond the bound a request is answered at once with 503, a
problem and Retry-After, before its body is read, its key looked up or its JSON decoded.

Opt-outs (a route whose opt has `IN_FLIGHT: OPT_OUT`: POST /v1/opt-outs, the one-click
unsubscribe, an inbound SMS) have a share of their own on top, a quarter of the bound, and use
the common slots when theirs are taken: an opt-out is honoured at once (DESIGN.md), so a flood
of ingests cannot shed it. Health checks and metrics (`IN_FLIGHT: UNBOUNDED`) are not counted:
they read no body, and a load balancer that saw a busy instance's /health answer 503 would take
it out of rotation and send its load to the others.

One client takes at most half of the common slots (`client_share`), so that one tool's flood
(a sending tool running exports in a loop, an import script with a hundred connections) leaves
the others room: it is shed with the same 503 while another client is answered. A client is its
credential (the Authorization header, by a digest of it: no key is looked up before the bound),
else, without one (a preference centre page, the console's sign-in), its network address.

uvicorn's own `limit_concurrency` does not do this: it counts open connections with requests
(idle keep-alive connections fill it), keeps no share for anything, and answers a plain-text
503 without Retry-After.
"""

from __future__ import annotations

import hashlib

from litestar import Request
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from api.errors import problem

IN_FLIGHT = "in_flight"  # the route opt key
OPT_OUT = "opt_out"
UNBOUNDED = "unbounded"
OPT_OUTS = {IN_FLIGHT: OPT_OUT}  # a route's opt: an opt-out, with its share of the bound
NOT_COUNTED = {IN_FLIGHT: UNBOUNDED}  # a route's opt: health and metrics
RETRY_AFTER_SECONDS = 1
DETAIL = "the service is answering as many requests as it takes at once: send it again shortly"


def opt_out_share(limit: int) -> int:
    """The slots kept for opt-outs on top of `limit`."""
    return max(1, limit // 4)


def client_share(limit: int) -> int:
    """The common slots one client may hold at once."""
    return max(1, limit // 2)


def client_of(scope: Scope) -> tuple[str, bytes | str]:
    """Who sends the request: its credential's digest, else its network address."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return "credential", hashlib.blake2b(value, digest_size=16).digest()
    client = scope.get("client")
    return "address", client[0] if client else ""


class InFlightBound(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.opt_out_limit = opt_out_share(limit)
        self.client_limit = client_share(limit)
        self.common = 0  # requests in flight in the common slots
        self.opt_outs = 0  # and in the opt-outs' own
        self.by_client: dict[tuple[str, bytes | str], int] = {}  # common slots, per client

    @property
    def in_flight(self) -> int:
        return self.common + self.opt_outs

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        kind = scope["route_handler"].opt.get(IN_FLIGHT)
        if kind == UNBOUNDED:
            await next_app(scope, receive, send)
            return
        # taken and given back in this task with no await between test and change: no lock
        client = None
        if kind == OPT_OUT and self.opt_outs < self.opt_out_limit:
            self.opt_outs += 1
        elif self.common < self.limit:
            client = client_of(scope)
            held = self.by_client.get(client, 0)
            if held >= self.client_limit:
                await shed(scope, receive, send)
                return
            self.common += 1
            self.by_client[client] = held + 1
        else:
            await shed(scope, receive, send)
            return
        try:
            await next_app(scope, receive, send)
        finally:
            if client is None:
                self.opt_outs -= 1
            else:
                self.common -= 1
                left = self.by_client[client] - 1
                if left:
                    self.by_client[client] = left
                else:
                    del self.by_client[client]


async def shed(scope: Scope, receive: Receive, send: Send) -> None:
    """The 503, before the request's body is read (uvicorn drops what the client still sends
    of it and keeps the connection)."""
    answer = problem(503, DETAIL, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    request: Request = Request(scope, receive, send)
    await answer.to_asgi_response(None, request)(scope, receive, send)
