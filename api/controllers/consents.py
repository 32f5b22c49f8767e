"""Consent events, opt-outs, one-click unsubscribe and inbound SMS keywords."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import MediaType, Request, Response, post, route
from litestar.enums import RequestEncodingType
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import Template
from sqlalchemy import select

from api.auth import PUBLIC, roles
from api.customer_pages import message_page, page_language, wants_page
from api.deps import PlatformDep, PrincipalDep
from api.i18n import (
    PAGE_HEADER_VALUES,
    channel_label,
    messages,
    purpose_label,
)
from api.in_flight import OPT_OUTS
from api.openapi import GET_AND_HEAD, NAMES_A_CUSTOMER, operation_id
from cdp.db.tables import profiles
from cdp.errors import Gone, InvalidInput
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier, parse_identifier
from consent.masking import masked_address
from consent.optout import claims_from_token, is_stop_message, opt_out, sms_stop, unsubscribe
from consent.schemas import AwareDatetime, ConsentIn, Name64, Short
from consent.service import record_consent
from consent.tokens import TokenClaims, TokenError

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
    response_description=(
        "The event was appended: `event_id`, `seq`, and `effective` (false when an event that "
        "occurred later already decides the state)"
    ),
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
    opt={**INGEST, **NAMES_A_CUSTOMER, **OPT_OUTS},
    tags=["consent"],
    status_code=200,
    summary="Opt a customer or an address out, effective before the answer",
    description=(
        "An email or phone that no customer holds yet is suppressed as it is, so a later "
        "import of it with an older grant never makes it contactable. A profile id or an "
        "external id that no customer has is 404 and stores nothing: it is not an address. "
        "An opt-out of one channel that names the customer (profile id, external id) or an "
        "address of another kind (sms, naming the email) concerns the person: it reaches "
        "their addresses of that channel, also those they gain later (an import, a merge), "
        "and holds even where they have none yet (or where no one holds the address named: "
        "for its holder, once known). `suppressed` is true when the opt-out is recorded and "
        "in force: what it covers (an address of the channel's own kind that it names; "
        "otherwise the customer's addresses of the channel, now and gained later) is not "
        "contactable for the purpose until a grant that occurred after it. Every accepted "
        "opt-out answers true; before, one that reached no address answered false and "
        "recorded nothing."
    ),
    response_description="The opt-out is in force: `profile_ids` it reached and `suppressed`",
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


async def _page_facts(platform: Platform, claims: TokenClaims) -> tuple[str | None, str | None]:
    """The token's customer's jurisdiction, which chooses the page's language, and the address
    the link stops, masked (None for a profile's channel or an address no one holds now)."""
    async with platform.db.read(snapshot=True) as conn:
        jurisdiction = (
            await conn.execute(
                select(profiles.c.jurisdiction).where(profiles.c.id == claims.profile_id)
            )
        ).scalar()
        address = await masked_address(conn, platform, claims.subject_kind, claims.subject)
    return jurisdiction, address


class InvalidLinkPage(Exception):
    """A link that is not valid, asked for by a browser: answered with a page, not a problem."""


def invalid_link_page(request: Request, _: Exception) -> Response[Any]:
    return message_page(request, 404, "link_invalid_title", "link_invalid_text")  # type: ignore[return-value]


async def _claims(request: Request, platform: Platform, token: str) -> TokenClaims:
    """The token's claims; a token that is not valid is a 404, as a page where a browser asked
    for HTML (a customer following the link), else as a problem."""
    try:
        return claims_from_token(platform, token)
    except TokenError:
        if wants_page(request):
            raise InvalidLinkPage from None
        raise


async def _unsubscribe_page(
    platform: Platform, request: Request, token: str, claims: TokenClaims, lang: str | None
) -> Template:
    """The page behind the link (`done`: the page the form's POST answers a browser with):
    what it stops, in the customer's language, and nothing of theirs beyond the address it
    stops, masked as the preference centre masks it."""
    jurisdiction, address = await _page_facts(platform, claims)
    t = messages(page_language(request, lang, jurisdiction))
    done = request.method == "POST"
    return Template(
        "unsubscribe.html",
        context={
            "t": t,
            "title": t.unsub_done_title if done else t.unsub_title,
            "lead": t.unsub_done_text if done else t.unsub_question,
            "purpose": purpose_label(t, claims.purpose),
            "channel": channel_label(t, claims.channel),
            "address": address,
            "done": done,
            "action": f"/v1/unsubscribe/{token}",
            "manage": f"/preferences/{token}",
        },
        headers=PAGE_HEADER_VALUES,
        media_type=MediaType.HTML,
    )


@route(
    "/v1/unsubscribe/{token:str}",
    http_method=GET_AND_HEAD,  # mail scanners send HEAD before they follow a link (was a 405)
    opt={**PUBLIC, "pages": True},
    tags=["consent"],
    media_type=MediaType.HTML,
    summary="Confirmation page (changes nothing: mail scanners prefetch links)",
    exception_handlers={InvalidLinkPage: invalid_link_page},
    description=(
        "In the customer's language (`?lang=en|ru`, else Accept-Language, else their "
        "jurisdiction's); its button posts the RFC 8058 form. A link that is not valid is a "
        "404, as a page where the client asks for HTML over JSON (a browser). HEAD answers "
        "as GET does, without the body, and changes nothing either."
    ),
    operation_id=operation_id("V1UnsubscribeTokenUnsubscribePage"),
    response_description="The confirmation page, in the customer's language (nothing changed)",
)
async def unsubscribe_page(
    token: FromPath[str],
    platform: PlatformDep,
    request: Request,
    lang: FromQuery[str | None] = None,
) -> Response[str]:
    claims = await _claims(request, platform, token)
    return await _unsubscribe_page(platform, request, token, claims, lang)  # type: ignore[return-value]


@post(
    "/v1/unsubscribe/{token:str}",
    opt={**PUBLIC, "pages": True, **OPT_OUTS},
    tags=["consent"],
    status_code=200,
    summary="One-click unsubscribe (RFC 8058)",
    exception_handlers={InvalidLinkPage: invalid_link_page},
    description=(
        "Answers JSON; a browser that asks for HTML over JSON (a person pressing the button "
        "of the confirmation page) gets a page saying it is done, in their language, and a "
        "404 page for a link that is not valid."
    ),
    operation_class=OneClickOperation,
)
async def unsubscribe_now(
    token: FromPath[str], platform: PlatformDep, request: Request
) -> dict[str, Any]:
    if not wants_page(request):
        result = await unsubscribe(platform, token)
        return {"unsubscribed": True, "suppressed": result.suppressed}
    claims = await _claims(request, platform, token)
    try:
        await unsubscribe(platform, token)
    except Gone:  # a link naming the profile (push, messenger) of a customer erased since
        return message_page(request, 410, "erased_title", "erased_text")  # type: ignore[return-value]
    lang = (await request.form()).get("lang")
    return await _unsubscribe_page(platform, request, token, claims, lang)  # type: ignore[return-value]


@post(
    "/v1/inbound/sms",
    opt={**INGEST, **OPT_OUTS},
    tags=["consent"],
    status_code=200,
    summary=(
        "Inbound SMS: stop keywords opt the number out of marketing by sms (and of service "
        "texts where they need consent: US federal)"
    ),
    response_description=(
        "`stop`: whether the text was a stop keyword; if so, the `profile_ids` it reached and "
        "`suppressed`"
    ),
)
async def inbound_sms(
    data: JSONBody[InboundSmsIn], platform: PlatformDep, principal: PrincipalDep
) -> dict:
    if not is_stop_message(data.text):
        return {"stop": False}
    try:
        ident = parse_identifier(
            platform.policy, platform.keys.indexer, phone=data.from_, accepted=("phone",)
        )
    except InvalidInput as exc:
        raise InvalidInput.field("from", exc.errors[0].message) from None
    result = await sms_stop(platform, ident, principal.name)
    return {
        "stop": True,
        "profile_ids": [str(p) for p in result.profile_ids],
        "suppressed": result.suppressed,
    }
