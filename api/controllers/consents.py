"""Consent events, opt-outs, one-click unsubscribe and inbound SMS keywords."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Annotated, Any

import msgspec
from litestar import MediaType, Request, Response, get, post
from litestar.enums import RequestEncodingType
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.params import FromPath, JSONBody

from api.auth import PUBLIC, roles
from api.deps import PlatformDep, PrincipalDep
from api.i18n import (
    PAGE_HEADERS,
    Messages,
    channel_label,
    choose_language,
    messages,
    purpose_label,
)
from api.openapi import NAMES_A_CUSTOMER
from cdp.errors import InvalidInput
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier, parse_identifier
from consent.optout import claims_from_token, is_stop_message, opt_out, sms_stop, unsubscribe
from consent.schemas import AwareDatetime, ConsentIn, Name64, Short
from consent.service import record_consent

INGEST = roles("admin", "ingest")


class OptOutIn(msgspec.Struct, forbid_unknown_fields=True):
    source: Name64
    purpose: Name64 = "marketing"
    channel: Annotated[str, msgspec.Meta(min_length=1, max_length=16)] = "*"
    occurred_at: AwareDatetime | None = None
    profile_id: str | None = None
    email: Short | None = None
    phone: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    external_id: Short | None = None
    id_source: Name64 | None = None
    country: Annotated[str, msgspec.Meta(max_length=2)] | None = None


@dataclass
class OneClickOperation(Operation):
    """RFC 8058: mail clients post the form `List-Unsubscribe=One-Click`. The handler reads no
    body (the token says everything), so any body or none is accepted."""

    def __post_init__(self) -> None:
        one_click = Schema(type=OpenAPIType.STRING, enum=["One-Click"])
        form = Schema(type=OpenAPIType.OBJECT, properties={"List-Unsubscribe": one_click})
        self.request_body = RequestBody(
            required=False,
            description="The RFC 8058 one-click form; optional",
            content={RequestEncodingType.URL_ENCODED.value: OpenAPIMediaType(schema=form)},
        )
        done = Schema(
            type=OpenAPIType.OBJECT,
            required=["unsubscribed", "suppressed"],
            properties={
                "unsubscribed": Schema(type=OpenAPIType.BOOLEAN),
                "suppressed": Schema(type=OpenAPIType.BOOLEAN),
            },
        )
        self.responses = {
            **(self.responses or {}),
            "200": OpenAPIResponse(
                description="Unsubscribed. A browser (asking for HTML, as the confirmation "
                "page's button does) gets a page saying so in its language; a mail client JSON",
                content={
                    MediaType.JSON.value: OpenAPIMediaType(schema=done),
                    MediaType.HTML.value: OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING)),
                },
            ),
        }


class InboundSmsIn(msgspec.Struct, forbid_unknown_fields=False, rename={"from_": "from"}):
    from_: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    text: Annotated[str, msgspec.Meta(max_length=1600)]


def _identifier(platform: Platform, data: ConsentIn | OptOutIn) -> Identifier:
    """The one identifier a consent or opt-out body names (external ids: `id_source`)."""
    return parse_identifier(
        platform.policy,
        platform.keys.indexer,
        profile_id=data.profile_id,
        email=data.email,
        phone=data.phone,
        source=data.id_source or data.source,
        external_id=data.external_id,
        country=data.country,
    )


@post(
    "/v1/consents",
    opt={**INGEST, **NAMES_A_CUSTOMER},
    tags=["consent"],
    status_code=201,
    summary="Append one consent event to the ledger",
)
async def post_consent(
    data: JSONBody[ConsentIn], platform: PlatformDep, principal: PrincipalDep
) -> dict:
    ident = _identifier(platform, data)
    appended = await record_consent(platform, data, ident, principal.name)
    first = appended[0]
    return {
        "event_id": str(first.event_id),
        "seq": first.seq,
        "effective": any(a.effective for a in appended),
        "profile_id": str(first.profile_id) if first.profile_id else None,
        "events": [
            {"event_id": str(a.event_id), "seq": a.seq, "effective": a.effective} for a in appended
        ],
    }


@post(
    "/v1/opt-outs",
    opt={**INGEST, **NAMES_A_CUSTOMER},
    tags=["consent"],
    status_code=200,
    summary="Opt a customer or an address out, effective before the answer",
)
async def post_opt_out(
    data: JSONBody[OptOutIn], platform: PlatformDep, principal: PrincipalDep
) -> dict:
    ident = _identifier(platform, data)
    result = await opt_out(
        platform,
        ident,
        purpose=data.purpose,
        channel=data.channel,
        source=data.source,
        actor=principal.name,
        occurred_at=data.occurred_at,
    )
    return {"profile_ids": [str(p) for p in result.profile_ids], "suppressed": result.suppressed}


@get(
    "/v1/unsubscribe/{token:str}",
    opt=PUBLIC,
    tags=["consent"],
    media_type=MediaType.HTML,
    summary="Confirmation page (changes nothing: mail scanners prefetch links)",
)
async def unsubscribe_page(
    token: FromPath[str], platform: PlatformDep, request: Request
) -> Response[str]:
    claims = claims_from_token(platform, token)
    t = messages(choose_language(request.headers.get("accept-language")))
    question = t["unsub_question"].format(
        purpose=purpose_label(t, claims.purpose), channel=channel_label(t, claims.channel)
    )
    body = f"""<p>{escape(question)}</p>
