"""The customer preference centre, reached by the signed unsubscribe token.

`GET /preferences/{token}` shows, in the customer's language, what they allow for each purpose
and channel (the contactability rule's answer, from `consent_view`) with their addresses masked.
Forms post back to the same capability URL: save choices, unsubscribe from everything, and, with
a manage link (`consent.preference_links`, for a customer the operator has signed in), grant,
download a copy of their data (an access export) and request erasure. The unsubscribe link in
every message only stops messages: the sending tools hold it too. Every change is a consent event
recorded through `record_consent` with method and evidence (IP, user agent, page, the wording id
of this page version). A browser sending `Sec-GPC: 1` is recorded once as an opt-out of
sale/sharing where the customer's jurisdiction says `gpc = "opt_out_sale"`.

The plain rules (which switches show, what a submitted form changes, masking) come first and
are driven by tests without HTTP; then the use cases; then the handlers, which only read forms
and render. Withdrawals go through `record_consent` rather than `consent.optout.opt_out` because
the latter takes no evidence; a withdrawal is effective in the ledger state at once either way.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from litestar import Controller, Request, Response, post, route
from litestar.background_tasks import BackgroundTask
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.response import Redirect, Template
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from api.auth import PUBLIC, roles
from api.customer_pages import message_page, page_language
from api.deps import PlatformDep, PrincipalDep
from api.i18n import (
    PAGE_HEADERS,
    Messages,
    channel_label,
    messages,
    purpose_label,
    purpose_text,
    when,
)
from api.openapi import GET_AND_HEAD, NAMES_A_CUSTOMER
from cdp.apikeys import Principal
from cdp.db.tables import identities, profiles
from cdp.errors import Gone, InvalidInput, NotFound
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier
from consent.dsr import requests as dsr
from consent.dsr.access import access_export
from consent.dsr.schemas import identifier_of
from consent.dsr.worker import run_one
from consent.masking import mask
from consent.optout import claims_from_token
from consent.policy import GPC_PURPOSE, Policy
from consent.preference_links import PreferenceLinkIn, link_holder, manage_link
from consent.schemas import ConsentIn, EvidenceIn
from consent.service import consent_view, record_consent
from consent.tokens import ExpiredToken, TokenClaims, TokenError

log = structlog.get_logger("api.preferences")
WORDING_VERSION = "2026-11-v1"
SOURCE = "preference_centre"
METHOD = "preference_centre"
GPC_METHOD = "gpc"
CUSTOMER = Principal("customer", "customer")
# Purposes about the customer's data rather than a message channel: one switch for all channels.
WHOLE_PURPOSES = frozenset({"sale_share", "profiling"})
SERVICE = "service"  # messages about the customer's orders (a purpose every policy has)
DONE_NOTICES = {
    "saved": "pref_saved",
    "unchanged": "pref_nothing_changed",
    "opted_out": "pref_opted_out",
    "grants_refused": "pref_grants_need_new_link",
}


# ----------------------------------------------------------------------------- plain domain


def wording_id(lang: str) -> str:
    return f"preference-centre/{WORDING_VERSION}/{lang}"


def gpc_applies(policy: Policy, jurisdiction: str | None, header: str | None) -> bool:
    """A `Sec-GPC: 1` signal counts where the jurisdiction's policy makes it an opt-out."""
    j = policy.jurisdictions.get(jurisdiction or "")
    return (
        (header or "").strip() == "1"
        and j is not None
        and j.gpc == "opt_out_sale"
        and GPC_PURPOSE in policy.purposes
    )


@dataclass(frozen=True, slots=True)
class Choice:
    key: str  # "purpose:channel", or "purpose:*" for a whole purpose
    purpose: str
    channel: str  # a channel, or "*"
    channels: tuple[str, ...]  # the channels the switch stands for
    allowed: bool  # the contactability rule's answer now (any of `channels`)
    addresses: tuple[str, ...] = ()  # masked: those it is on for where it is on, else all
    locked: bool = False  # set by the browser's GPC signal: not changeable here
    off_at: tuple[str, ...] = ()  # masked: the customer's other addresses, where it is on


