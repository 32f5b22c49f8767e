"""The evidence bundle: everything a regulator needs to check one customer's consent record.

Every consent event of the customer with its evidence, the wording version and the policy
version that decided, its place in the hash chain with the exact bytes that were hashed, the
result of verifying the whole chain against the stored checkpoints, the latest signed checkpoint
and plain-language instructions to check all of it without our software.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.errors import NotFound
from cdp.ids import utcnow
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier
from consent.audit.checkpoints import list_checkpoints
from consent.audit.events import Customer, EventFilter, all_events, render, resolve_customer
from consent.audit.signing import signer_for
from consent.audit.verify import OK, verify_ledger
from consent.chain import HASHED_FIELDS, TRAILING_FIELDS, canonical_payload

FORMAT = "cdp-evidence-bundle/v1"


def how_to_verify(fields: tuple[str, ...]) -> list[str]:
    return [
        "1. Each event records one consent change: who (subject and profile_id), what "
        "(purpose, channel, status, the wording_id of the text the customer was shown), when "
        "(occurred_at, recorded_at), how (method) and where (source, and the evidence: page, IP "
        "address, user agent). policy_version names the policy files that were in force.",
        "2. Each event's hash can be recomputed with any SHA-256 tool: hash = SHA-256 of the 32 "
        "bytes of prev_hash (hex-decoded) followed by the UTF-8 bytes of the event's "
        "`canonical` text. The result, in hex, must equal `hash`.",
        "3. `canonical` is a JSON array of the recorded fields in this order: "
        + ", ".join(fields)
        + "; then, where the event's subject has a `via_profile` (true or false, recorded "
        "since 2026-12-07), that value as a last element. Compare it with the event: bytes "
        "appear in base64 and times in UTC. The evidence "
        "and the address appear only in protected form (encrypted evidence, keyed address "
        "index), so the record stays provable after the customer's personal data is erased.",
        "4. The events belong to one ledger of all customers: each entry's prev_hash is the "
        "hash of the entry before it (seq - 1). Entries of other customers are left out of "
        "this bundle for their privacy; `chain` reports the operator's verification of the "
        "whole ledger at the time the bundle was made.",
        "5. `checkpoint` is a statement signed with Ed25519: the ledger held `entries` entries "
        "whose last hash was `head_hash` at `created_at`. Check the signature over the UTF-8 "
        "bytes of `statement` with the raw 32-byte public key `public_key` (base64), e.g. with "
        "OpenSSL (`openssl pkeyutl -verify -pubin -inkey key.pem -rawin -in statement.txt "
        "-sigfile sig.bin`) or any Ed25519 library. Every event with seq up to `entries` is "
        "covered by it.",
        "6. The compliance officer keeps these signed checkpoints in a file outside the "
        "database. `cdp audit verify --checkpoints FILE` recomputes the whole ledger and checks "
        "that it still ends in each checkpointed hash, so history rewritten after a checkpoint "
        "(even with every hash recomputed) is detected. Ask the operator to run it in your "
        "presence against the officer's file, and compare the public key with the one the "
        "officer holds.",
    ]


async def customer_bundle(
    p: Platform, ident: Identifier, requested_by: str
) -> tuple[Customer, dict[str, Any]]:
    """The customer `ident` names and their evidence bundle, read in a read transaction (it
    verifies the whole ledger: on SQLite a write transaction held every writer, opt-outs too,
    for as long); NotFound when nothing is recorded about them. The API and the console."""
    async with p.db.read(snapshot=True) as conn:
        customer = await resolve_customer(conn, ident)
        body = await evidence_bundle(conn, p, ident, customer, requested_by)
    if customer.root is None and not body["events"]:
        raise NotFound("nothing is recorded about this customer")
    return customer, body


async def evidence_bundle(
    conn: AsyncConnection, p: Platform, ident: Identifier, customer: Customer, requested_by: str
) -> dict[str, Any]:
    rows = await all_events(conn, p, EventFilter(customer=customer))
    items = await render(conn, p, rows)
    for item, row in zip(items, rows, strict=True):
        canonical = canonical_payload(row)
        item["canonical"] = canonical.decode()
        item["hash_valid"] = hashlib.sha256(row.prev_hash + canonical).digest() == row.hash
    checkpoints = await list_checkpoints(conn)
    signer = signer_for(p.settings)
    # the chain and checkpoints: what proves this customer's record (not the derived state)
    report = await verify_ledger(conn, checkpoints, policy=None, trusted_keys={signer.public_key})
    trusted = [r.checkpoint for r in report.checkpoints if r.status == OK]
    latest = max(trusted, key=lambda cp: (cp.entries, cp.created_at), default=None)
    last_seq = max((r.seq for r in rows), default=0)
    return {
        "format": FORMAT,
        "generated_at": utcnow(),
        "generated_by": requested_by,
        "customer": {
            "identifier": {"kind": ident.kind, "value": _named(ident)},
            "profile_id": str(customer.root) if customer.root else None,
            "profile_ids": [str(pid) for pid in customer.profile_ids],
            "status": customer.status or "unknown",
        },
        "policy": {"current_version": p.policy.version},
        "events": items,
        "chain": {
            "algorithm": "SHA-256 over prev_hash || canonical JSON; genesis prev_hash is 32 zero "
            "bytes",
            "hashed_fields": list(HASHED_FIELDS),
            "trailing_fields": list(TRAILING_FIELDS),  # hashed after the others where set
            **report.to_json(),
        },
        "checkpoint": None
        if latest is None
        else {**latest.to_json(), "covers_all_events": latest.entries >= last_seq},
        "signing_key": {
            "algorithm": "Ed25519",
            "key_id": signer.key_id,
            "public_key": base64.b64encode(signer.public_key).decode(),
        },
        "how_to_verify": how_to_verify(HASHED_FIELDS),
    }


def _named(ident: Identifier) -> str | None:
    """The identifier as the requester gave it (normalised); profile ids as text."""
    if ident.profile_id is not None:
        return str(ident.profile_id)
    return ident.value
