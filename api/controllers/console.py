"""The compliance console: server-rendered pages for compliance officers.

Sign-in: `POST /console/login` with a compliance (or admin) API key typed into a form. The key
is checked once and never stored in the browser: the answer sets a session cookie (HttpOnly,
SameSite=Strict, Path=/console, Secure when the public URL is https) holding the key's name,
role, an expiry and a random session id, HMAC-signed under a key derived from the token key
with its own label. Every request re-checks that the key is still active, so revoking the key
ends its sessions. Every console POST carries a per-session CSRF token (an HMAC of the session
id) in a hidden field; the sign-in form carries one tied to a short-lived pre-login cookie.

Console routes declare roles like every other route (admin, compliance). The app's guard is
wrapped (`with_console_sessions`) so that on console routes a valid session counts as the
credential; without one a bearer key is checked as for the API (API clients, no CSRF needed),
and with neither the answer is 401 with the sign-in form. Reads of personal data (a customer's
page, an evidence bundle) are written to the access log under the key's name.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from litestar import Controller, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template
from litestar.types import Guard
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from api.auth import roles
from api.deps import PlatformDep, PrincipalDep
from api.i18n import PAGE_HEADER_VALUES, PAGE_HEADERS, Messages, choose_language, messages
from cdp.access_log import record_access
from cdp.apikeys import Principal, authenticate
from cdp.crypto.master import hkdf
from cdp.db.tables import access_log, api_keys, console_signouts
from cdp.db.upsert import insert_ignore
from cdp.errors import InvalidInput, NotFound
from cdp.ids import parse_uuid, utcnow
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier, parse_identifier
from cdp.profiles.service import profile_view
from consent.audit.bundle import customer_bundle
from consent.audit.checkpoints import Checkpoint, latest_trusted, list_checkpoints
from consent.audit.events import Customer, EventFilter, all_events, render, resolve_customer
from consent.audit.signing import signer_for
from consent.audit.verify import snapshot, verify_ledger
from consent.chain import canonical_payload
from consent.dsr import requests as dsr
from consent.dsr import states
from consent.dsr.consistency import requests_report
from consent.dsr_tables import dsr_requests

log = structlog.get_logger("api.console")

SESSION_COOKIE = "cdp_console"
LOGIN_COOKIE = "cdp_console_login"
COOKIE_PATH = "/console"
SESSION_HOURS = 8
SESSION_TTL = SESSION_HOURS * 3600
LOGIN_TTL = 30 * 60
CONSOLE_ROLES = ("admin", "compliance")
CONSOLE: dict[str, object] = {**roles(*CONSOLE_ROLES), "console": True}
CONSOLE_LOGIN: dict[str, object] = {**CONSOLE, "console_login": True}
ACCESS_LOG_ROWS = 200
_NEXT = re.compile(r"/console(/[A-Za-z0-9_.~-]*)*")


# ----------------------------------------------------------------------------- sessions


@dataclass(frozen=True, slots=True)
class Session:
    key_name: str
    role: str
    expires: int  # unix seconds
    sid: str


def session_key(token_key: bytes) -> bytes:
    return hkdf(token_key, b"cdp/console-session/v1")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, label: bytes, data: bytes) -> bytes:
    return hmac.digest(key, label + b"|" + data, hashlib.sha256)


def new_session(principal: Principal, now: float | None = None) -> Session:
    at = int(time.time() if now is None else now)
    return Session(principal.name, principal.role, at + SESSION_TTL, secrets.token_urlsafe(16))


def seal(key: bytes, session: Session) -> str:
    payload = msgspec.json.encode([session.key_name, session.role, session.expires, session.sid])
    return _b64(payload) + "." + _b64(_mac(key, b"session", payload))


def unseal(key: bytes, value: str | None, now: float | None = None) -> Session | None:
    """The session a cookie holds, or None when it is absent, altered or expired."""
    if not value or len(value) > 1000:
        return None
    try:
        body, tag = value.split(".", 1)
        payload, given = _unb64(body), _unb64(tag)
    except (ValueError, TypeError):
        return None
    if not hmac.compare_digest(_mac(key, b"session", payload), given):
        return None
    try:
        name, role, expires, sid = msgspec.json.decode(payload)
        session = Session(str(name), str(role), int(expires), str(sid))
    except (ValueError, TypeError, msgspec.DecodeError):
        return None
    return session if session.expires > (time.time() if now is None else now) else None


def csrf_token(key: bytes, sid: str) -> str:
    return _b64(_mac(key, b"csrf", sid.encode()))


def login_token(key: bytes, nonce: str) -> str:
    return _b64(_mac(key, b"login", nonce.encode()))


def same(expected: str, given: Any) -> bool:
    return isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode())


def safe_next(value: Any) -> str:
    """Only a console path of this site (no open redirect)."""
    if isinstance(value, str) and _NEXT.fullmatch(value) and "//" not in value:
        return value
    return "/console"


async def session_active(p: Platform, session: Session) -> bool:
    """The session's key is still active with its role, and the session was not signed out."""
    async with p.db.read() as conn:
        row = (
            await conn.execute(
                select(api_keys.c.role).where(
                    api_keys.c.name == session.key_name, api_keys.c.revoked_at.is_(None)
                )
            )
        ).first()
        if row is None or row.role != session.role:
            return False
        signed_out = (
            await conn.execute(
                select(console_signouts.c.sid).where(console_signouts.c.sid == session.sid)
            )
        ).first()
    return signed_out is None