@dataclass(frozen=True, slots=True)
class Group:
    purpose: str
    contract: bool  # every shown channel is on the contract basis (service messages)
    choices: tuple[Choice, ...]
    advertiser: str | None = None  # whose advertising a grant allows (38-FZ art. 18)


@dataclass(frozen=True, slots=True)
class Change:
    choice: Choice
    status: str  # granted | withdrawn


def build_groups(
    policy: Policy,
    jurisdiction: str | None,
    contactable: dict[str, dict[str, bool]],
    addresses: dict[str, list[str]],
    gpc: bool = False,
    off_at: dict[tuple[str, str], list[str]] | None = None,
) -> list[Group]:
    """The switches the customer sees: a channel shows where the policy of their jurisdiction
    has a basis for it and they have an address of its kind (profile channels always do).
    `off_at`: (purpose, channel) -> the customer's addresses of the channel not contactable
    for it (masked); a switch that is on names them apart, so that a customer with two
    emails, one of which they unsubscribed, sees that one off (it read "on" for both)."""
    off_at = off_at or {}
    groups: list[Group] = []
    for purpose in policy.purposes:
        channels = [
            name
            for name, ch in policy.channels.items()
            if policy.basis(jurisdiction or "", purpose, name) is not None
            and (ch.address == "profile" or addresses.get(ch.address))
        ]
        if not channels:
            continue
        now = contactable.get(purpose, {})
        contract = all(policy.basis(jurisdiction or "", purpose, c) == "contract" for c in channels)
        if purpose in WHOLE_PURPOSES:
            choices: tuple[Choice, ...] = (
                Choice(
                    key=f"{purpose}:*",
                    purpose=purpose,
                    channel="*",
                    channels=tuple(channels),
                    allowed=any(now.get(c, False) for c in channels),
                    locked=gpc and purpose == GPC_PURPOSE,
                ),
            )
        else:
            choices = tuple(
                _channel_choice(policy, purpose, c, now.get(c, False), addresses, off_at)
                for c in channels
            )
        groups.append(Group(purpose, contract, choices, policy.purposes[purpose].advertiser))
    return groups


def _channel_choice(
    policy: Policy,
    purpose: str,
    channel: str,
    allowed: bool,
    addresses: dict[str, list[str]],
    off_at: dict[tuple[str, str], list[str]],
) -> Choice:
    held = addresses.get(policy.channels[channel].address, [])
    off = list(off_at.get((purpose, channel), [])) if allowed else []
    on = list(held)
    for address in off:  # masks may repeat: take one of each off address out
        on.remove(address)
    return Choice(
        key=f"{purpose}:{channel}",
        purpose=purpose,
        channel=channel,
        channels=(channel,),
        allowed=allowed,
        addresses=tuple(on),
        off_at=tuple(off),
    )


def plan_changes(
    groups: list[Group], shown: set[str], wanted: set[str], *, can_grant: bool = True
) -> list[Change]:
    """What a submitted form changes: only switches that were on the page, not locked, and
    whose submitted state differs from the current one. Without `can_grant` (an unsubscribe
    link) a switch can only be turned off."""
    out: list[Change] = []
    for group in groups:
        for choice in group.choices:
            if choice.locked or choice.key not in shown:
                continue
            want = choice.key in wanted
            if want != choice.allowed and (can_grant or not want):
                out.append(Change(choice, "granted" if want else "withdrawn"))
    return out


