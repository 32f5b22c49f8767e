"""Audit endpoints for compliance officers: chain verification, consent events, evidence
bundles, the access log and signed checkpoints. Roles `compliance` and `admin`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from litestar import Controller, get, post
from litestar.params import FromQuery

from api.auth import roles
from api.deps import PlatformDep, PrincipalDep
from api.openapi import NAMES_A_CUSTOMER
from api.params import Limit, Moment
from cdp.access_log import record_access
from cdp.errors import Conflict, InvalidInput
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier, parse_identifier
from cdp.segments.cursor import check_limit
from consent.audit import access, events
from consent.audit.bundle import customer_bundle
from consent.audit.checkpoints import ChainBrokenError, create_checkpoint, list_checkpoints
from consent.audit.paging import decode_cursor, encode_cursor, period
from consent.audit.signing import signer_for
from consent.audit.verify import snapshot, verify_ledger
from consent.dsr.consistency import requests_report

AUDITORS = roles("admin", "compliance")
CUSTOMER = ("profile_id", "email", "phone")  # the identifiers the audit queries take
PID = ("profile_id",)


def _customer_ident(
    platform: Platform, profile_id: str | None, email: str | None, phone: str | None
) -> Identifier | None:
    if profile_id is None and email is None and phone is None:
        return None
    return parse_identifier(
        platform.policy,
        platform.keys.indexer,
        profile_id=profile_id,
        email=email,
        phone=phone,
        accepted=CUSTOMER,
    )


class AuditController(Controller):
    path = "/v1/audit"
    tags = ("audit",)

    @get(
        "/verify",
        opt=AUDITORS,
        summary="Recompute the consent ledger's hash chain, check the stored checkpoints, and "
        "check the derived consent state and suppression list against the ledger",
        description="`ok` is false when any entry was changed, removed or reordered, when a "
        "stored checkpoint no longer matches the chain (history rewritten or cut short), when "
        "a checkpoint's signature does not verify, or when the consent state or the suppression "
        "list (which segments read) disagrees with the ledger. A checkpoint signed by another "
        "key than the configured one is listed as `untrusted_key` and vouches for nothing. "
        "`first_invalid_seq` names the first entry that fails, or the first entry no matching "
        "checkpoint vouches for; it is null when only the state disagrees. "
        "`state_mismatches` counts the disagreements (null when the chain does not verify, so "
        "there is nothing to compare with); `state` breaks them down by kind (`state_differs`, "
        "`state_missing`, `state_extra`, `suppression_unbacked`, `suppression_missing`, "
        "`erasure_unbacked`: an address's erasure time that no completed erasure accounts "
        "for) with a "
        "few examples named by ledger seq, never by address. `dsr_transitions` verifies the "
        "erasure requests' chained transitions and that each request's status, due date and "
        "extensions are what its transitions recorded, and a completed one left its customer "
        "erased (`mismatched_request_ids`: a few of those that are not). Checkpoints kept "
        "outside the database are checked with `cdp audit verify --checkpoints FILE`.",
        response_description=(
            "The verification: `ok`, `entries`, `head_hash`, `first_invalid_seq` (null when ok), "
            "and the checks of checkpoints, state and erasure requests"
        ),
    )
    async def verify(self, platform: PlatformDep) -> dict[str, Any]:
        signer = signer_for(platform.settings)
        async with snapshot(platform.db) as conn:
            checkpoints = await list_checkpoints(conn)
            report = await verify_ledger(
                conn, checkpoints, policy=platform.policy, trusted_keys={signer.public_key}
            )
            dsr = await requests_report(conn)
        body = report.to_json()
        body["dsr_transitions"] = dsr
        body["ok"] = bool(body["ok"]) and dsr["ok"]
        return body

    @get(
        "/consent-events",
        opt=AUDITORS,
        summary="Consent ledger entries in ledger order, filtered by customer, purpose, "
        "channel and time",
        description="Name the customer by at most one of `profile_id`, `email`, `phone`: the "
        "entries of every profile of theirs and of every address they have. An entry on an "
        "address belongs to whoever held it when it was recorded: not to a customer it was "
        "wrongly merged with (since undone), nor, for an address erased with its customer and "
        "since given to someone else, to the new holder (name the erased customer by profile "
        "id). `subject.address` is the address as whoever holds it now has it, and null where "
        "nobody does or where the entry was recorded up to the address's erasure: an erased "
        "customer's entries never show the address, even once someone holds it again. "
        "`since` (inclusive) "
        "and `until` (exclusive) filter on `occurred_at`. A channel filter includes withdrawals "
        "from every channel (`*`) of the same address kind. `evidence` is decrypted where the "
        "customer's key still exists, else null. Every read is written to the access log.",
        response_description=(
            "A page of ledger entries in ascending `seq`: subject, purpose, channel, status, "
            "evidence (null once erased) and hashes"
        ),
    )
    async def consent_events(
        self,
        platform: PlatformDep,
        principal: PrincipalDep,
        profile_id: FromQuery[str | None] = None,
        email: FromQuery[str | None] = None,
        phone: FromQuery[str | None] = None,
        purpose: FromQuery[str | None] = None,
        channel: FromQuery[str | None] = None,
        since: Moment = None,
        until: Moment = None,
        limit: Limit = None,
        cursor: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        size = check_limit(limit)
        start, end = period(since, until)
        events.check_filter(platform, purpose, channel)
        position = decode_cursor(cursor, 1)
        after = position[0] if position else 0
        if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after < 2**63:
            raise InvalidInput.field("cursor", "not a cursor of this list")  # a seq: 64 bits
        ident = _customer_ident(platform, profile_id, email, phone)
        # a read, not a write: on SQLite a write transaction would hold every writer (an
        # opt-out too) while a filter reads through the ledger; its entry is committed
        # through the shared access-log commit before the answer leaves
        async with platform.db.read(snapshot=True) as conn:
            customer = await events.resolve_customer(conn, ident) if ident else None
            f = events.EventFilter(customer, purpose, channel, start, end)
            items, next_seq = await events.page(conn, platform, f, after, size)
        await record_access(
            platform.db,
            principal,
            "audit.consent_events",
            object_type="consent_ledger",
            object_id=str(customer.root) if customer and customer.root else None,
            profile_id=customer.root if customer else None,
            rows=len(items),
            detail={"customer": ident.kind if ident else None},
        )
        return {
            "items": items,
            "next_cursor": encode_cursor([next_seq]) if next_seq is not None else None,
        }

    @get(
        "/evidence-bundle",
        opt={**AUDITORS, **NAMES_A_CUSTOMER},
        summary="Every consent event of one customer with its evidence and chain proof, as JSON "
        "fit to hand to a regulator",
        description="Name the customer by one of `profile_id`, `email`, `phone`. 404 when "
        "nothing is known about them. Each read is written to the access log.",
        response_description=(
            "The customer's consent events with their evidence and the chain proof an outside "
            "verifier recomputes"
        ),
    )
    async def bundle(
        self,
        platform: PlatformDep,
        principal: PrincipalDep,
        profile_id: FromQuery[str | None] = None,
        email: FromQuery[str | None] = None,
        phone: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        ident = parse_identifier(
            platform.policy,
            platform.keys.indexer,
            profile_id=profile_id,
            email=email,
            phone=phone,
            accepted=CUSTOMER,
        )
        customer, body = await customer_bundle(platform, ident, principal.name)
        await record_access(  # committed before the answer leaves
            platform.db,
            principal,
            "audit.evidence_bundle",
            object_type="customer",
            object_id=str(customer.root) if customer.root else None,
            profile_id=customer.root,
            rows=len(body["events"]),
            detail={"customer": ident.kind},
        )
        return body

    @get(
        "/access-log",
        opt=AUDITORS,
        summary="Who read or exported personal data, when, and how much (oldest first)",
        description="`profile_id` covers every profile of that customer; `actor` is an API key "
        "name; `since` (inclusive) and `until` (exclusive) filter on the time of access.",
        response_description=(
            "A page of access-log entries: who (key name), what was read or exported, when, how "
            "many rows"
        ),
    )
    async def access_log(
        self,
        platform: PlatformDep,
        profile_id: FromQuery[str | None] = None,
        actor: FromQuery[str | None] = None,
        since: Moment = None,
        until: Moment = None,
        limit: Limit = None,
        cursor: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        size = check_limit(limit)
        start, end = period(since, until)
        after = _access_position(decode_cursor(cursor, 2))
        async with platform.db.read() as conn:
            pids = None
            if profile_id is not None:
                ident = parse_identifier(
                    platform.policy, platform.keys.indexer, profile_id=profile_id, accepted=PID
                )
                pids = (await events.resolve_customer(conn, ident)).profile_ids
            f = access.AccessFilter(pids, actor, start, end)
            items, last = await access.page(conn, f, after, size)
        next_cursor = encode_cursor([last[0].isoformat(), str(last[1])]) if last else None
        return {"items": items, "next_cursor": next_cursor}

    @get(
        "/checkpoints",
        opt=AUDITORS,
        summary="Signed checkpoints stored in the database",
        response_description=(
            "The stored checkpoints: how many entries each vouches for, the head hash, when, "
            "and its Ed25519 signature"
        ),
    )
    async def checkpoints(self, platform: PlatformDep) -> dict[str, Any]:
        signer = signer_for(platform.settings)
        async with platform.db.read() as conn:
            stored = await list_checkpoints(conn)
        return {
            "public_key": signer.public_key_b64,
            "key_id": signer.key_id,
            "items": [cp.to_json() for cp in stored],
        }

    @post(
        "/checkpoints",
        opt=AUDITORS,
        status_code=201,
        summary="Verify the entries since the last checkpoint, then sign and store the head",
        description="409 when the ledger does not verify (nothing is signed).",
        response_description="The new checkpoint: the entries and head hash it vouches for, signed",
    )
    async def checkpoint(self, platform: PlatformDep) -> dict[str, Any]:
        try:
            cp = await create_checkpoint(platform)
        except ChainBrokenError as exc:
            v = exc.verification
            raise Conflict(
                f"the consent ledger does not verify at seq {v.first_invalid_seq}: {v.reason}"
            ) from None
        assert cp is not None
        return cp.to_json()


def _access_position(position: list[Any] | None) -> tuple[datetime, UUID] | None:
    if position is None:
        return None
    try:
        at = datetime.fromisoformat(str(position[0]))
        last_id = UUID(str(position[1]))
        at.astimezone(UTC)  # 0001-01-01T00:00+10:56 is before year 1 in UTC: OverflowError
    except (ValueError, OverflowError):
        raise InvalidInput.field("cursor", "not a cursor of this list") from None
    if at.tzinfo is None:
        raise InvalidInput.field("cursor", "not a cursor of this list")
    return at, last_id
