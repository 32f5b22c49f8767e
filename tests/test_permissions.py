"""Least privilege, checked on every route the app has (whoever added it).

Two views of the same rule: the roles each handler declares (`opt["roles"]`), and the answers a
real request gets with no key, a bad or revoked key, and a key of each role. Public routes are
only health, the OpenAPI schema, and links that carry their own signed token (unsubscribe,
preference and other customer links).
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Litestar

from api.app import create_app
from cdp.apikeys import ROLES, create_key, revoke_key
from cdp.settings import Settings

SKIPPED_METHODS = {"OPTIONS", "HEAD"}
PARAM = re.compile(r"\{([^}:]+)(?::[^}]+)?\}")
# a syntactically valid id that no row has
UNKNOWN_ID = "01900000-0000-7000-8000-000000000000"


def endpoints(app: Litestar) -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, opt) of every route handler of the app."""
    out = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            for method in sorted(handler.http_methods - SKIPPED_METHODS):
                out.append((method, route.path, dict(handler.opt)))
    return sorted(out)


def is_public(path: str, opt: dict[str, Any]) -> bool:
    return bool(opt.get("public")) or path.startswith("/schema")


def public_allowed(path: str) -> bool:
    """Health, the schema, and routes addressed by a signed token in the path."""
    return (
        path == "/health"
        or path.startswith(("/health/", "/schema"))
        or "token" in PARAM.findall(path)
    )


def declared(opt: dict[str, Any]) -> frozenset[str]:
    return frozenset(opt.get("roles") or ())


def concrete(path: str) -> str:
    return PARAM.sub(lambda m: "openapi.json" if m.group(1) == "path" else UNKNOWN_ID, path)


def is_scraped(opt: dict[str, Any]) -> bool:
    """GET /metrics: its own token, never an API key (api.controllers.metrics)."""
    return bool(opt.get("metrics"))


APP = create_app(Settings())
ENDPOINTS = endpoints(APP)
PRIVATE = [(m, p, o) for m, p, o in ENDPOINTS if not is_public(p, o) and not is_scraped(o)]
DOCUMENT = APP.openapi_schema.to_schema()


def undocumented(method: str, path: str, status: int, content_type: str) -> str | None:
    """Why a documented operation's answer is not in the OpenAPI document (None if it is): a
    client generated from the document must know the status and the body's media type."""
    op = DOCUMENT["paths"].get(PARAM.sub(lambda x: "{" + x.group(1) + "}", path), {})
    op = op.get(method.lower())
    if op is None:
        return None  # not in the document (console pages, the schema itself)
    responses = op["responses"]
    spec = responses.get(str(status)) or (responses.get("default") if status >= 400 else None)
    if spec is None:
        return f"status {status} is not documented"
    media = content_type.split(";")[0].strip()
    if spec.get("content") and media not in spec["content"]:
        return f"{status} answers {media}, documented {sorted(spec['content'])}"
    return None


def test_the_walk_covers_the_openapi_document():
    schema = APP.openapi_schema.to_schema()
    documented = {
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method.upper() not in SKIPPED_METHODS and method not in ("parameters", "summary")
    }
    walked = {(m, PARAM.sub(lambda x: "{" + x.group(1) + "}", p)) for m, p, _ in ENDPOINTS}
    assert documented, "the OpenAPI document lists no paths"
    assert documented <= walked
    assert len(PRIVATE) >= 20  # the API's own routes, not just the schema pages


def test_public_operations_need_no_key_and_errors_are_problems():
    for method, path, opt in ENDPOINTS:
        op = DOCUMENT["paths"].get(PARAM.sub(lambda x: "{" + x.group(1) + "}", path), {})
        op = op.get(method.lower())
        if op is None:
            continue
        if is_public(path, opt):
            assert op.get("security") == [], f"{method} {path} asks for a key"
        else:
            assert {"401", "403"} <= set(op["responses"]), f"{method} {path}"
        for status, spec in op["responses"].items():
            if status == "default" or int(status) >= 400:
                assert list(spec["content"]) == ["application/problem+json"], (method, path)


def test_every_private_route_declares_known_roles_and_admin_reaches_it():
    for method, path, opt in PRIVATE:
        roles = declared(opt)
        assert roles, f"{method} {path} declares no roles"
        assert roles <= set(ROLES), f"{method} {path}: unknown roles {roles - set(ROLES)}"
        assert "admin" in roles, f"{method} {path}: admin cannot use it"


def test_only_the_metrics_route_takes_a_token_of_its_own():
    assert [(m, p) for m, p, o in ENDPOINTS if is_scraped(o)] == [("GET", "/metrics")]


def test_public_routes_are_only_health_schema_and_token_links():
    public = [(m, p) for m, p, o in ENDPOINTS if is_public(p, o)]
    assert ("GET", "/health") in public
    offenders = [(m, p) for m, p in public if not public_allowed(p)]
    assert offenders == []


def test_marketing_keys_reach_only_segments():
    offenders = [
        (m, p)
        for m, p, o in PRIVATE
        if "marketing" in declared(o) and not p.startswith("/v1/segments")
    ]
    assert offenders == []
    assert any("marketing" in declared(o) for _, _, o in PRIVATE)


def test_compliance_keys_cannot_reach_segment_members_or_exports():
    offenders = [
        (m, p)
        for m, p, o in PRIVATE
        if "compliance" in declared(o) and p.startswith("/v1/segments")
    ]
    assert offenders == []


def test_ingest_keys_cannot_read_profiles_or_audit_data():
    """Ingest writes: it reads nothing, never touches audit, access requests or segments, and
    on profiles and erasure requests it may only submit (POST)."""
    offenders = []
    for method, path, opt in PRIVATE:
        if "ingest" not in declared(opt):
            continue
        if (
            method == "GET"
            or path.startswith(("/v1/audit", "/v1/access-requests", "/v1/segments"))
            or (path.startswith(("/v1/profiles", "/v1/erasure-requests")) and method != "POST")
        ):
            offenders.append((method, path))
    assert offenders == []


async def test_every_route_answers_each_role_as_declared(platform, client, keys):
    revoked = await create_key(platform.db, "revoked-key", "admin")
    await revoke_key(platform.db, "revoked-key")
    callers: dict[str, dict[str, str]] = {
        "none": {},
        "bad": {"Authorization": "Bearer cdp_this-key-was-never-issued"},
        "not-bearer": {"Authorization": f"Basic {keys['admin']['Authorization'][7:]}"},
        "revoked": {"Authorization": f"Bearer {revoked}"},
        **keys,
    }
    wrong: list[str] = []
    for method, path, opt in ENDPOINTS:
        url = concrete(path)
        for who, headers in callers.items():
            body = {} if method in ("POST", "PUT", "PATCH") else None
            r = await client.request(method, url, headers=headers, json=body)
            allowed = is_public(path, opt) or (who in ROLES and who in declared(opt))
            if is_scraped(opt):  # off without CDP_METRICS_TOKEN; no API key ever scrapes
                expected, good = "404", r.status_code == 404
            elif allowed:
                expected, good = "not 401/403", r.status_code not in (401, 403)
            elif who in ROLES:
                expected, good = "403", r.status_code == 403
            else:
                expected, good = "401", r.status_code == 401
            if not good:
                wrong.append(f"{method} {path} as {who}: {r.status_code}, expected {expected}")
            why = undocumented(method, path, r.status_code, r.headers.get("content-type", ""))
            if why:
                wrong.append(f"{method} {path} as {who}: {why}")
    assert wrong == []