async def sign_out(p: Platform, session: Session) -> None:
    """End the session on the server: its cookie, even a copy, no longer signs anyone in."""
    s = console_signouts.c
    async with p.db.write() as conn:
        await conn.execute(delete(console_signouts).where(s.expires_at < utcnow()))
        await conn.execute(
            insert_ignore(conn, console_signouts).values(
                sid=session.sid, expires_at=datetime.fromtimestamp(session.expires, UTC)
            )
        )


def _secure(p: Platform) -> bool:
    return p.settings.public_url.startswith("https://")


def _cookie(p: Platform, name: str, value: str, max_age: int) -> Cookie:
    return Cookie(
        key=name,
        value=value,
        path=COOKIE_PATH,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=_secure(p),
    )


def session_cookie(p: Platform, session: Session) -> Cookie:
    return _cookie(p, SESSION_COOKIE, seal(session_key(p.keys.token_key), session), SESSION_TTL)


# ----------------------------------------------------------------------------- the guard


class LoginRequired(NotAuthorizedException):
    """No session and no bearer key: answered with the sign-in form (401)."""


class ConsoleForbidden(PermissionDeniedException):
    pass


class CsrfRejected(PermissionDeniedException):
    pass


async def current_session(connection: ASGIConnection, p: Platform) -> Session | None:
    session = unseal(session_key(p.keys.token_key), connection.cookies.get(SESSION_COOKIE))
    if session is None or not await session_active(p, session):
        return None
    return session


async def console_guard(
    connection: ASGIConnection, handler: BaseRouteHandler, bearer_guard: Guard
) -> None:
    p: Platform = connection.app.state.platform
    connection.state.console_session = None
    session = await current_session(connection, p)
    if session is not None:
        if session.role not in (handler.opt.get("roles") or ()):
            raise ConsoleForbidden("this key's role may not use this page")
        connection.state.principal = Principal(session.key_name, session.role)
        connection.state.console_session = session
        if connection.scope.get("method") == "POST" and not handler.opt.get("console_login"):
            form = await connection.form()  # type: ignore[attr-defined]  # a Request here
            key = session_key(p.keys.token_key)
            if not same(csrf_token(key, session.sid), form.get("csrf_token")):
                raise CsrfRejected("the form's CSRF token is missing or wrong")
        return
    if connection.headers.get("authorization"):
        await bearer_guard(connection, handler)  # API clients: 401 / 403 as for the API
        return
    if handler.opt.get("console_login"):
        return  # the sign-in form and its POST check the key themselves
    raise LoginRequired("sign in to the console")


