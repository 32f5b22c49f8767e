"""Data subject requests: erasure requests (operator and customer side) and access requests."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Controller, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.exceptions import PermissionDeniedException
from litestar.params import FromPath, FromQuery, JSONBody

from api.auth import PUBLIC, roles
from api.deps import PlatformDep, PrincipalDep
from api.openapi import NAMES_A_CUSTOMER
from api.params import Limit
from cdp.access_log import log_access
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier
from consent.dsr import requests as dsr
from consent.dsr.access import access_export
from consent.dsr.schemas import AccessIn, ErasureIn, ReasonIn, identifier_of
from consent.dsr.worker import run_one
from consent.optout import claims_from_token
from consent.preference_links import link_holder

SUBMIT = roles("admin", "compliance", "ingest")
OFFICERS = roles("admin", "compliance")


async def _accepted(platform: Platform, submitted: dsr.Submitted) -> Response[dict[str, Any]]:
    """202 with the request; its erasure runs right after the answer (the worker is the net)."""
    async with platform.db.read() as conn:
        row = await dsr.load(conn, submitted.request_id)
    body = {
        "request_id": str(row.id),
        "status": row.status,
        "received_at": row.received_at,
        "due_at": row.due_at,
        "jurisdiction": row.jurisdiction,
        "requested_by": row.requested_by,
        "joined_existing": submitted.joined,
    }
    task = BackgroundTask(run_one, platform, row.id) if row.status == "received" else None
    return Response(body, status_code=202, background=task)


class ErasureRequestController(Controller):
    path = "/v1/erasure-requests"
    tags = ("data subject requests",)

    @post(
        "/",
        opt={**SUBMIT, **NAMES_A_CUSTOMER},
        status_code=202,
        summary="Request erasure of a customer",
        description=(
            "Names the customer by one identifier (top level or in `identifier`). Answers 202 "
            "with the request; a duplicate while one is open for the customer joins it and "
            "answers with the open request (`joined_existing: true`). `due_at` follows the "
            "jurisdiction's policy (the request's `jurisdiction`, else the customer's; never "
            "later than the customer's own, see `deadline_jurisdiction`). The "
            "erasure starts right after the answer. `note` is stored encrypted under the "
            "customer's data key and is destroyed with it."
        ),
        response_description=(
            "The request was accepted (or joined the open one): `request_id`, `status`, "
            "`received_at`, `due_at`"
        ),
    )
    async def submit(
        self, data: JSONBody[ErasureIn], platform: PlatformDep, principal: PrincipalDep
    ) -> Response[dict[str, Any]]:
        ident = identifier_of(data, platform.policy, platform.keys.indexer)
        submitted = await dsr.submit_erasure(
            platform,
            ident,
            requested_by=data.requested_by,
            actor=principal.name,
            jurisdiction=data.jurisdiction,
            note=data.note,
        )
        return await _accepted(platform, submitted)

    @post(
        "/by-token/{token:str}",
        opt=PUBLIC,
        status_code=202,
        summary="Customer-side erasure request, proven by a manage link's token",
        response_description=(
            "The customer's request was accepted (or joined the open one), with its due date"
        ),
    )
    async def submit_by_token(
        self, token: FromPath[str], platform: PlatformDep
    ) -> Response[dict[str, Any]]:
        claims = claims_from_token(platform, token)
        if not claims.can_manage:  # the sending tools hold unsubscribe tokens too
            raise PermissionDeniedException(
                "an unsubscribe token cannot request erasure: it needs a manage link "
                "(POST /v1/preference-links)"
            )
        async with platform.db.read() as conn:  # as the preference centre's erasure does
            holder = await link_holder(conn, claims)
        submitted = await dsr.submit_erasure(
            platform,
            Identifier("profile_id", profile_id=holder),
            requested_by="customer",
            actor="customer",
        )
        return await _accepted(platform, submitted)

    @get(
        "/",
        opt=OFFICERS,
        summary="List erasure requests, oldest first",
        description="Open requests past their due date carry `overdue: true`.",
        response_description="A page of erasure requests with their status and due date",
    )
    async def list_requests(
        self,
        platform: PlatformDep,
        status: FromQuery[str | None] = None,
        overdue: FromQuery[bool | None] = None,
        limit: Limit = None,
        cursor: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        async with platform.db.read() as conn:
            return await dsr.list_requests(
                conn, status=status, overdue=overdue, limit=limit, cursor=cursor
            )

    @get(
        "/{request_id:str}",
        opt=OFFICERS,
        summary="An erasure request and its transitions",
        description=(
            "An officer's reason for an extension or a rejection may name the customer: it is "
            "stored encrypted under the customer's data key (`reason_encrypted: true`) and "
            "shown while that key exists; after the customer's erasure it is null with "
            "`reason_readable: false`, and the request's history still verifies. Reading a "
            "note or such a reason is written to the access log."
        ),
        response_description="The request, its status, due date and chained transitions",
    )
    async def read(
        self, request_id: FromPath[str], platform: PlatformDep, principal: PrincipalDep
    ) -> dict[str, Any]:
        rid = dsr.parse_request_id(request_id)
        async with platform.db.write() as conn:
            body = await dsr.detail(conn, platform, rid)
            reasons = [t for t in body["transitions"] if t["reason_encrypted"]]
            if body["note"] is not None or any(t["reason_readable"] for t in reasons):
                await log_access(
                    conn,
                    principal,
                    "erasure_request.read_note",
                    object_type="dsr_request",
                    object_id=str(rid),
                    profile_id=uuid.UUID(body["profile_id"]),
                )
        return body

    @post(
        "/{request_id:str}/extend",
        opt=OFFICERS,
        status_code=200,
        summary="Take the policy's one extension (a reason is required); moves due_at",
        response_description="The request with its new `due_at`",
    )
    async def extend(
        self,
        request_id: FromPath[str],
        data: JSONBody[ReasonIn],
        platform: PlatformDep,
        principal: PrincipalDep,
    ) -> dict[str, Any]:
        rid = dsr.parse_request_id(request_id)
        await dsr.extend(platform, rid, data.reason, principal.name)
        async with platform.db.read() as conn:
            return await dsr.detail(conn, platform, rid)

    @post(
        "/{request_id:str}/reject",
        opt=OFFICERS,
        status_code=200,
        summary="Reject a request that has not started (a reason is required)",
        response_description="The request, now `rejected`",
    )
    async def reject(
        self,
        request_id: FromPath[str],
        data: JSONBody[ReasonIn],
        platform: PlatformDep,
        principal: PrincipalDep,
    ) -> dict[str, Any]:
        rid = dsr.parse_request_id(request_id)
        await dsr.reject(platform, rid, data.reason, principal.name)
        async with platform.db.read() as conn:
            return await dsr.detail(conn, platform, rid)


@post(
    "/v1/access-requests",
    opt={**OFFICERS, **NAMES_A_CUSTOMER},
    tags=["data subject requests"],
    status_code=200,
    summary="Everything held about a customer (written to the access log)",
    description="`processing` (what their data are processed for under their jurisdiction's "
    "policy: each purpose with its legal basis per channel, the retention period "
    "(`inactive_days`, null: kept until they ask for erasure) and the deadlines of their "
    "requests), `profile` (as `GET /v1/profiles/{id}`), `identities`, `sources` (the systems "
    "their data came from), `merges` (undone ones with `undone_at`), `merge_snapshots` (the "
    "values a merge keeps for an unmerge: as survivor, theirs from before it; as absorbed, what "
    "their profile brought), `match_suggestions` and `merge_reviews` naming their profiles "
    "(only their own profile ids), `consent_history` (every ledger entry about their profiles "
    "and addresses, with its evidence), `suppressions`, `events`, `segments`, `recipients` "
    "(`segment_exports` that handed them out, `webhook_deliveries` that carried their "
    "address), `access_log` and `erasure_requests` (as `GET /v1/erasure-requests/{id}`: note "
    "and transitions). Nothing in it names another customer. 404 for an unknown customer, "
    "410 for an erased one.",
    response_description=(
        "Everything held about the customer, with its consent history and evidence"
    ),
)
async def post_access_request(
    data: JSONBody[AccessIn], platform: PlatformDep, principal: PrincipalDep
) -> dict[str, Any]:
    ident = identifier_of(data, platform.policy, platform.keys.indexer)
    return await access_export(platform, ident, principal)
