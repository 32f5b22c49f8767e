"""Accessibility of the HTML pages over plain HTTP (both backends): what needs no browser.

A customer must be able to opt out, change preferences, download their data and request
erasure with a screen reader, in Russian and in English, without JavaScript (WCAG 2.2 AA):
errors are tied to the field they concern, titles and headings say what the page is, and the
page's `lang` is the language of its text. tests/e2e/test_accessibility.py runs axe-core and the
keyboard, zoom and narrow-screen checks in a browser.
"""

from __future__ import annotations

import itertools
import re
import uuid

from sqlalchemy import update

from api.i18n import CATALOGS
from cdp.ids import utcnow
from consent.tables import consent_ledger
from consent.tokens import TokenClaims, issue
from tests.html_doc import Document, Element
from tests.test_console import EN, hidden, signed_in
from tests.test_preferences import customer

RU = {"Accept-Language": "ru-RU,ru;q=0.9"}
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
MARKETING = {
    "purpose": "marketing",
    "channel": "email",
    "status": "granted",
    "evidence": {"wording_id": "newsletter-v3", "method": "double_opt_in"},
}


def error_tied_to(doc: Document, control_id: str, words: str) -> None:
    """The control is marked invalid and its description carries the error's text."""
    control = doc.by_id(control_id)
    assert control is not None, control_id
    assert control.get("aria-invalid") == "true", control.attrs
    assert words in doc.described_by(control), (control.attrs, words)


async def test_an_erasure_without_confirmation_marks_the_checkbox_and_says_why(
    client, keys, platform
):
    """WCAG 3.3.1 Error Identification, 1.3.1, 2.4.2: the error was a paragraph at the top of
    the page, not tied to the checkbox at its bottom (a screen reader on the box heard nothing
    of it), and the title did not change."""
    _, token = await customer(client, keys, platform, "erase.me@example.com", manage=True)
    for lang, headers in (("en", EN), ("ru", RU)):
        t = CATALOGS[lang]
        r = await client.post(f"/preferences/{token}/erasure", data={"lang": lang}, headers=headers)
        assert r.status_code == 400
        doc = Document(r.text)
        assert doc.lang == lang
        error_tied_to(doc, "erase-confirm", t["erase_need_confirm"])
        assert doc.title.startswith(t["error_prefix"]), doc.title
    ok = Document((await client.get(f"/preferences/{token}", headers=EN)).text)
    box = ok.by_id("erase-confirm")
    assert box is not None and box.get("aria-invalid") is None
    assert not ok.title.startswith(CATALOGS["en"]["error_prefix"])


async def test_console_sign_in_and_search_errors_are_tied_to_their_fields(client, keys):
    """WCAG 3.3.1 Error Identification: a wrong key or a search that is not an address was said
    at the top of the form, with nothing on the field itself; the search field came back empty
    (3.3.7 Redundant Entry). "Please sign in" on the way in is a notice, not an error."""
    form = await client.get("/console/login", headers=EN)
    bad = await client.post(
        "/console/login",
        data={"api_key": "nope", "login_csrf": hidden(form.text, "login_csrf"), "next": "/console"},
        headers=EN,
    )
    assert bad.status_code == 401
    doc = Document(bad.text)
    error_tied_to(doc, "api-key", CATALOGS["en"]["c_bad_key"])
    assert doc.title.startswith(CATALOGS["en"]["error_prefix"])
    assert doc.by_id("api-key").get("value") is None  # type: ignore[union-attr]  # a secret
    way_in = Document((await client.get("/console", headers=EN)).text)
    assert CATALOGS["en"]["c_sign_in_required"] in way_in.find("main").text  # type: ignore[union-attr]
    assert way_in.by_id("api-key").get("aria-invalid") is None  # type: ignore[union-attr]
    assert not way_in.title.startswith(CATALOGS["en"]["error_prefix"])

    csrf = await signed_in(client, keys)
    for lang, headers in (("en", EN), ("ru", RU)):
        t = CATALOGS[lang]
        r = await client.post(
            "/console/search", data={"csrf_token": csrf, "query": "not an address"}, headers=headers
        )
        assert r.status_code == 400
        doc = Document(r.text)
        error_tied_to(doc, "query", t["c_invalid_query"])
        assert doc.title.startswith(t["error_prefix"])
        assert doc.by_id("query").get("value") == "not an address"  # type: ignore[union-attr]
        # no match is no error in the input, but the answer belongs to the field all the same
        r = await client.post(
            "/console/search", data={"csrf_token": csrf, "query": "no@example.com"}, headers=headers
        )
        assert r.status_code == 404
        doc = Document(r.text)
        box = doc.by_id("query")
        assert box is not None and box.get("value") == "no@example.com"
        assert t["c_not_found"] in doc.described_by(box)
    home = Document((await client.get("/console", headers=EN)).text)
    assert home.by_id("query").get("aria-invalid") is None  # type: ignore[union-attr]
    assert home.by_id("query").get("value") is None  # type: ignore[union-attr]