def with_console_sessions(bearer_guard: Guard) -> Guard:
    """The app's guard, letting console routes accept a console session as the credential."""

    async def guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
        if handler.opt.get("console"):
            await console_guard(connection, handler, bearer_guard)
        else:
            await bearer_guard(connection, handler)  # type: ignore[misc]

    return guard


# ----------------------------------------------------------------------------- rendering


def _t(request: Request) -> Messages:
    return messages(
        choose_language(request.headers.get("accept-language"), request.query_params.get("lang"))
    )


def page(
    request: Request, template: str, *, status: int = 200, section: str = "", **context: Any
) -> Template:
    p: Platform = request.app.state.platform
    session: Session | None = request.state.get("console_session")
    principal: Principal | None = request.state.get("principal")
    csrf = csrf_token(session_key(p.keys.token_key), session.sid) if session else ""
    return Template(
        template,
        context={
            "t": _t(request),
            "who": principal.name if principal else None,
            "csrf": csrf,
            "section": section,
            "path": request.url.path,
            **context,
        },
        status_code=status,
        headers=PAGE_HEADER_VALUES,  # also when an exception handler answers with this page
    )


def login_page(
    request: Request,
    *,
    status: int = 401,
    error: str | None = None,
    next_path: str = "/console",
    failed: bool = False,
    key_error: bool = False,
) -> Template:
    """The sign-in form; `failed`: it answers a submitted form that did not sign in (the title
    says so), `key_error`: because of the key typed (the field is marked and described)."""
    p: Platform = request.app.state.platform
    nonce = secrets.token_urlsafe(18)
    cookies = [_cookie(p, LOGIN_COOKIE, nonce, LOGIN_TTL)]
    if request.cookies.get(SESSION_COOKIE):
        cookies.append(_cookie(p, SESSION_COOKIE, "", 0))  # a stale session: drop it
    t = _t(request)
    return Template(
        "console_login.html",
        context={
            "t": t,
            "who": None,
            "csrf": "",
            "section": "login",
            "login_csrf": login_token(session_key(p.keys.token_key), nonce),
            "next": safe_next(next_path),
            "error": t[error] if error else None,
            "hours": SESSION_HOURS,
            "failed": failed or key_error,
            "key_error": key_error,
        },
        status_code=status,
        cookies=cookies,
        headers=PAGE_HEADER_VALUES,
    )


def _message(request: Request, status: int, title: str, text: str) -> Template:
    t = _t(request)
    return page(
        request, "console_message.html", status=status, title=t[title], paragraphs=[t[text]]
    )


def _on_login_required(request: Request, _: Exception) -> Response[Any]:
    next_path = request.url.path if request.method == "GET" else "/console"
    return login_page(request, next_path=next_path, error="c_sign_in_required")  # type: ignore[return-value]


def _on_forbidden(request: Request, _: Exception) -> Response[Any]:
    return _message(request, 403, "c_forbidden_title", "c_wrong_role")  # type: ignore[return-value]


def _on_csrf(request: Request, _: Exception) -> Response[Any]:
    return _message(request, 403, "c_form_expired_title", "c_csrf_failed")  # type: ignore[return-value]


def _on_not_found(request: Request, _: Exception) -> Response[Any]:
    return _message(request, 404, "c_not_found_title", "c_not_found")  # type: ignore[return-value]


def _on_invalid(request: Request, _: Exception) -> Response[Any]:
    return _message(request, 400, "c_invalid_title", "c_invalid_query")  # type: ignore[return-value]


# ----------------------------------------------------------------------------- queries