<form method="post" action="/v1/unsubscribe/{escape(token)}">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">{escape(t["unsub_button"])}</button>
</form>"""
    return _token_page(t, t["unsub_title"], body, token)


def _token_page(t: Messages, title: str, body: str, token: str) -> Response[str]:
    """A page of the unsubscribe link, in the customer's language, with the link to the
    preference centre; as every page carrying a token: no framing (the button), no caching,
    no Referer."""
    html = f"""<!doctype html>
<html lang="{t.lang}"><head><meta charset="utf-8"><title>{escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main>
<h1>{escape(title)}</h1>
{body}
<p><a href="/preferences/{escape(token)}">{escape(t["unsub_manage"])}</a></p>
</main></body></html>"""
    headers = {h.name: h.value for h in PAGE_HEADERS if h.value is not None}
    return Response(html, media_type=MediaType.HTML, headers=headers)


@post(
    "/v1/unsubscribe/{token:str}",
    opt=PUBLIC,
    tags=["consent"],
    status_code=200,
    summary="One-click unsubscribe (RFC 8058)",
    operation_class=OneClickOperation,
)
async def unsubscribe_now(
    token: FromPath[str], platform: PlatformDep, request: Request
) -> Response[Any]:
    result = await unsubscribe(platform, token)
    answer = {"unsubscribed": True, "suppressed": result.suppressed}
    if request.accept.best_match([MediaType.JSON, MediaType.HTML]) != MediaType.HTML:
        return Response(answer, media_type=MediaType.JSON)  # a mail client (RFC 8058)
    # the confirmation page's button, in the customer's browser: a page saying it is done
    claims = claims_from_token(platform, token)
    t = messages(choose_language(request.headers.get("accept-language")))
    done = t["unsub_done"].format(
        purpose=purpose_label(t, claims.purpose), channel=channel_label(t, claims.channel)
    )
    return _token_page(t, t["unsub_done_title"], f"<p>{escape(done)}</p>", token)


@post(
    "/v1/inbound/sms",
    opt=INGEST,
    tags=["consent"],
    status_code=200,
    summary=(
        "Inbound SMS: stop keywords opt the number out of marketing by sms (and of service "
        "texts where they need consent: US federal)"
    ),
)
async def inbound_sms(
    data: JSONBody[InboundSmsIn], platform: PlatformDep, principal: PrincipalDep
) -> dict:
    if not is_stop_message(data.text):
        return {"stop": False}
    try:
        ident = parse_identifier(platform.policy, platform.keys.indexer, phone=data.from_)
    except InvalidInput as exc:
        raise InvalidInput.field("from", exc.errors[0].message) from None
    result = await sms_stop(platform, ident, principal.name)
    return {
        "stop": True,
        "profile_ids": [str(p) for p in result.profile_ids],
        "suppressed": result.suppressed,
    }
