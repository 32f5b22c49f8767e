"""What every page a customer reaches by a link shares: the language it speaks and the short
message pages (a link that is not valid, data deleted, done).

The language is the page's `?lang=` (or a form's `lang`) choice, else the browser's
Accept-Language, else the customer's jurisdiction's (Russian for RU), else English."""

from __future__ import annotations

from litestar import MediaType, Request
from litestar.response import Template

from api.i18n import PAGE_HEADER_VALUES, choose_language, messages


def page_language(request: Request, override: str | None, jurisdiction: str | None = None) -> str:
    fallback = "ru" if jurisdiction == "RU" else "en"
    return choose_language(request.headers.get("accept-language"), override, fallback)


def message_page(
    request: Request,
    status: int,
    title: str,
    text: str,
    back: str | None = None,
    *,
    jurisdiction: str | None = None,
) -> Template:
    """A page of a title and a paragraph (catalog keys), with the headers of every page that
    carries a token (no framing, no caching, no Referer)."""
    t = messages(page_language(request, request.query_params.get("lang"), jurisdiction))
    return Template(
        "message.html",
        context={"t": t, "title": t[title], "paragraphs": [t[text]], "back": back},
        status_code=status,
        media_type=MediaType.HTML,
        headers=PAGE_HEADER_VALUES,
    )


def wants_page(request: Request) -> bool:
    """Whether the client asked for HTML over JSON: a person's browser submitting a form, not a
    mail client's one-click POST (RFC 8058) or a sending tool, which get JSON."""
    return request.accept.best_match(["application/json", "text/html"]) == "text/html"