async def test_console_error_pages_name_the_error_in_title_and_heading(client, keys):
    """WCAG 2.4.2 Page Titled, 2.4.6 Headings and Labels: a form that expired (or did not come
    from the console) was a page titled and headed "Compliance console · Compliance console"."""
    await signed_in(client, keys)
    for lang, headers in (("en", EN), ("ru", RU)):
        page = await client.post("/console/search", data={"query": "x"}, headers=headers)
        assert page.status_code == 403
        doc = Document(page.text)
        h1 = doc.find("h1")
        assert h1 is not None and h1.text != CATALOGS[lang]["c_title"], h1.text if h1 else None
        assert doc.title.startswith(h1.text), (doc.title, h1.text)
        assert CATALOGS[lang]["c_csrf_failed"] in page.text


def check_structure(doc: Document, lang: str, where: str) -> None:
    """What every page must be, for a screen reader and without JavaScript: the language of
    its text, a title, one h1 and headings that skip no level, a label for every control,
    unique ids that every ARIA reference finds, and no script at all."""
    assert doc.lang == lang, where
    assert doc.title, where
    headings = [int(e.tag[1]) for e in doc.root.iter() if re.fullmatch(r"h[1-6]", e.tag)]
    assert headings[:1] == [1] and headings.count(1) == 1, (where, headings)
    for before, after in itertools.pairwise(headings):
        assert after <= before + 1, (where, headings)
    ids = [e.get("id") for e in doc.root.iter() if e.get("id")]
    assert len(ids) == len(set(ids)), (where, sorted(i for i in ids if ids.count(i) > 1))
    for e in doc.root.iter():
        for attr in ("aria-describedby", "aria-labelledby"):
            for ref in (e.get(attr) or "").split():
                assert doc.by_id(ref) is not None, (where, e.tag, attr, ref)
        assert not any(name.startswith("on") for name in e.attrs), (where, e.tag, e.attrs)
        if e.tag in ("input", "select", "textarea") and e.get("type") != "hidden":
            assert doc.label_of(e), (where, e.attrs)
        if e.tag == "button":
            assert e.text, (where, e.attrs)
        if e.tag == "a":
            assert e.text and e.get("href"), (where, e.attrs)
    assert doc.find("script") is None and doc.find("noscript") is None, where
    assert doc.find("main") is not None, where
    # the text is in the page's language: no sentence of the other catalog, except in an
    # element that says its own language (the language switch)
    text = own_language_text(doc.find("body"), lang)  # type: ignore[arg-type]
    other = CATALOGS["en" if lang == "ru" else "ru"]
    mine = set(CATALOGS[lang].values())
    for value in other.values():
        if len(value) >= 8 and "{" not in value and value not in mine:
            assert value not in text, (where, value)


def own_language_text(element: Element, lang: str) -> str:
    parts: list[str] = []
    for child in element.children:
        if isinstance(child, str):
            parts.append(child)
        elif child.get("lang", lang) == lang and child.tag not in ("style", "title"):
            parts.append(own_language_text(child, lang))
    return " ".join(parts)


