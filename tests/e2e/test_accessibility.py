"""WCAG 2.2 AA in a real browser (headless Chromium), in Russian and in English.

1. axe-core (vendored in tests/e2e/axe/, see its README) on every page and state a customer or
   an officer can reach: the unsubscribe page, done and forged; the preference centre by the
   unsubscribe link and by a manage link, saved, opted out, an erasure not confirmed, received,
   and the data erased; the console's sign-in (also refused), search (also failed), customer
   (live and erased), requests, access log, verification and not-found pages. Each state is
   also checked on a 320 px wide screen and at 200% zoom (640 CSS px): no horizontal scrolling
   (1.4.10), also with the text spacing of 1.4.12 on the customer's pages.
2. What axe cannot check: with the keyboard alone every control is reached in reading order,
   shows its focus and is not hidden (2.1.1, 2.1.2, 2.4.3, 2.4.7, 2.4.11), the skip link works,
   and a customer opts out, saves a choice, downloads their data and requests erasure.
3. With JavaScript off the same four tasks work (the pages have no script at all).

Without Chromium, Playwright or the axe file they are skipped; with CI=true that is a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Server, _unavailable
from tests.e2e.test_browser import GRANT, add_customer, members

AXE_DIR = Path(__file__).parent / "axe"
AXE_SHA256 = "29348999450cdf2849a8e70b7912fc2da85a849da39c0d0d5394f51d4a9ed95c"  # 4.14.1
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]
NARROW = (320, 640)  # a phone; a 1280 px window at 200% zoom
# 1.4.12 Text Spacing: what a user's own style may set, applied through the CSSOM (a <style>
# element would be refused by the pages' Content-Security-Policy)
TEXT_SPACING = """() => { for (const e of document.querySelectorAll('body *')) {
  e.style.setProperty('line-height', '1.5', 'important');
  e.style.setProperty('letter-spacing', '0.12em', 'important');
  e.style.setProperty('word-spacing', '0.16em', 'important');
  if (e.tagName === 'P') e.style.setProperty('margin-bottom', '2em', 'important');
} }"""
WORDS = {
    "ru": {
        "unsubscribe": "Отписаться",
        "save": "Сохранить выбор",
        "everything": "Отписаться от всего",
        "download": "Скачать мои данные",
        "delete": "Удалить мои данные",
        "confirm": "Я понимаю, что мои данные будут удалены без возможности восстановления",
        "key": "API-ключ",
        "sign_in": "Войти",
        "query": "Email или номер телефона",
        "find": "Найти",
    },
    "en": {
        "unsubscribe": "Unsubscribe",
        "save": "Save my choices",
        "everything": "Unsubscribe from everything",
        "download": "Download my data",
        "delete": "Delete my data",
        "confirm": "I understand that my data will be deleted and that this cannot be undone",
        "key": "API key",
        "sign_in": "Sign in",
        "query": "Email or phone number",
        "find": "Find",
    },
}
MARKETING_EMAIL = [
    {"purpose": "marketing", "channel": "email", "status": "granted", "evidence": GRANT}
]


@pytest.fixture(scope="module")
def axe_source() -> str:
    override = os.environ.get("CDP_AXE_JS")
    path = Path(override) if override else AXE_DIR / "axe.min.js"
    if not path.is_file():
        _unavailable(f"axe-core ({path})")
    data = path.read_bytes()
    if not override:
        assert hashlib.sha256(data).hexdigest() == AXE_SHA256, "tests/e2e/axe/axe.min.js changed"
    return data.decode()


class Links:
    """A fresh RU customer granted marketing by email: the unsubscribe link a segment member
    carries, and a manage link as the operator's site would ask for one."""

    def __init__(self, server: Server, email: str) -> None:
        self.pid = add_customer(server, email, "RU", MARKETING_EMAIL)
        self.token = members(server, "RU")[self.pid]["unsubscribe_token"]
        with server.api("ingest") as api:
            self.manage = api.post("/v1/preference-links", json={"email": email}).json()["url"]
        self.unsubscribe = f"{server.url}/v1/unsubscribe/{self.token}"
        self.centre = f"{server.url}/preferences/{self.token}"
        self.forged = self.token[:-2] + ("AA" if self.token[-2:] != "AA" else "BB")


def contactable(server: Server, pid: str) -> dict[str, dict[str, bool]]:
    with server.api("compliance") as api:
        r = api.get(f"/v1/profiles/{pid}/consents")
        assert r.status_code == 200, r.text
        return r.json()["contactable"]


