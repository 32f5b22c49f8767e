"""Manage links to the preference centre, for a customer the operator has signed in.

The unsubscribe token in every segment member is also held by the sending tools, so it can only
stop messages (`consent.tokens`). Recording a grant, downloading the customer's data and asking
for erasure need a `manage` token: the operator's own site, where the customer has signed in,
asks for one here (`POST /v1/preference-links`) and sends the customer to it. It expires.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.access_log import log_access
from cdp.apikeys import Principal
from cdp.db.tables import identities, profiles
from cdp.errors import Gone, NotFound
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier, find_profile
from cdp.profiles.identity import resolve_profile_id
from consent import tokens
from consent.dsr.schemas import AccessIn
from consent.subjects import profile_subject

DEFAULT_MINUTES = 60
MAX_MINUTES = 7 * 24 * 60


class PreferenceLinkIn(AccessIn, forbid_unknown_fields=True, kw_only=True):
    """POST /v1/preference-links: the customer, by one identifier, and how long the link lives."""

    valid_minutes: Annotated[int, msgspec.Meta(ge=1, le=MAX_MINUTES)] = DEFAULT_MINUTES


@dataclass(frozen=True, slots=True)
class ManageLink:
    profile_id: uuid.UUID
    token: str
    url: str
    expires_at: datetime


async def manage_link(
    p: Platform, ident: Identifier, who: Principal, minutes: int = DEFAULT_MINUTES
) -> ManageLink:
    """A manage link for the customer the identifier names (NotFound if none, Gone if erased).
    Named by an email or a phone, the link speaks for that address (grants made with it go
    to it); otherwise for the profile. Its issue is in the access log under the asking key
    (`who`): whoever holds the link can download the customer's data, and that download is
    logged as the customer's."""
    async with p.db.write() as conn:
        pid = await find_profile(conn, ident)
        if pid is None:
            raise NotFound("no profile with this identifier")
        await log_access(
            conn,
            who,
            "preference_link.issued",
            object_type="profile",
            object_id=str(pid),
            profile_id=pid,
            rows=0,
            detail={"valid_minutes": minutes},
        )
    if ident.kind in ("email", "phone") and ident.bidx is not None:
        kind, subject = ident.kind, ident.bidx
    else:
        kind, subject = "profile", profile_subject(pid)
    expires = int(time.time()) + minutes * 60
    token = tokens.issue(
        p.keys.token_key,
        tokens.TokenClaims(pid, kind, subject, "marketing", "*", tokens.MANAGE, expires),
    )
    return ManageLink(
        profile_id=pid,
        token=token,
        url=f"{p.settings.public_url}/preferences/{token}",
        expires_at=datetime.fromtimestamp(expires, UTC),
    )


async def link_holder(conn: AsyncConnection, claims: tokens.TokenClaims) -> uuid.UUID:
    """The customer a link (unsubscribe or manage) stands for: whoever holds the address it was
    sent to, while someone does, else the profile it names (followed through merges; NotFound,
    Gone once erased). A link names the profile that held the address when it was issued; after
    an unmerge gave the address back to another customer, the link in her inbox showed and
    changed the other customer's preferences ("unsubscribe from everything" stopped his
    messages, not hers).

    A link whose customer was erased before the address's holder got it is the erased
    customer's, and answers Gone: it was issued before that erasure, to someone who no longer
    exists here. Until 2026-12-07 it acted for the address's next holder (a reassigned phone
    number), so the erased customer's old link showed the stranger's preferences, and a manage
    link still in its validity downloaded his data and asked for his erasure."""
    if claims.subject_kind in ("email", "phone"):
        i = identities.c
        held = (
            await conn.execute(select(i.profile_id, i.created_at).where(i.bidx == claims.subject))
        ).first()
        if held is not None:
            erased_at = await _erased_at(conn, claims.profile_id)
            if erased_at is not None and erased_at < held.created_at:
                raise Gone("this link's customer was erased")
            return await resolve_profile_id(conn, held.profile_id)
    return await resolve_profile_id(conn, claims.profile_id)


async def _erased_at(conn: AsyncConnection, profile_id: uuid.UUID) -> datetime | None:
    """When the profile a link names was erased (with its customer: an erasure marks every
    profile of theirs, merged-away ones too), or None while it is not."""
    pc = profiles.c
    return (
        await conn.execute(select(pc.updated_at).where(pc.id == profile_id, pc.status == "erased"))
    ).scalar()