def opt_out_plan(
    policy: Policy, jurisdiction: str | None, address_kinds: Iterable[str]
) -> list[tuple[str, str]]:
    """ "Unsubscribe from everything": the withdrawals it records, as (purpose, channel).

    An advertising purpose stops on every channel. Any other purpose stops on each channel
    whose basis is not the contract alone, so that messages about orders continue where they
    rest on the contract: a US federal customer's service email, calls, push and messenger go
    on, while the consent that automated service texts need (TCPA: opt-in) is withdrawn. A
    purpose none of whose channels goes on is withdrawn once, on `*`, which also reaches an
    address learned later; otherwise once per channel to stop on which the customer has an
    address (`address_kinds`: "email", "phone"; push and messenger reach the profile)."""
    held = {*address_kinds, "profile"}
    out: list[tuple[str, str]] = []
    for purpose, spec in policy.purposes.items():
        bases = {c: policy.basis(jurisdiction or "", purpose, c) for c in policy.channels}
        stop = [
            c
            for c, basis in bases.items()
            if basis is not None and (spec.advertising or basis != "contract")
        ]
        if not stop:
            continue
        if len(stop) == sum(basis is not None for basis in bases.values()):
            out.append((purpose, "*"))
        else:
            out.extend((purpose, c) for c in stop if policy.address_kind(c) in held)
    return out


def opt_out_text(t: Messages, plan: Iterable[tuple[str, str]]) -> str:
    """What the button says it does, from what it will withdraw: whether messages about the
    customer's orders (the `service` purpose) continue, and on which channels they stop."""
    service = [channel for purpose, channel in plan if purpose == SERVICE]
    if not service:
        orders = t.pref_optout_orders_continue
    elif "*" in service:
        orders = t.pref_optout_orders_stop
    else:
        orders = t.pref_optout_orders_except.format(", ".join(channel_label(t, c) for c in service))
    return f"{t.pref_optout_text} {orders}"


# ----------------------------------------------------------------------------- use cases


@dataclass(slots=True)
class Centre:
    profile_id: uuid.UUID
    jurisdiction: str | None
    groups: list[Group]
    addresses: list[str]  # masked, every email and phone of the customer
    contactable: dict[str, dict[str, bool]]
    opt_out: list[tuple[str, str]]  # what "unsubscribe from everything" withdraws (opt_out_plan)
    gpc: bool = False
    token_address_owned: bool = False  # the token's address still belongs to this profile
    can_manage: bool = False  # a manage link: grants, data download and erasure
    expired: bool = False  # a manage link past its expiry: it only stops messages now
    notices: list[tuple[str, str]] = field(default_factory=list)

    @property
    def gpc_open(self) -> bool:
        """Sale/sharing is still allowed on some channel (so the GPC signal changes it)."""
        return any(self.contactable.get(GPC_PURPOSE, {}).values())


async def load_centre(
    conn: AsyncConnection, p: Platform, pid: uuid.UUID, claims: TokenClaims, gpc_header: str | None
) -> Centre:
    jurisdiction = (
        await conn.execute(select(profiles.c.jurisdiction).where(profiles.c.id == pid))
    ).scalar_one()
    view = await consent_view(conn, p, pid)
    rows = (
        await conn.execute(
            select(identities.c.kind, identities.c.bidx, identities.c.value)
            .where(identities.c.profile_id == pid, identities.c.kind.in_(("email", "phone")))
            .order_by(identities.c.created_at, identities.c.id)
        )
    ).all()
    cipher = (await p.keys.ciphers(conn, [pid])).get(pid)
    by_kind: dict[str, list[str]] = {}
    masked: dict[bytes, tuple[str, str]] = {}  # blind index -> (kind, masked address)
    for kind, bidx, value in rows:
        plain = cipher.decrypt("identities.value", value) if cipher else None
        by_kind.setdefault(kind, []).append(mask(kind, plain))
        masked[bidx] = (kind, by_kind[kind][-1])
    off_at = {
        (purpose, channel): [
            address
            for bidx, (kind, address) in masked.items()
            if kind == p.policy.address_kind(channel) and bidx not in reached
        ]
        for purpose, channels in view.open_at.items()
        for channel, reached in channels.items()
    }
    gpc = gpc_applies(p.policy, jurisdiction, gpc_header)
    return Centre(
        profile_id=pid,
        jurisdiction=jurisdiction,
        groups=build_groups(p.policy, jurisdiction, view.contactable, by_kind, gpc, off_at),
        addresses=[a for kind in ("email", "phone") for a in by_kind.get(kind, [])],
        contactable=view.contactable,
        opt_out=opt_out_plan(p.policy, jurisdiction, by_kind),
        gpc=gpc,
        token_address_owned=any(b == claims.subject for _, b, _ in rows),
        can_manage=claims.can_manage,
    )