def tour(page: Any, server: Server, lang: str, tag: str, check: Callable[[str], None]) -> None:
    """Every page and state, in order, calling `check(name)` on each (it reads `page`)."""
    w = WORDS[lang]
    a = Links(server, f"tour.{tag}.a@example.com")
    b = Links(server, f"tour.{tag}.b@example.com")

    def visit(url: str, name: str, status: int = 200) -> None:
        response = page.goto(url)
        assert response.status == status, (name, response.status)
        check(name)

    visit(a.unsubscribe, "unsubscribe page")
    visit(f"{server.url}/v1/unsubscribe/{a.forged}", "unsubscribe, forged link", 404)
    visit(a.centre, "preference centre, unsubscribe link")
    visit(f"{server.url}/preferences/{a.forged}", "preference centre, forged link", 404)
    visit(b.manage, "preference centre, manage link")
    page.get_by_role("button", name=w["save"]).click()
    page.wait_for_url("**done=unchanged**")
    check("preference centre, nothing changed")
    # a browser that does not check `required` itself: the server's error
    page.locator("#erase-confirm").evaluate("box => box.removeAttribute('required')")
    page.get_by_role("button", name=w["delete"]).click()
    page.wait_for_url("**/erasure?lang=*")
    check("preference centre, erasure not confirmed")

    page.goto(a.unsubscribe)
    with page.expect_navigation():  # the answer comes to the same URL
        page.get_by_role("button", name=w["unsubscribe"], exact=True).click()
    check("unsubscribed")
    page.goto(a.centre)
    page.get_by_role("button", name=w["everything"]).click()
    page.wait_for_url("**done=opted_out**")
    check("preference centre, opted out of everything")

    page.goto(b.manage)
    page.get_by_label(w["confirm"]).check()
    page.get_by_role("button", name=w["delete"]).click()
    page.wait_for_url("**/erasure?lang=*")
    check("erasure requested")
    for _ in range(200):  # the erasure runs right after that answer
        if (gone := page.goto(b.manage).status) == 410:
            break
    assert gone == 410
    check("preference centre, data erased")

    visit(f"{server.url}/console", "console sign-in", 401)
    page.get_by_label(w["key"]).fill("not-a-key")
    page.get_by_role("button", name=w["sign_in"]).click()
    page.wait_for_url("**/console/login")
    check("console sign-in, key refused")
    page.get_by_label(w["key"]).fill(server.keys["compliance"])
    page.get_by_role("button", name=w["sign_in"]).click()
    page.wait_for_url("**/console")
    check("console home")
    for query, name in (("not an address", "not an address"), ("no@example.com", "no one")):
        page.get_by_label(w["query"]).fill(query)
        with page.expect_navigation():  # the second comes to the same URL
            page.get_by_role("button", name=w["find"], exact=True).click()
        check(f"console search, {name}")
    visit(f"{server.url}/console/customers/{a.pid}", "console customer")
    visit(f"{server.url}/console/customers/{b.pid}", "console customer, erased")
    visit(f"{server.url}/console/requests", "console requests")
    visit(f"{server.url}/console/requests?status=completed", "console requests, completed")
    visit(f"{server.url}/console/access-log", "console access log")
    visit(f"{server.url}/console/verify", "console verification")
    visit(f"{server.url}/console/customers/{a.token[:8]}", "console, not found", 404)


def overflow(page: Any) -> int:
    """How far the page scrolls sideways (0: it reflows)."""
    return page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )


@pytest.mark.parametrize("locale", ["ru-RU", "en-GB"])
def test_every_page_and_state_passes_axe_and_reflows(
    browser: Any, server: Server, axe_source: str, locale: str
) -> None:
    """axe-core at 1280 px finds nothing; then at 320 px (a phone) and 640 px (a 1280 px
    window at 200% zoom), also with 1.4.12 text spacing, nothing scrolls sideways."""
    lang = locale[:2]
    failures: list[str] = []
    context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 900})
    page = context.new_page()

    def check(name: str) -> None:
        assert page.locator("html").get_attribute("lang") == lang, name
        assert page.title(), name
        page.evaluate(axe_source)  # not a <script>: evaluated by the driver, past the page's CSP
        result = page.evaluate(
            "tags => axe.run(document, {runOnly: {type: 'tag', values: tags},"
            " resultTypes: ['violations']})",
            AXE_TAGS,
        )
        failures.extend(
            f"{name}: {v['id']} ({v['impact']}) {v['help']}: {node['target']}"
            for v in result["violations"]
            for node in v["nodes"]
        )
        for width in reversed(NARROW):
            page.set_viewport_size({"width": width, "height": 800})
            if (extra := overflow(page)) > 0:
                failures.append(f"{name}: scrolls {extra} px sideways at {width} px")
        page.evaluate(TEXT_SPACING)
        if (extra := overflow(page)) > 0:
            failures.append(f"{name}: scrolls {extra} px sideways with 1.4.12 text spacing")
        page.set_viewport_size({"width": 1280, "height": 900})

    tour(page, server, lang, lang, check)
    context.close()
    assert not failures, "\n".join(failures)


