"""One explicit mapping from errors to RFC 9457 problem details.

Nothing here echoes a stack trace, a secret, or a submitted value: only field names and our
own fixed messages.
"""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import Empty

from cdp.crypto.fields import CryptoError
from cdp.crypto.master import WrongMasterKeyError
from cdp.db.availability import KeyStoreDown, database_unavailable, error_code, write_refused
from cdp.db.conflicts import is_lock_table_full, is_transient_conflict
from cdp.errors import DomainError, FieldError, decoded_field_error
from cdp.keyring import MASTER_KEY_ROTATED
from cdp.validation import every_error
from consent.tokens import TokenError

log = structlog.get_logger("api.errors")
PROBLEM = "application/problem+json"
_TITLES = {
    400: "Invalid input",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    410: "Gone",
    413: "Request body too large",
    415: "Unsupported media type",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


def problem(
    status: int,
    detail: str,
    errors: list[FieldError] | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": f"https://cdp.example/problems/{status}",
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if errors is not None or status == 400:
        body["errors"] = [{"field": e.field, "message": e.message} for e in errors or []]
    return Response(body, status_code=status, media_type=PROBLEM, headers=headers)


def on_domain_error(_: Request, exc: DomainError) -> Response:
    return problem(exc.status, exc.detail, exc.errors if exc.status == 400 else None, exc.title)


def on_token_error(_: Request, exc: TokenError) -> Response:
    return problem(404, "unknown or invalid link")


def _error_of(item: dict[str, Any]) -> FieldError:
    """Litestar names the root of a body after the handler's `data` parameter, and a request
    without a body is its KeyError for `data`."""
    key, message = item.get("key"), str(item.get("message", "invalid"))
    if item.get("source") == "body" and key == "data":
        if message == "'data'":
            return FieldError("body", "required: the request has no body")
        key = ""
    return decoded_field_error(message, key)


def _body_errors(request: Request) -> list[FieldError]:
    """Every bad field of the request's JSON body (cdp.validation), where Litestar's
    conversion names the first only; none where the body was not read as JSON."""
    handler = request.scope.get("route_handler")
    data = getattr(handler, "parsed_data_field", None)
    body = request._connection_state.json  # what Request.json() decoded, kept for the scope
    if data is None or body is Empty:
        return []
    # as Litestar converts: its signature model is lax (strict=False)
    return [
        decoded_field_error(message, path)
        for message, path in every_error(body, data.annotation, strict=False)
    ]


def on_validation(request: Request, exc: ValidationException) -> Response:
    items = [i for i in (exc.extra if isinstance(exc.extra, list) else []) if isinstance(i, dict)]
    in_body = [i for i in items if i.get("source") == "body"]
    errors = [_error_of(i) for i in items if i.get("source") != "body"]
    if in_body:
        errors += _body_errors(request) or [_error_of(i) for i in in_body]
    if not errors:
        errors.append(FieldError("body", "not valid JSON for this endpoint"))
    detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return problem(400, detail, errors)


def on_http(_: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    detail = exc.detail if status < 500 else "internal error"
    if status == 413:
        detail = "the request body is larger than the limit"
    if status == 400:  # the body could not be decoded at all (msgspec names a position only)
        error = FieldError("body", f"not valid JSON ({detail})")
        return problem(400, f"body: {error.message}", [error])
    # the headers HTTP asks of the answer: Allow with a 405, WWW-Authenticate with a 401
    return problem(status, detail, headers=dict(exc.headers or {}))


def _route(request: Request) -> str:
    """The route a request took (`/preferences/{token:str}`), never its path: a link's path is
    its token, a key to a customer's preferences and data."""
    return request.scope.get("path_template") or "(no route)"


def on_unexpected(request: Request, exc: Exception) -> Response:
    if is_lock_table_full(exc):  # too many writes at once for max_locks_per_transaction
        log.error("lock_table_full", route=_route(request), error=type(exc).__name__)
        return problem(503, LOCK_TABLE_FULL, headers={"Retry-After": "1"})
    if is_transient_conflict(exc):  # PostgreSQL aborted the write to break a deadlock
        log.warning("write_conflict", route=_route(request), error=type(exc).__name__)
        return problem(
            503,
            "a concurrent write conflicted with this one; nothing was stored: send it again",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, KeyStoreDown):  # its message names CDP_KEY_STORE_URL, nothing else
        log.error(
            "key_store_unavailable", route=_route(request), error=type(exc.__cause__).__name__
        )
        return problem(503, str(exc), headers={"Retry-After": "5"})
    if (why := write_refused(exc)) is not None:  # full or read-only: an operator must act
        log.error("database_refused_write", route=_route(request), error=type(exc).__name__)
        detail = f"the database cannot store changes now ({why})"
        return problem(503, detail, headers={"Retry-After": "30"})
    if database_unavailable(exc):  # stopped, restarting, refusing connections: it comes back
        log.error(
            "database_unavailable",
            route=_route(request),
            error=type(exc).__name__,
            code=error_code(exc),
        )
        return problem(503, "the database is not reachable", headers={"Retry-After": "5"})
    if isinstance(exc, WrongMasterKeyError):  # `cdp keys rotate-master` ran while this served
        log.error("master_key_out_of_date", route=_route(request))
        return problem(503, MASTER_KEY_ROTATED)
    if isinstance(exc, CryptoError):  # our own message: the place and the profile's id
        log.error("undecryptable", route=_route(request), error=type(exc).__name__, detail=str(exc))
        return problem(500, "internal error")
    # the type and the database's code only (a statement it refused: too deep, too many bound
    # values; cdp.db.availability): exception messages may hold bound parameters (personal data)
    log.error(
        "unhandled_error", route=_route(request), error=type(exc).__name__, code=error_code(exc)
    )
    return problem(500, "internal error")


LOCK_TABLE_FULL = (
    "the database has no lock left for this write among the others in progress; nothing was "
    "stored: send it again"
)

EXCEPTION_HANDLERS = {
    DomainError: on_domain_error,
    TokenError: on_token_error,
    ValidationException: on_validation,
    HTTPException: on_http,
    Exception: on_unexpected,
}