def evidence_for(request: Request, p: Platform, lang: str, method: str) -> EvidenceIn:
    """How and where the change was made. The page URL is recorded without the token: the
    token is a capability and the evidence is handed to auditors."""
    host = request.client.host if request.client else None
    agent = request.headers.get("user-agent") or None
    return EvidenceIn(
        wording_id=wording_id(lang),
        method=method,
        ip=host[:64] if host else None,
        user_agent=agent[:1000] if agent else None,
        page_url=f"{p.settings.public_url}/preferences/{{token}}",
    )


async def record(
    p: Platform, ident: Identifier, purpose: str, channel: str, status: str, evidence: EvidenceIn
) -> None:
    body = ConsentIn(
        purpose=purpose,
        channel=channel,
        status=status,  # type: ignore[arg-type]
        source=SOURCE,
        evidence=evidence,
        profile_id=str(ident.profile_id) if ident.profile_id else None,
    )
    await record_consent(p, body, ident, CUSTOMER.name)


async def apply_changes(
    p: Platform, centre: Centre, claims: TokenClaims, changes: list[Change], evidence: EvidenceIn
) -> None:
    """Withdrawals concern every address of the customer on the channel; a grant goes to the
    address the link was sent to where it is of the channel's kind (that address is proven),
    else to the customer's addresses of that kind."""
    whole = Identifier("profile_id", profile_id=centre.profile_id)
    for change in changes:
        c = change.choice
        if change.status == "withdrawn":
            await record(p, whole, c.purpose, c.channel, "withdrawn", evidence)
            continue
        for channel in c.channels:
            ident = whole
            kind = p.policy.address_kind(channel)
            if centre.token_address_owned and kind == claims.subject_kind != "profile":
                ident = Identifier(kind, bidx=claims.subject)
            await record(p, ident, c.purpose, channel, "granted", evidence)


async def opt_out_everything(p: Platform, centre: Centre, evidence: EvidenceIn) -> None:
    whole = Identifier("profile_id", profile_id=centre.profile_id)
    for purpose, channel in centre.opt_out:
        await record(p, whole, purpose, channel, "withdrawn", evidence)


async def honour_gpc(p: Platform, centre: Centre, evidence: EvidenceIn) -> bool:
    """Record the GPC opt-out unless sale/sharing is already off everywhere (no event per view)."""
    if not centre.gpc or not centre.gpc_open:
        return False
    whole = Identifier("profile_id", profile_id=centre.profile_id)
    await record(p, whole, GPC_PURPOSE, "*", "withdrawn", evidence)
    return True


# ----------------------------------------------------------------------------- HTTP


def _invalid_link(request: Request, _: Exception) -> Response[Any]:
    return message_page(request, 404, "link_invalid_title", "link_invalid_text")  # type: ignore[return-value]


def _expired_link(request: Request, _: Exception) -> Response[Any]:
    return message_page(request, 404, "link_expired_title", "link_expired_text")  # type: ignore[return-value]


def _erased(request: Request, _: Exception) -> Response[Any]:
    return message_page(request, 410, "erased_title", "erased_text")  # type: ignore[return-value]


class ManageOnly(Exception):
    """An unsubscribe link asked for what only a manage link may do."""


def _needs_manage(centre: Centre) -> None:
    if centre.expired:
        raise ExpiredToken("expired token")
    if not centre.can_manage:
        raise ManageOnly


def _manage_only(request: Request, _: Exception) -> Response[Any]:
    return message_page(request, 403, "manage_only_title", "manage_only_text")  # type: ignore[return-value]


def _invalid_input(request: Request, _: Exception) -> Response[Any]:
    return message_page(request, 400, "error_title", "link_invalid_text")  # type: ignore[return-value]


