"""The compliance console over HTTP (both backends), and its session rules."""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import replace
from datetime import timedelta

import httpx
from sqlalchemy import update

from api.app import create_app
from api.controllers.console import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Session,
    csrf_token,
    safe_next,
    seal,
    session_key,
    unseal,
)
from cdp.apikeys import create_key, revoke_key
from cdp.ids import utcnow
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier
from consent.dsr.requests import submit_erasure
from consent.dsr_tables import dsr_requests
from consent.tables import consent_ledger

EN = {"Accept-Language": "en"}
EVIDENCE = {
    "wording_id": "newsletter-v3",
    "method": "double_opt_in",
    "ip": "203.0.113.7",
    "user_agent": "Mozilla/5.0 (Evidence)",
    "page_url": "https://shop.example/subscribe",
}


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field"
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    """Sign in through the form with the key of these Authorization headers."""
    key = headers["Authorization"].removeprefix("Bearer ")
    form = await client.get("/console/login", headers=EN)
    assert form.status_code == 401 and 'name="api_key"' in form.text
    return await client.post(
        "/console/login",
        data={"api_key": key, "login_csrf": hidden(form.text, "login_csrf"), "next": "/console"},
        headers=EN,
    )


async def signed_in(client, keys) -> str:  # type: ignore[no-untyped-def]
    """Sign in as the compliance key; the CSRF token of the session."""
    r = await sign_in(client, keys["compliance"])
    assert r.status_code == 303, r.text
    home = await client.get("/console", headers=EN)
    assert home.status_code == 200
    return hidden(home.text, "csrf_token")