async def open_requests(conn: AsyncConnection, status: str | None = None) -> list[dict[str, Any]]:
    """Erasure requests (open ones unless a status is named), soonest due first."""
    items: list[dict[str, Any]] = []
    for s in (status,) if status else states.OPEN:
        cursor = None
        while True:
            chunk = await dsr.list_requests(conn, status=s, limit=1000, cursor=cursor)
            items.extend(chunk["items"])
            cursor = chunk["next_cursor"]
            if cursor is None or len(items) >= 5000:
                break
    return sorted(items, key=lambda r: r["due_at"])


async def requests_of(conn: AsyncConnection, profile_ids: list[uuid.UUID]) -> list[dict[str, Any]]:
    if not profile_ids:
        return []
    r = dsr_requests.c
    rows = await conn.execute(
        select(dsr_requests).where(r.profile_id.in_(profile_ids)).order_by(r.received_at)
    )
    now = utcnow()
    return [dsr.summary(row, now) for row in rows]


async def recent_access(
    conn: AsyncConnection, profile_ids: list[uuid.UUID] | None, actor: str | None
) -> list[Any]:
    """The newest entries of the access log (the audit API pages it oldest first)."""
    al = access_log.c
    q = select(access_log)
    if profile_ids is not None:
        q = q.where(al.profile_id.in_(profile_ids))
    if actor:
        q = q.where(al.actor == actor)
    return (await conn.execute(q.order_by(al.at.desc(), al.id.desc()).limit(ACCESS_LOG_ROWS))).all()


async def history(conn: AsyncConnection, p: Platform, customer: Customer) -> list[dict[str, Any]]:
    """The customer's ledger entries with evidence, each with its own hash recomputed."""
    rows = await all_events(conn, p, EventFilter(customer=customer))
    items = await render(conn, p, rows)
    for item, row in zip(items, rows, strict=True):
        digest = hashlib.sha256(row.prev_hash + canonical_payload(row)).digest()
        item["hash_valid"] = hmac.compare_digest(digest, row.hash)
    return items


def checkpoint_view(cp: Checkpoint | None) -> dict[str, Any] | None:
    if cp is None:
        return None
    return {"entries": cp.entries, "created_at": cp.created_at, "key_id": cp.key_id}


SEARCHED = ("email", "phone")  # what the console's search takes


def search_identifier(p: Platform, query: str) -> Identifier:
    """An email when it has an @, else a phone number (InvalidInput when neither parses)."""
    if "@" in query:
        return parse_identifier(p.policy, p.keys.indexer, email=query, accepted=SEARCHED)
    return parse_identifier(p.policy, p.keys.indexer, phone=query, accepted=SEARCHED)


# ----------------------------------------------------------------------------- pages