async def _open(p: Platform, token: str, request: Request) -> tuple[TokenClaims, Centre]:
    """The link's claims and the customer's centre. A manage link past its expiry opens as an
    unsubscribe link (`Centre.expired`): a customer who took longer than its hour, or who
    comes back to it days later, can still turn messages off, and can do nothing else."""
    try:
        claims, expired = claims_from_token(p, token), False
    except ExpiredToken as exc:
        if exc.stops_only is None:
            raise
        claims, expired = exc.stops_only, True
    async with p.db.read(snapshot=True) as conn:
        pid = await link_holder(conn, claims)
        centre = await load_centre(conn, p, pid, claims, request.headers.get("sec-gpc"))
    centre.expired = expired
    return claims, centre


def _page(
    t: Messages, token: str, centre: Centre, *, status: int = 200, error: str | None = None
) -> Template:
    groups = [
        {
            "purpose": g.purpose,
            "label": purpose_label(t, g.purpose),
            "text": " ".join(
                part
                for part in (
                    purpose_text(t, g.purpose, ""),
                    t.pref_advertiser.format(g.advertiser) if g.advertiser else "",
                )
                if part
            ),
            "contract": g.contract,
            "choices": [
                {
                    "key": c.key,
                    "id": f"pref-{c.purpose}-{'all' if c.channel == '*' else c.channel}",
                    "label": t.allow_all if c.channel == "*" else channel_label(t, c.channel),
                    "allowed": c.allowed,
                    "locked": c.locked,
                    "addresses": c.addresses,
                    "off_at": c.off_at,
                }
                for c in g.choices
            ],
        }
        for g in centre.groups
    ]
    return Template(
        "preferences.html",
        context={
            "t": t,
            "base": f"/preferences/{token}",
            "groups": groups,
            "addresses": centre.addresses,
            "notices": centre.notices,
            "error": error,
            "wording_id": wording_id(t.lang),
            "manage": centre.can_manage,
            "optout_text": opt_out_text(t, centre.opt_out),
        },
        status_code=status,
    )