async def test_every_customer_page_and_state_is_structured_for_assistive_technology(
    client, keys, platform
):
    pid, token = await customer(client, keys, platform, "pages@example.com")
    _, manage = await customer(client, keys, platform, "manage@example.com", manage=True)
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for lang in ("ru", "en"):
        h = {"Accept-Language": lang, "Accept": BROWSER}
        pages = {
            "unsubscribe": await client.get(f"/v1/unsubscribe/{token}", headers=h),
            "unsubscribe forged": await client.get(f"/v1/unsubscribe/{forged}", headers=h),
            "centre by the unsubscribe link": await client.get(f"/preferences/{token}", headers=h),
            "centre saved": await client.get(f"/preferences/{token}?done=saved", headers=h),
            "centre opted out": await client.get(f"/preferences/{token}?done=opted_out", headers=h),
            "centre by a manage link": await client.get(f"/preferences/{manage}", headers=h),
            "centre forged": await client.get(f"/preferences/{forged}", headers=h),
            "erasure unconfirmed": await client.post(
                f"/preferences/{manage}/erasure", data={"lang": lang}, headers=h
            ),
            "data by the unsubscribe link": await client.post(
                f"/preferences/{token}/access", data={"lang": lang}, headers=h
            ),
        }
        for where, page in pages.items():
            assert page.headers["content-type"].startswith("text/html"), where
            check_structure(Document(page.text), lang, f"{lang}: {where}")
    for lang in ("ru", "en"):
        h = {"Accept-Language": lang, "Accept": BROWSER}
        done = await client.post(
            f"/v1/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"}, headers=h
        )
        check_structure(Document(done.text), lang, f"{lang}: unsubscribed")
    received = await client.post(
        f"/preferences/{manage}/erasure", data={"lang": "ru", "confirm": "yes"}
    )
    assert received.status_code == 202
    check_structure(Document(received.text), "ru", "erasure received")
    # a Californian whose browser sends Global Privacy Control: the notice and a locked switch
    _, gpc = await customer(
        client, keys, platform, "gpc@example.com", jurisdiction="US-CA", grant=False
    )
    for lang in ("ru", "en"):
        h = {"Accept-Language": lang, "Sec-GPC": "1"}
        page = Document((await client.get(f"/preferences/{gpc}", headers=h)).text)
        check_structure(page, lang, f"{lang}: centre, GPC")
        locked = page.by_id("pref-sale_share-all")
        assert locked is not None and "disabled" in locked.attrs
        assert CATALOGS[lang]["gpc_locked"] in page.label_of(locked)
    for lang in ("ru", "en"):
        gone = await client.get(f"/preferences/{manage}", headers={"Accept-Language": lang})
        assert gone.status_code == 410
        check_structure(Document(gone.text), lang, f"{lang}: erased")
    assert pid


async def test_every_console_page_is_structured_for_assistive_technology(client, keys):
    email = "console.pages@example.com"
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": email, "consents": [MARKETING]},
        headers=keys["ingest"],
    )
    pid = r.json()["profile_id"]
    for lang, headers in (("ru", RU), ("en", EN)):
        client.cookies.clear()
        check_structure(Document((await client.get("/console", headers=headers)).text), lang, "in")
    csrf = await signed_in(client, keys)
    for lang, headers in (("ru", RU), ("en", EN)):
        for path in (
            "/console",
            f"/console/customers/{pid}",
            "/console/requests",
            "/console/requests?status=completed",
            "/console/access-log",
            f"/console/access-log?profile_id={pid}",
            "/console/verify",
            f"/console/customers/{uuid.uuid4()}",
        ):
            page = await client.get(path, headers=headers)
            check_structure(Document(page.text), lang, f"{lang}: {path}")
        for query in ("not an address", "nobody@example.com"):
            page = await client.post(
                "/console/search", data={"csrf_token": csrf, "query": query}, headers=headers
            )
            check_structure(Document(page.text), lang, f"{lang}: search {query}")
        page = await client.post("/console/search", data={"query": "x"}, headers=headers)
        check_structure(Document(page.text), lang, f"{lang}: form expired")


