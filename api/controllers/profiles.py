"""Profiles: upsert (one and batch), read by id or identifier, consent view."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from litestar import Controller, Response, get, post
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import FromPath, FromQuery, JSONBody
from sqlalchemy.ext.asyncio import AsyncConnection

from api.auth import roles
from api.deps import PlatformDep, PrincipalDep
from api.openapi import NAMES_A_CUSTOMER
from cdp.access_log import record_access
from cdp.apikeys import Principal
from cdp.errors import DomainError, NotFound
from cdp.ids import parse_uuid
from cdp.platform import Platform
from cdp.profiles.identifiers import find_profile, parse_identifier
from cdp.profiles.identity import resolve_profile_id
from cdp.profiles.ingest import Outcome
from cdp.profiles.schemas import BatchIn, ProfileIn
from cdp.profiles.service import profile_view, upsert_batch, upsert_one
from consent.service import consent_view

INGEST = roles("admin", "ingest")
READERS = roles("admin", "compliance")


# what POST /v1/profiles answers with 200 (outcome_body), for the OpenAPI document
JOINED = {
    "profile_id": "0193a5f2-7c1e-7b3a-9d2e-5f0a1b2c3d4e",
    "created": False,
    "matched_on": ["email"],
    "merged_profile_ids": [],
}


def outcome_body(o: Outcome) -> dict[str, Any]:
    body: dict[str, Any] = {
        "profile_id": str(o.profile_id),
        "created": o.created,
        "matched_on": o.matched_on,
        "merged_profile_ids": [str(x) for x in o.merged_profile_ids],
    }
    if o.review_id is not None:
        body["review_id"] = str(o.review_id)
    if o.ignored:
        body["ignored"] = [{"field": e.field, "message": e.message} for e in o.ignored]
    return body


def error_body(exc: DomainError) -> dict[str, Any]:
    return {
        "status": exc.status,
        "detail": exc.detail,
        "errors": [{"field": e.field, "message": e.message} for e in exc.errors],
    }


async def _view_logged(
    platform: Platform,
    principal: Principal,
    find: Callable[[AsyncConnection], Awaitable[uuid.UUID]],
) -> dict[str, Any]:
    """The decrypted profile `find` names. Every read of a profile is written to the access
    log, and committed there before the answer leaves. The read itself takes no write lock
    (on SQLite, writes would wait behind it); its entry joins those being committed."""
    async with platform.db.read(snapshot=True) as conn:
        pid = await find(conn)
        body = await profile_view(conn, platform, pid)
    await record_access(
        platform.db,
        principal,
        "profile.read",
        object_type="profile",
        object_id=str(pid),
        profile_id=pid,
    )
    return body


class ProfileController(Controller):
    path = "/v1/profiles"
    tags = ("profiles",)

    @post(
        "/",
        opt=INGEST,
        summary="Upsert one customer record and resolve its identity",
        description="201 when a new profile was created, 200 when the record joined one.",
        response_description="A new profile was created",
        responses={
            200: ResponseSpec(
                dict[str, Any],
                description="The record joined a profile",
                generate_examples=False,  # Litestar's were random keys and values
                examples=[
                    Example(id="joined", summary="The record joined a profile", value=JOINED)
                ],
            )
        },
    )
    async def upsert(
        self, data: JSONBody[ProfileIn], platform: PlatformDep, principal: PrincipalDep
    ) -> Response[dict[str, Any]]:
        outcome = await upsert_one(platform, data, principal.name)
        return Response(outcome_body(outcome), status_code=201 if outcome.created else 200)

    @post(
        "/batch",
        opt={**INGEST, "records_report_errors": True},  # api.nul_guard leaves them to each record
        status_code=200,
        summary="Upsert up to 1000 records",
        response_description=(
            "One result per record, in order: its profile or its error (a bad record does not stop"
            " the others)"
        ),
    )
    async def batch(
        self, data: JSONBody[BatchIn], platform: PlatformDep, principal: PrincipalDep
    ) -> dict:
        items = await upsert_batch(platform, data.records, principal.name)
        results = []
        for item in items:
            if item.outcome is not None:
                results.append({"index": item.index, **outcome_body(item.outcome)})
            else:
                assert item.error is not None
                results.append({"index": item.index, "error": error_body(item.error)})
        return {"results": results}

    @get(
        "/",
        opt={**READERS, **NAMES_A_CUSTOMER},
        summary="Find a profile by email, phone, or source + external_id",
        response_description=(
            "The decrypted profile holding that identifier (as `GET /v1/profiles/{profile_id}`)"
        ),
    )
    async def lookup(
        self,
        platform: PlatformDep,
        principal: PrincipalDep,
        email: FromQuery[str | None] = None,
        phone: FromQuery[str | None] = None,
        source: FromQuery[str | None] = None,
        external_id: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        ident = parse_identifier(
            platform.policy,
            platform.keys.indexer,
            email=email,
            phone=phone,
            source=source,
            external_id=external_id,
            accepted=("email", "phone", "external_id"),  # a profile id goes in the path
        )

        async def find(conn: AsyncConnection) -> uuid.UUID:
            pid = await find_profile(conn, ident)
            if pid is None:
                raise NotFound("no profile has this identifier")
            return pid

        return await _view_logged(platform, principal, find)

    @get(
        "/{profile_id:str}",
        opt=READERS,
        summary="The decrypted profile",
        response_description=(
            "The decrypted profile: identities, fields, traits, stats, consents and merged ids (a "
            "merged-away id answers with the survivor)"
        ),
    )
    async def read(
        self, profile_id: FromPath[str], platform: PlatformDep, principal: PrincipalDep
    ) -> dict:
        pid = parse_uuid(profile_id)
        if pid is None:
            raise NotFound("no profile with this id")
        return await _view_logged(platform, principal, lambda conn: resolve_profile_id(conn, pid))

    @get(
        "/{profile_id:str}/consents",
        opt=READERS,
        summary="Consent state and contactability",
        response_description=(
            "The consent state of each address and whether the customer is contactable, by purpose"
            " and channel"
        ),
    )
    async def consents(
        self, profile_id: FromPath[str], platform: PlatformDep, principal: PrincipalDep
    ) -> dict:
        pid = parse_uuid(profile_id)
        if pid is None:
            raise NotFound("no profile with this id")
        async with platform.db.read(snapshot=True) as conn:
            survivor = await resolve_profile_id(conn, pid)
            view = await consent_view(conn, platform, survivor)
        await record_access(  # committed before the answer leaves, as for a profile read
            platform.db,
            principal,
            "profile.consents",
            object_type="profile",
            object_id=str(survivor),
            profile_id=survivor,
        )
        return {"profile_id": str(survivor), "items": view.items, "contactable": view.contactable}