class PreferenceCentre(Controller):
    path = "/preferences"
    opt = PUBLIC  # the signed token in the path is the capability
    include_in_schema = False
    response_headers = PAGE_HEADERS
    exception_handlers = {  # noqa: RUF012 (Litestar reads the class attribute)
        TokenError: _invalid_link,
        ExpiredToken: _expired_link,
        NotFound: _invalid_link,
        Gone: _erased,
        InvalidInput: _invalid_input,
        ManageOnly: _manage_only,
    }

    @route(
        "/{token:str}",
        http_method=GET_AND_HEAD,  # mail scanners send HEAD before they follow a link (was a 405)
        summary="The preference centre (GET records a GPC opt-out where it applies)",
    )
    async def show(
        self,
        token: FromPath[str],
        platform: PlatformDep,
        request: Request,
        done: FromQuery[str | None] = None,
        lang: FromQuery[str | None] = None,
    ) -> Template:
        _, centre = await _open(platform, token, request)
        t = messages(page_language(request, lang, centre.jurisdiction))
        if centre.gpc and request.method == "GET":  # HEAD changes nothing
            recorded = await honour_gpc(
                platform, centre, evidence_for(request, platform, t.lang, GPC_METHOD)
            )
            if recorded:
                _, centre = await _open(platform, token, request)
            centre.notices.append(("gpc", t.gpc_recorded if recorded else t.gpc_honoured))
        if done in DONE_NOTICES:
            centre.notices.append(("ok", t[DONE_NOTICES[done]]))
        if centre.expired:
            centre.notices.append(("expired", t.pref_link_expired_stops_only))
        return _page(t, token, centre)

    @post("/{token:str}", summary="Save the customer's choices")
    async def save(self, token: FromPath[str], platform: PlatformDep, request: Request) -> Redirect:
        claims, centre = await _open(platform, token, request)
        form = await request.form()
        lang = page_language(request, form.get("lang"), centre.jurisdiction)
        # a browser sends no "allow" when every box is unticked (withdraw everything), and no
        # "shown" when every choice is locked
        shown, wanted = set(form.getall("shown", [])), set(form.getall("allow", []))
        changes = plan_changes(centre.groups, shown, wanted, can_grant=centre.can_manage)
        choices = [c for g in centre.groups for c in g.choices if c.key in shown and not c.locked]
        if changes:
            evidence = evidence_for(request, platform, lang, METHOD)
            await apply_changes(platform, centre, claims, changes, evidence)
        done = "saved" if changes else "unchanged"
        if centre.expired and any(c.key in wanted and not c.allowed for c in choices):
            done = "grants_refused"  # what they turned off is off; turning on needs a new link
        return Redirect(
            f"/preferences/{token}", query_params={"done": done, "lang": lang}, status_code=303
        )

    @post("/{token:str}/opt-out", summary="Unsubscribe from everything")
    async def opt_out(
        self, token: FromPath[str], platform: PlatformDep, request: Request
    ) -> Redirect:
        _, centre = await _open(platform, token, request)
        form = await request.form()
        lang = page_language(request, form.get("lang"), centre.jurisdiction)
        await opt_out_everything(platform, centre, evidence_for(request, platform, lang, METHOD))
        return Redirect(
            f"/preferences/{token}",
            query_params={"done": "opted_out", "lang": lang},
            status_code=303,
        )

    @post("/{token:str}/access", status_code=200, summary="Download a copy of the customer's data")
    async def access(
        self, token: FromPath[str], platform: PlatformDep, request: Request
    ) -> Response[dict[str, Any]]:
        _, centre = await _open(platform, token, request)
        _needs_manage(centre)
        body = await access_export(
            platform, Identifier("profile_id", profile_id=centre.profile_id), CUSTOMER
        )
        return Response(
            body,
            media_type="application/json",
            headers={"Content-Disposition": 'attachment; filename="my-data.json"'},
        )

    @post("/{token:str}/erasure", status_code=202, summary="Request erasure of the customer's data")
    async def erasure(
        self, token: FromPath[str], platform: PlatformDep, request: Request
    ) -> Template:
        _, centre = await _open(platform, token, request)
        _needs_manage(centre)
        form = await request.form()
        t = messages(page_language(request, form.get("lang"), centre.jurisdiction))
        if form.get("confirm") != "yes":
            return _page(t, token, centre, status=400, error=t.erase_need_confirm)
        submitted = await dsr.submit_erasure(
            platform,
            Identifier("profile_id", profile_id=centre.profile_id),
            requested_by="customer",
            actor=CUSTOMER.name,
        )
        async with platform.db.read() as conn:
            row = await dsr.load(conn, submitted.request_id)
        text = (
            t.erase_joined_text
            if submitted.joined
            else t.erase_received_text.format(
                id=row.id, received=when(row.received_at), due=when(row.due_at)
            )
        )
        task = BackgroundTask(run_one, platform, row.id) if row.status == "received" else None
        return Template(
            "message.html",
            context={"t": t, "title": t.erase_received_title, "paragraphs": [text], "back": None},
            status_code=202,
            background=task,
        )


@post(
    "/v1/preference-links",
    opt={**roles("admin", "ingest"), **NAMES_A_CUSTOMER},
    tags=["consent"],
    status_code=201,
    summary="A manage link to the preference centre, for a customer the operator has signed in",
    description=(
        "Names the customer by one identifier (top level or in `identifier`). The link lets "
        "its holder record grants, download the customer's data and request erasure, so give "
        "it only to the customer, after your own sign-in; it expires after `valid_minutes` "
        "(default 60, at most 10080). The unsubscribe token of segment members can only stop "
        "messages."
    ),
    response_description="The link: `profile_id`, `url`, `token` and `expires_at`",
)
async def post_preference_link(
    data: JSONBody[PreferenceLinkIn], platform: PlatformDep, principal: PrincipalDep
) -> dict[str, Any]:
    ident = identifier_of(data, platform.policy, platform.keys.indexer)
    link = await manage_link(platform, ident, principal, data.valid_minutes)
    log.info("preference_link_issued", profile_id=str(link.profile_id), key=principal.name)
    return {
        "profile_id": str(link.profile_id),
        "url": link.url,
        "token": link.token,
        "expires_at": link.expires_at,
    }