async def test_unsubscribing_takes_no_more_than_subscribing(client, keys, platform):
    """GDPR art. 7(3), POLICIES.md: withdrawal as easy as the grant. The page behind the link
    in a message is one button, with nothing to fill in, tick or choose first (no address to
    type, no reason, no check); "unsubscribe from everything" likewise. A grant in the
    preference centre is a tick and a save: two steps against one."""
    _, token = await customer(client, keys, platform, "one.step@example.com")
    _, manage = await customer(client, keys, platform, "grant@example.com", manage=True)
    page = Document((await client.get(f"/v1/unsubscribe/{token}", headers=EN)).text)
    [form] = page.find_all("form")
    controls = [e for e in form.iter() if e.tag in ("input", "select", "textarea", "button")]
    assert [e.tag for e in controls if e.get("type") != "hidden"] == ["button"]
    centre = Document((await client.get(f"/preferences/{manage}", headers=EN)).text)
    optout = next(f for f in centre.find_all("form") if "/opt-out" in (f.get("action") or ""))
    controls = [e for e in optout.iter() if e.tag in ("input", "select", "textarea", "button")]
    assert [e.tag for e in controls if e.get("type") != "hidden"] == ["button"]
    # a grant: a switch to tick, then the save button of the same form
    choices = centre.by_id("choices")
    assert choices is not None and choices.find("input", type="checkbox") is not None
    assert choices.find("button") is not None


async def test_a_link_that_expires_while_the_page_is_open_answers_in_the_language_read(
    client, keys, platform
):
    """A customer reading the centre in Russian (chosen with the language switch, an English
    browser) whose manage link expired before they pressed a button got the "link has
    expired" page in English: the forms said the language only in their body, which an
    answer for a link that is no longer valid never reads. WCAG 3.1.1 holds either way (the
    page's lang was its text's); the customer could not read it."""
    pid, manage = await customer(client, keys, platform, "slow.reader@example.com", manage=True)
    page = Document((await client.get(f"/preferences/{manage}?lang=ru", headers=EN)).text)
    actions = [f.get("action") or "" for f in page.find_all("form")]
    assert len(actions) == 4 and all(a.endswith("lang=ru") for a in actions), actions
    expired = issue(
        platform.keys.token_key,
        TokenClaims(
            pid,
            "email",
            platform.keys.indexer.email("slow.reader@example.com"),
            "marketing",
            "email",
            scope="manage",
            expires_at=int(utcnow().timestamp()) - 1,
        ),
    )
    for action in actions:
        r = await client.post(
            action.replace(manage, expired), data={"lang": "ru", "confirm": "yes"}, headers=EN
        )
        if action.split("?")[0].endswith(("/access", "/erasure")):
            assert r.status_code == 404, action
            doc = Document(r.text)
            assert doc.lang == "ru" and doc.find("h1").text == CATALOGS["ru"]["link_expired_title"]  # type: ignore[union-attr]
        else:  # an expired link still stops messages (tests/test_preferences.py)
            assert r.status_code == 303 and "lang=ru" in r.headers["location"], action


async def test_a_switch_the_unsubscribe_link_cannot_turn_on_says_why(client, keys, platform):
    """WCAG 1.3.2, 3.3.2: by the link in a message a switch that is off cannot be turned on.
    The reason came after every switch and the save button's form, described none of them,
    and a disabled box is skipped by Tab: a screen reader met dimmed boxes with no why."""
    _, token = await customer(client, keys, platform, "why.dimmed@example.com")
    for lang, headers in (("en", EN), ("ru", RU)):
        doc = Document((await client.get(f"/preferences/{token}", headers=headers)).text)
        note = CATALOGS[lang]["pref_unsubscribe_link_note"]
        boxes = [b for b in doc.find_all("input", type="checkbox") if "disabled" in b.attrs]
        assert boxes
        for box in boxes:
            assert note in doc.described_by(box), box.attrs
        form = doc.by_id("choices")
        first = next(e for e in form.iter() if e.tag in ("p", "fieldset"))  # type: ignore[union-attr]
        assert first.text == note  # before the switches it explains


async def test_the_console_menu_marks_the_page_it_is_on_not_the_section_as_the_page(client, keys):
    """WCAG 1.3.1, 4.1.2: on a customer's page the menu's "Find a customer" link (to the
    search page) said aria-current="page", so a screen reader called a link elsewhere the
    current page; it is the current section there ("true"), and the page only on itself."""
    r = await client.post(
        "/v1/profiles", json={"source": "crm", "email": "menu@example.com"}, headers=keys["ingest"]
    )
    await signed_in(client, keys)
    home = Document((await client.get("/console", headers=EN)).text)
    [search] = home.find_all("a", href="/console")
    assert search.get("aria-current") == "page"
    pid = r.json()["profile_id"]
    page = Document((await client.get(f"/console/customers/{pid}", headers=EN)).text)
    [search] = page.find_all("a", href="/console")
    assert search.get("aria-current") == "true"
    assert all(a.get("aria-current") != "page" for a in page.find_all("a"))