async def withdrawn_customer(client, keys, email: str) -> str:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/profiles",
        json={
            "source": "crm",
            "email": email,
            "phone": "+79161112233",
            "jurisdiction": "RU",
            "consents": [
                {
                    "purpose": "marketing",
                    "channel": "email",
                    "status": "granted",
                    "evidence": EVIDENCE,
                }
            ],
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    r = await client.post(
        "/v1/consents",
        json={
            "email": email,
            "purpose": "marketing",
            "channel": "email",
            "status": "withdrawn",
            "source": "web_form",
            "evidence": {"method": "checkbox", "ip": "198.51.100.9", "user_agent": "Withdrawer"},
        },
        headers=keys["ingest"],
    )
    assert r.status_code == 201, r.text
    return r.json()["profile_id"]


async def test_console_pages_ask_for_sign_in(client, keys):
    for path in ("/console", "/console/requests", "/console/access-log", "/console/verify"):
        r = await client.get(path, headers=EN)
        assert r.status_code == 401, path
        assert 'name="api_key"' in r.text and f'name="next" value="{path}"' in r.text
    r = await client.post("/console/search", data={"query": "a@example.com"})
    assert r.status_code == 401


async def test_sign_in_sets_a_session_cookie_that_holds_no_key(client, keys):
    r = await sign_in(client, keys["compliance"])
    assert r.status_code == 303 and r.headers["location"] == "/console"
    cookies = r.headers.get_list("set-cookie")
    [session] = [c for c in cookies if c.startswith(f"{SESSION_COOKIE}=")]
    attributes = {a.strip().lower() for a in session.split(";")}
    assert {"httponly", "samesite=strict", "path=/console"} <= attributes
    assert "secure" not in attributes  # the public URL is http here
    key = keys["compliance"]["Authorization"].removeprefix("Bearer ")
    assert key not in session and key[4:20] not in session
    assert any(c.startswith(f"{LOGIN_COOKIE}=;") or f'{LOGIN_COOKIE}=""' in c for c in cookies)

    home = await client.get("/console", headers=EN)
    assert home.status_code == 200
    assert "Signed in as <strong>compliance-key</strong>" in home.text
    again = await client.get("/console/login")
    assert again.status_code == 303  # already signed in


async def test_sign_in_refuses_other_roles_unknown_keys_and_foreign_forms(client, keys):
    r = await sign_in(client, keys["marketing"])
    assert r.status_code == 403 and "may not use the compliance console" in r.text
    assert not any(c.startswith(f"{SESSION_COOKIE}=cdp") for c in r.headers.get_list("set-cookie"))
    r = await sign_in(client, {"Authorization": "Bearer cdp_never-issued"})
    assert r.status_code == 401 and "unknown or has been revoked" in r.text
    # a form posted from elsewhere has no valid sign-in token
    key = keys["compliance"]["Authorization"].removeprefix("Bearer ")
    r = await client.post("/console/login", data={"api_key": key, "login_csrf": "forged"})
    assert r.status_code == 403
    assert (await client.get("/console")).status_code == 401
    # admin keys may use the console
    assert (await sign_in(client, keys["admin"])).status_code == 303


async def test_the_cookie_is_secure_when_the_public_url_is_https(platform: Platform, keys):
    https = Platform(
        settings=replace(platform.settings, public_url="https://cdp.example"),
        db=platform.db,
        policy=platform.policy,
        keys=platform.keys,
    )
    transport = httpx.ASGITransport(app=create_app(platform=https))
    async with httpx.AsyncClient(transport=transport, base_url="https://cdp.example") as c:
        r = await sign_in(c, keys["compliance"])
        assert r.status_code == 303
        [session] = [
            v for v in r.headers.get_list("set-cookie") if v.startswith(f"{SESSION_COOKIE}=")
        ]
        assert "secure" in {a.strip().lower() for a in session.split(";")}


async def test_console_posts_need_the_sessions_csrf_token(client, keys):
    await withdrawn_customer(client, keys, "olga@example.com")
    csrf = await signed_in(client, keys)
    r = await client.post("/console/search", data={"query": "olga@example.com"}, headers=EN)
    assert r.status_code == 403 and "did not come from this console" in r.text
    r = await client.post(
        "/console/search", data={"query": "olga@example.com", "csrf_token": csrf + "x"}
    )
    assert r.status_code == 403
    r = await client.post("/console/search", data={"query": "olga@example.com", "csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"].startswith("/console/customers/")
    r = await client.post("/console/logout", data={})
    assert r.status_code == 403  # signing out needs the token too
    copied = client.cookies.get(SESSION_COOKIE, path="/console")
    r = await client.post("/console/logout", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert (await client.get("/console")).status_code == 401
    client.cookies.set(SESSION_COOKIE, copied, path="/console")  # a copy kept before sign-out
    assert (await client.get("/console")).status_code == 401


async def test_altered_expired_or_revoked_sessions_are_refused(client, keys, platform):
    key = session_key(platform.keys.token_key)
    good = Session("compliance-key", "compliance", int(time.time()) + 60, "sid")
    assert unseal(key, seal(key, good)) == good
    assert unseal(key, seal(key, good), now=time.time() + 120) is None  # expired
    forged = seal(key, replace(good, role="admin"))
    _, _, tag = seal(key, good).partition(".")
    assert unseal(key, forged.split(".")[0] + "." + tag) is None  # altered body
    assert unseal(key, "garbage") is None and unseal(b"k" * 32, seal(key, good)) is None
    assert csrf_token(key, "a") != csrf_token(key, "b")

    client.cookies.set(SESSION_COOKIE, seal(key, replace(good, expires=1)), path="/console")
    assert (await client.get("/console")).status_code == 401
    temp = await create_key(platform.db, "officer-temp", "compliance")
    assert (await sign_in(client, {"Authorization": f"Bearer {temp}"})).status_code == 303
    assert (await client.get("/console")).status_code == 200
    await revoke_key(platform.db, "officer-temp")
    assert (await client.get("/console")).status_code == 401  # revoking the key ends it


async def test_officer_finds_the_customer_and_sees_the_withdrawal_with_evidence(
    client, keys, platform
):
    pid = await withdrawn_customer(client, keys, "petr@example.com")
    csrf = await signed_in(client, keys)
    r = await client.post("/console/search", data={"query": "Petr@Example.com", "csrf_token": csrf})
    assert r.headers["location"] == f"/console/customers/{pid}"
    page = await client.get(r.headers["location"], headers=EN)
    assert page.status_code == 200
    html = page.text
    rows = re.findall(r'<tr data-seq="\d+">(.*?)</tr>', html, re.S)
    assert len(rows) == 2
    granted, withdrawn = rows
    assert "granted" in granted and "newsletter-v3" in granted and "203.0.113.7" in granted
    assert "withdrawn" in withdrawn and "marketing / email" in withdrawn
    assert "198.51.100.9" in withdrawn and "Withdrawer" in withdrawn and "checkbox" in withdrawn
    assert html.count("hash recomputes") == 2 and "HASH MISMATCH" not in html
    assert "petr@example.com" in html and "+79161112233" in html  # the officer sees identities

    log = await client.get(
        "/v1/audit/access-log", params={"profile_id": pid}, headers=keys["compliance"]
    )
    entries = [(e["actor"], e["role"], e["action"]) for e in log.json()["items"]]
    assert ("compliance-key", "compliance", "console.customer") in entries
    access = await client.get("/console/access-log", headers=EN)
    assert "console.customer" in access.text and "compliance-key" in access.text


async def test_search_says_when_nobody_or_nothing_valid_was_given(client, keys):
    csrf = await signed_in(client, keys)
    r = await client.post(
        "/console/search", data={"query": "nobody@example.com", "csrf_token": csrf}, headers=EN
    )
    assert r.status_code == 404 and "No customer has this email" in r.text
    r = await client.post(
        "/console/search", data={"query": "not a phone", "csrf_token": csrf}, headers=EN
    )
    assert r.status_code == 400 and "not a valid email address or phone number" in r.text
    r = await client.get(f"/console/customers/{uuid.uuid4()}", headers=EN)
    assert r.status_code == 404


async def test_requests_page_shows_due_dates_and_highlights_overdue(client, keys, platform):
    ids = []
    for email in ("late@example.com", "early@example.com"):
        r = await client.post(
            "/v1/profiles", json={"source": "crm", "email": email}, headers=keys["ingest"]
        )
        pid = uuid.UUID(r.json()["profile_id"])
        submitted = await submit_erasure(
            platform, Identifier("profile_id", profile_id=pid), requested_by="customer", actor="t"
        )
        ids.append(str(submitted.request_id))
    late, early = ids
    async with platform.db.write() as conn:
        await conn.execute(
            update(dsr_requests)
            .where(dsr_requests.c.id == uuid.UUID(late))
            .values(due_at=utcnow() - timedelta(days=2))
        )
    await signed_in(client, keys)
    page = await client.get("/console/requests", headers=EN)
    assert page.status_code == 200
    late_row = re.search(
        rf'<tr class="([^"]*)" data-request-id="{late}">(.*?)</tr>', page.text, re.S
    )
    early_row = re.search(
        rf'<tr class="([^"]*)" data-request-id="{early}">(.*?)</tr>', page.text, re.S
    )
    assert late_row and early_row
    assert late_row.group(1) == "overdue" and "Overdue" in late_row.group(2)
    assert early_row.group(1) == "" and "On time" in early_row.group(2)
    assert page.text.index(late) < page.text.index(early)  # soonest due first
    home = await client.get("/console", headers=EN)
    assert re.search(r"Overdue requests</dt><dd><span class=\"badge bad\">1<", home.text)


async def test_evidence_bundle_downloads_and_is_logged(client, keys):
    pid = await withdrawn_customer(client, keys, "raisa@example.com")
    await signed_in(client, keys)
    r = await client.get(f"/console/customers/{pid}/evidence-bundle")
    assert r.status_code == 200
    assert r.headers["content-disposition"].startswith("attachment;")
    bundle = json.loads(r.content)
    assert bundle["format"] == "cdp-evidence-bundle/v1"
    assert [e["status"] for e in bundle["events"]] == ["granted", "withdrawn"]
    assert bundle["generated_by"] == "compliance-key"
    log = await client.get(
        "/v1/audit/access-log", params={"profile_id": pid}, headers=keys["compliance"]
    )
    assert "console.evidence_bundle" in [e["action"] for e in log.json()["items"]]


async def test_verification_page_reports_a_tampered_ledger(client, keys, platform):
    pid = await withdrawn_customer(client, keys, "semen@example.com")
    await signed_in(client, keys)
    ok = await client.get("/console/verify", headers=EN)
    assert ok.status_code == 200 and "The consent ledger verifies." in ok.text

    async with platform.db.write() as conn:
        await conn.execute(
            update(consent_ledger).where(consent_ledger.c.seq == 1).values(source="forged")
        )
    bad = await client.get("/console/verify", headers=EN)
    assert "does NOT verify" in bad.text
    assert re.search(r"First invalid entry</dt><dd>1<", bad.text)
    page = await client.get(f"/console/customers/{pid}", headers=EN)
    assert page.text.count("HASH MISMATCH") == 1


async def test_console_speaks_russian(client, keys):
    r = await client.get("/console", headers={"Accept-Language": "ru"})
    assert r.status_code == 401 and '<html lang="ru">' in r.text and "Войти" in r.text


def test_sign_in_returns_only_to_console_pages():
    assert safe_next("/console/customers/01a2") == "/console/customers/01a2"
    for bad in (
        "https://evil.example/console",
        "//evil.example",
        "/console//evil.example",
        "/v1/profiles",
        "/console\r\nSet-Cookie: x=1",
        None,
    ):
        assert safe_next(bad) == "/console", bad


async def test_the_consoles_error_pages_and_sign_in_carry_every_pages_headers(client, keys):
    """Pages answered by an exception handler (the sign-in form when no session is there, a
    404, a refused form) used to go out without them: a sign-in form that could be framed,
    pages holding the session's form token that could be cached."""

    def protected(r) -> None:  # type: ignore[no-untyped-def]
        assert "frame-ancestors 'none'" in r.headers.get("content-security-policy", ""), r.headers
        assert r.headers.get("cache-control") == "no-store", r.headers
        assert r.headers.get("referrer-policy") == "no-referrer"
        assert r.headers.get("x-content-type-options") == "nosniff"

    r = await client.get(f"/console/customers/{uuid.uuid4()}")
    assert r.status_code == 401 and 'name="api_key"' in r.text
    protected(r)
    await signed_in(client, keys)
    r = await client.get(f"/console/customers/{uuid.uuid4()}")
    assert r.status_code == 404
    protected(r)
    r = await client.post("/console/search", data={"query": "x@example.com", "csrf_token": "bad"})
    assert r.status_code == 403
    protected(r)


async def test_the_request_status_filters_show_their_requests(client, keys, platform):
    """Each status link on the requests page was a 500: the filter's `status` went to page()
    as the HTTP status code."""
    r = await client.post(
        "/v1/profiles", json={"source": "crm", "email": "gone@example.com"}, headers=keys["ingest"]
    )
    await submit_erasure(
        platform,
        Identifier("profile_id", profile_id=uuid.UUID(r.json()["profile_id"])),
        requested_by="operator",
        actor="admin-key",
    )
    await signed_in(client, keys)
    for status in ("received", "in_progress", "completed", "rejected"):
        page = await client.get(f"/console/requests?status={status}", headers=EN)
        assert page.status_code == 200, (status, page.text[:200])
        assert f"<h1>Data subject requests: {status}</h1>" in page.text
        assert f'href="/console/requests?status={status}" aria-current="page"' in page.text
    assert page.text.count("data-request-id=") == 0  # rejected: none
    received = await client.get("/console/requests?status=received", headers=EN)
    assert received.text.count("data-request-id=") == 1


async def test_the_access_log_of_a_customer_named_by_a_merged_away_id_is_the_whole_customers(
    client, keys
):
    """`/console/access-log?profile_id=` took the id as the customer's surviving profile: an id
    merged into another showed only the reads made under that id, while the API showed every
    read of the customer; an id that is not one showed the whole log as if it were filtered."""
    h = keys["ingest"]
    records = [
        {"source": "crm", "email": "o@example.com"},
        {"source": "crm", "phone": "+79165550101"},
    ]
    older, newer = [
        (await client.post("/v1/profiles", json=record, headers=h)).json()["profile_id"]
        for record in records
    ]
    assert (await client.get(f"/v1/profiles/{newer}", headers=keys["admin"])).status_code == 200
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "o@example.com", "phone": "+79165550101"},
        headers=h,
    )
    assert r.json()["merged_profile_ids"] == [newer]
    assert (await client.get(f"/v1/profiles/{older}", headers=keys["admin"])).status_code == 200
    await signed_in(client, keys)
    api = await client.get(
        "/v1/audit/access-log", params={"profile_id": newer}, headers=keys["compliance"]
    )
    read_ids = {e["profile_id"] for e in api.json()["items"] if e["action"] == "profile.read"}
    assert read_ids == {older, newer}
    for named in (newer, older):
        page = await client.get("/console/access-log", params={"profile_id": named}, headers=EN)
        assert page.status_code == 200
        shown = re.findall(r'href="/console/customers/([0-9a-f-]+)"', page.text)
        assert set(shown) == {older, newer}, named
    r = await client.get("/console/access-log", params={"profile_id": "nope"}, headers=EN)
    assert r.status_code == 400 and "admin-key" not in r.text