FOCUSED = """() => {
  const e = document.activeElement, s = getComputedStyle(e), r = e.getBoundingClientRect();
  const x = r.left + Math.min(r.width / 2, 8), y = r.top + Math.min(r.height / 2, 8);
  const top = document.elementFromPoint(x, y);
  return {tag: e.tagName.toLowerCase(), id: e.id, text: (e.innerText || e.value || '').trim(),
          outline: s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2,
          visible: r.width > 0 && r.height > 0 && r.bottom > 0 && r.top < innerHeight
                   && !!top && (top === e || e.contains(top) || (e.labels || [])[0] === top
                   || top.contains(e))};
}"""
TABBABLE = """() => [...document.querySelectorAll('a[href], button, input, select, textarea')]
  .filter(e => !e.disabled && e.type !== 'hidden' && e.tabIndex >= 0)
  .map(e => ({tag: e.tagName.toLowerCase(), id: e.id,
              text: (e.innerText || e.value || '').trim()}))"""


def tab_through(page: Any, url: str) -> None:
    """Tab from the top of `url` reaches every control in reading order, each with a visible
    focus indicator and not hidden, and leaves the page after the last (no trap)."""
    page.goto(url)
    expected = page.evaluate(TABBABLE)
    reached = []
    for _ in range(len(expected)):
        page.keyboard.press("Tab")
        focused = page.evaluate(FOCUSED)
        assert focused["outline"], f"no visible focus on {focused}"
        assert focused["visible"], f"focused but hidden: {focused}"
        reached.append({k: focused[k] for k in ("tag", "id", "text")})
    assert reached == expected
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement === document.body") or (
        page.evaluate(FOCUSED)["id"] == expected[0]["id"] and expected[0]["text"]
    ), "focus stays trapped"


@pytest.mark.parametrize("locale", ["ru-RU", "en-GB"])
def test_keyboard_alone_opts_out_downloads_and_requests_erasure(
    browser: Any, server: Server, locale: str
) -> None:
    lang = locale[:2]
    w = WORDS[lang]
    links = Links(server, f"keyboard.{lang}@example.com")
    context = browser.new_context(locale=locale)
    page = context.new_page()

    for url in (links.unsubscribe, links.centre, links.manage, f"{server.url}/console"):
        tab_through(page, url)
        # the first Tab shows the skip link; Enter moves focus to the main content
        page.goto(url)
        page.keyboard.press("Tab")
        assert page.evaluate(FOCUSED)["visible"]
        page.keyboard.press("Enter")
        assert page.evaluate("() => document.activeElement.id") == "main"

    page.goto(links.manage)  # download a copy: the button, by Enter
    page.get_by_role("button", name=w["download"]).focus()
    with page.expect_download() as download:
        page.keyboard.press("Enter")
    assert json.loads(Path(download.value.path()).read_text())["profile"]

    page.goto(links.unsubscribe)  # the link in a message: one button
    page.get_by_role("button", name=w["unsubscribe"], exact=True).focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert contactable(server, links.pid)["marketing"]["email"] is False

    page.goto(links.manage)  # erasure: Space ticks the confirmation, Enter on the button
    page.get_by_label(w["confirm"]).focus()
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    assert page.evaluate(FOCUSED)["text"] == w["delete"]
    page.keyboard.press("Enter")
    page.wait_for_url("**/erasure?lang=*")
    assert page.get_by_role("heading", level=1).count() == 1
    context.close()
    with server.api("compliance") as api:
        requests = api.get("/v1/erasure-requests").json()["items"]
    assert any(r["profile_id"] == links.pid for r in requests)


@pytest.mark.parametrize("locale", ["ru-RU", "en-GB"])
def test_without_javascript_a_customer_does_everything(
    browser: Any, server: Server, locale: str
) -> None:
    lang = locale[:2]
    w = WORDS[lang]
    links = Links(server, f"nojs.{lang}@example.com")
    context = browser.new_context(locale=locale, java_script_enabled=False)
    page = context.new_page()

    page.goto(links.manage)  # withdraw one choice and save
    page.locator("#pref-marketing-email").uncheck()
    page.get_by_role("button", name=w["save"]).click()
    page.wait_for_url("**done=saved**")
    assert contactable(server, links.pid)["marketing"]["email"] is False
    page.get_by_role("button", name=w["everything"]).click()
    page.wait_for_url("**done=opted_out**")
    with page.expect_download() as download:
        page.get_by_role("button", name=w["download"]).click()
    assert json.loads(Path(download.value.path()).read_text())["profile"]
    page.get_by_label(w["confirm"]).check()
    page.get_by_role("button", name=w["delete"]).click()
    page.wait_for_url("**/erasure?lang=*")

    other = Links(server, f"nojs.{lang}.unsub@example.com")
    page.goto(other.unsubscribe)
    with page.expect_navigation():
        page.get_by_role("button", name=w["unsubscribe"], exact=True).click()
    assert contactable(server, other.pid)["marketing"]["email"] is False
    context.close()
    with server.api("compliance") as api:
        requests = api.get("/v1/erasure-requests").json()["items"]
    assert any(r["profile_id"] == links.pid for r in requests)
