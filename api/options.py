"""OPTIONS on any path answers 204 with the methods the path allows (`Allow`), to any caller.

Litestar adds an OPTIONS handler to every path. The app's fail-closed role check refused it
(401 without a key, and 403 even to a key whose role may use the path), and the handler's
`Allow` was computed before the path's other handlers were registered (`/v1/segments` said
POST only). The methods are no secret: the OpenAPI document publishes them.
"""

from __future__ import annotations

from litestar import Request, Response
from litestar.handlers.base import BaseRouteHandler


def is_framework_options(handler: BaseRouteHandler) -> bool:
    """Litestar's own OPTIONS handler (`HTTPRoute.create_options_handler`)."""
    fn = getattr(handler, "fn", None)
    return getattr(fn, "__qualname__", "").startswith("HTTPRoute.create_options_handler.")


def answer_options(request: Request) -> Response | None:
    """The answer to OPTIONS, or None for any other request."""
    handler = request.route_handler
    if not is_framework_options(handler):
        return None
    methods = set().union(*(request.app.route_handler_method_map[p] for p in handler.paths))
    return Response(None, status_code=204, headers={"Allow": ", ".join(sorted(methods))})