class ConsoleController(Controller):
    path = "/console"
    opt = CONSOLE
    include_in_schema = False
    response_headers = PAGE_HEADERS
    exception_handlers = {  # noqa: RUF012 (Litestar reads the class attribute)
        LoginRequired: _on_login_required,
        CsrfRejected: _on_csrf,
        ConsoleForbidden: _on_forbidden,
        NotFound: _on_not_found,
        InvalidInput: _on_invalid,
    }

    @get("/login", opt=CONSOLE_LOGIN, summary="The sign-in form")
    async def login_form(self, request: Request) -> Response[Any]:
        if request.state.get("principal") is not None:
            return Redirect("/console", status_code=303)
        return login_page(request, next_path=request.query_params.get("next") or "/console")

    @post("/login", opt=CONSOLE_LOGIN, status_code=303, summary="Sign in with an API key")
    async def login(self, request: Request, platform: PlatformDep) -> Response[Any]:
        form = await request.form()
        next_path = safe_next(form.get("next"))
        bearer = request.state.get("principal")
        if bearer is not None and request.state.get("console_session") is None:
            return Redirect(next_path, status_code=303)  # an API client: its header is its key
        given = str(form.get("api_key") or "").strip()
        if not given:
            return login_page(
                request, error="c_sign_in_required", next_path=next_path, key_error=True
            )
        nonce = request.cookies.get(LOGIN_COOKIE) or ""
        expected = login_token(session_key(platform.keys.token_key), nonce)
        if not nonce or not same(expected, form.get("login_csrf")):
            return login_page(
                request, status=403, error="c_form_expired", next_path=next_path, failed=True
            )
        principal = await authenticate(platform.db, given)
        if principal is None:
            return login_page(request, error="c_bad_key", next_path=next_path, key_error=True)
        if principal.role not in CONSOLE_ROLES:
            return login_page(
                request, status=403, error="c_wrong_role", next_path=next_path, key_error=True
            )
        log.info("console_sign_in", key=principal.name, role=principal.role)
        return Redirect(
            next_path,
            status_code=303,
            cookies=[
                session_cookie(platform, new_session(principal)),
                _cookie(platform, LOGIN_COOKIE, "", 0),
            ],
        )

    @post("/logout", status_code=303, summary="Sign out")
    async def logout(self, request: Request, platform: PlatformDep) -> Redirect:
        session: Session | None = request.state.get("console_session")
        if session is not None:
            await sign_out(platform, session)
        return Redirect(
            "/console/login", status_code=303, cookies=[_cookie(platform, SESSION_COOKIE, "", 0)]
        )

    @get("/", summary="Search and summary")
    async def home(self, request: Request, platform: PlatformDep) -> Template:
        return await self._home(request, platform)

    async def _home(
        self,
        request: Request,
        platform: Platform,
        *,
        status: int = 200,
        error: str | None = None,
        query: str = "",
    ) -> Template:
        """The search page; after a search that found no one, with its `error` tied to the
        field, which keeps the `query` (the page is not cached: Cache-Control no-store)."""
        async with platform.db.read() as conn:
            items = await open_requests(conn)
            latest = await latest_trusted(conn, signer_for(platform.settings))
        return page(
            request,
            "console_home.html",
            status=status,
            section="search",
            error=_t(request)[error] if error else None,
            invalid=error == "c_invalid_query",
            query=query,
            open_count=len(items),
            overdue_count=sum(1 for r in items if r["overdue"]),
            checkpoint=checkpoint_view(latest),
        )

    @post("/search", status_code=303, summary="Find a customer by email or phone")
    async def search(self, request: Request, platform: PlatformDep) -> Response[Any]:
        form = await request.form()
        query = str(form.get("query") or "").strip()
        if not query:
            return await self._home(request, platform, status=400, error="c_invalid_query")
        try:
            ident = search_identifier(platform, query)
        except InvalidInput:
            return await self._home(
                request, platform, status=400, error="c_invalid_query", query=query
            )
        async with platform.db.read() as conn:
            customer = await resolve_customer(conn, ident)
        target = customer.root or (customer.profile_ids[0] if customer.profile_ids else None)
        if target is None:
            return await self._home(request, platform, status=404, error="c_not_found", query=query)
        return Redirect(f"/console/customers/{target}", status_code=303)

    @get("/customers/{profile_id:str}", summary="A customer: profile, consent, history, requests")
    async def customer(
        self,
        profile_id: FromPath[str],
        request: Request,
        platform: PlatformDep,
        principal: PrincipalDep,
    ) -> Response[Any]:
        pid = parse_uuid(profile_id)
        if pid is None:
            raise NotFound("no customer with this id")
        # a read, not a write (on SQLite a write transaction holds every writer, opt-outs
        # too); the page's access-log entry is committed before the page leaves
        async with platform.db.read(snapshot=True) as conn:
            customer = await resolve_customer(conn, Identifier("profile_id", profile_id=pid))
            if customer.root is not None and customer.root != pid:
                return Redirect(f"/console/customers/{customer.root}", status_code=303)
            items = await history(conn, platform, customer)
            if customer.root is None and not items:
                raise NotFound("no customer with this id")
            profile = (
                await profile_view(conn, platform, pid) if customer.status == "active" else None
            )
            requests = await requests_of(conn, customer.profile_ids)
            latest = await latest_trusted(conn, signer_for(platform.settings))
        await record_access(
            platform.db,
            principal,
            "console.customer",
            object_type="profile",
            object_id=str(pid),
            profile_id=pid,
            rows=len(items) + (1 if profile else 0),
            detail={"via": "console"},
        )
        return page(
            request,
            "console_customer.html",
            section="search",
            pid=str(pid),
            status_text=customer.status or "unknown",
            profile=profile,
            items=items,
            bad_hashes=sum(1 for i in items if not i["hash_valid"]),
            requests=requests,
            checkpoint=checkpoint_view(latest),
        )

    @get(
        "/customers/{profile_id:str}/evidence-bundle",
        summary="Download the customer's evidence bundle (JSON)",
    )
    async def bundle(
        self, profile_id: FromPath[str], platform: PlatformDep, principal: PrincipalDep
    ) -> Response[dict[str, Any]]:
        pid = parse_uuid(profile_id)
        if pid is None:
            raise NotFound("no customer with this id")
        ident = Identifier("profile_id", profile_id=pid)
        customer, body = await customer_bundle(platform, ident, principal.name)
        await record_access(
            platform.db,
            principal,
            "console.evidence_bundle",
            object_type="customer",
            object_id=str(customer.root or pid),
            profile_id=customer.root or pid,
            rows=len(body["events"]),
            detail={"via": "console"},
        )
        return Response(
            body,
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="evidence-bundle-{pid}.json"'},
        )

    @get("/requests", summary="Data subject requests with due dates; overdue ones highlighted")
    async def requests(
        self, request: Request, platform: PlatformDep, status: FromQuery[str | None] = None
    ) -> Template:
        if status is not None and status not in states.STATUSES:
            status = None
        async with platform.db.read() as conn:
            items = await open_requests(conn, status)
        return page(
            request,
            "console_requests.html",
            section="requests",
            items=items,
            shown_status=status,  # not `status`: page() takes that as the HTTP status code
            statuses=states.STATUSES,
        )

    @get("/access-log", summary="Who read or exported personal data, newest first")
    async def access(
        self,
        request: Request,
        platform: PlatformDep,
        profile_id: FromQuery[str | None] = None,
        actor: FromQuery[str | None] = None,
    ) -> Template:
        pid = parse_uuid(profile_id) if profile_id else None
        if profile_id and pid is None:  # was the whole log, under no heading of a customer
            raise InvalidInput.field("profile_id", "not a valid profile id")
        async with platform.db.read() as conn:
            pids = None
            if pid is not None:  # every profile of the customer, as GET /v1/audit/access-log
                ident = Identifier("profile_id", profile_id=pid)
                pids = (await resolve_customer(conn, ident)).profile_ids
            rows = await recent_access(conn, pids, actor)
        return page(
            request,
            "console_access_log.html",
            section="access",
            rows=rows,
            pid=str(pid) if pid else None,
            actor=actor,
        )

    @get(
        "/verify",
        summary="Verify the consent ledger's hash chain, the signed checkpoints, and the "
        "derived consent state against the ledger",
    )
    async def verify(self, request: Request, platform: PlatformDep) -> Template:
        signer = signer_for(platform.settings)
        async with snapshot(platform.db) as conn:
            checkpoints = await list_checkpoints(conn)
            report = await verify_ledger(
                conn, checkpoints, policy=platform.policy, trusted_keys={signer.public_key}
            )
            dsr = await requests_report(conn)
        return page(
            request,
            "console_verify.html",
            section="verify",
            report=report.to_json(),
            dsr=dsr,
            checked_at=utcnow(),
        )
