"""Accessibility of the HTML pages over plain HTTP (both backends): what needs no browser.

A customer must be able to opt out, change preferences, download their data and request
erasure with a screen reader, in Russian and in English, without JavaScript (WCAG 2.2 AA):
errors are tied to the field they concern, titles and headings say what the page is, and the
page's `lang` is the language of its text. tests/e2e/test_accessibility.py runs axe-core and the
keyboard, zoom and narrow-screen checks in a browser.
"""

from __future__ import annotations

from api.i18n import CATALOGS
from tests.html_doc import Document
from tests.test_console import EN, hidden, signed_in
from tests.test_preferences import customer

RU = {"Accept-Language": "ru-RU,ru;q=0.9"}


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