async def test_the_russian_verification_page_says_its_verdicts_in_russian(client, keys, platform):
    """WCAG 3.1.1, 3.1.2: the verdict badges of the verification page were "OK" and "FAIL" in
    every language, so a Russian screen reader voice read an English word as Russian."""
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "verdict@example.com", "consents": [MARKETING]},
        headers=keys["ingest"],
    )
    assert r.status_code == 201
    await signed_in(client, keys)
    ru = CATALOGS["ru"]
    ok = Document((await client.get("/console/verify", headers=RU)).text)
    assert [b.text for b in ok.find_all("span", **{"class": "badge good"})][:3] == [
        ru["c_badge_ok"]
    ] * 3
    async with platform.db.write() as conn:
        await conn.execute(
            update(consent_ledger).where(consent_ledger.c.seq == 1).values(source="forged")
        )
    bad = Document((await client.get("/console/verify", headers=RU)).text)
    assert bad.by_id("verify-result").text.startswith(ru["c_badge_fail"])  # type: ignore[union-attr]
    assert "FAIL" not in own_language_text(bad.find("body"), "ru")  # type: ignore[arg-type]
    en = Document((await client.get("/console/verify", headers=EN)).text)
    assert en.by_id("verify-result").text.startswith("FAIL")  # type: ignore[union-attr]


async def test_the_russian_console_says_the_apis_codes_in_russian(client, keys, platform):
    """WCAG 3.1.2: the customer page and the request list showed the API's codes (`marketing`,
    `withdrawn`, `received`, `customer`) in English on the Russian console, read by a Russian
    voice as Russian words. They are in Russian there; the English console keeps the codes as
    the API and the evidence bundle spell them."""
    r = await client.post(
        "/v1/profiles",
        json={"source": "crm", "email": "codes@example.com", "consents": [MARKETING]},
        headers=keys["ingest"],
    )
    assert r.status_code == 201
    pid = r.json()["profile_id"]
    withdrawn = {"email": "codes@example.com", "purpose": "marketing", "channel": "email"}
    withdrawn |= {"status": "withdrawn", "source": "web_form"}
    r = await client.post("/v1/consents", json=withdrawn, headers=keys["ingest"])
    assert r.status_code == 201, r.text
    await signed_in(client, keys)
    ru = CATALOGS["ru"]

    page = Document((await client.get(f"/console/customers/{pid}", headers=RU)).text)
    en = Document((await client.get(f"/console/customers/{pid}", headers=EN)).text)
    [row] = page.by_id("current-consent").find_all("tr")[1:]  # type: ignore[union-attr]
    purpose, channel, _, status, *_ = [td.text.strip() for td in row.find_all("td")]
    assert (purpose, channel, status) == (
        ru["code_purpose_marketing"],
        ru["code_channel_email"],
        ru["code_consent_withdrawn"],
    )
    history = page.by_id("history").text  # type: ignore[union-attr]
    assert ru["code_consent_granted"] in history and ru["code_consent_withdrawn"] in history
    r = await client.post(
        "/v1/erasure-requests",
        json={"email": "codes@example.com", "requested_by": "customer"},
        headers=keys["compliance"],
    )
    assert r.status_code == 202, r.text
    requests = Document((await client.get("/console/requests?status=completed", headers=RU)).text)
    assert requests.find("h1").text.endswith(ru["code_request_completed"])  # type: ignore[union-attr]
    [request] = requests.find_all("tr", **{"data-request-id": r.json()["request_id"]})
    cells = [td.text.strip() for td in request.find_all("td")]
    assert ru["code_request_completed"] in cells and ru["code_requester_customer"] in cells
    for doc in (page, requests):
        body = own_language_text(doc.find("body"), "ru")  # type: ignore[arg-type]
        for english in ("marketing", "withdrawn", "granted", "completed", "customer"):
            assert not re.search(rf"\b{english}\b", body), english

    [row] = en.by_id("current-consent").find_all("tr")[1:]  # type: ignore[union-attr]
    assert [td.text.strip() for td in row.find_all("td")][:4:3] == ["marketing", "withdrawn"]
