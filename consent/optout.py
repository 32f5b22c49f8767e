"""Opt-outs from every entry point: API, one-click unsubscribe, inbound SMS keywords.

An opt-out suppresses the address (also one never seen before) and appends a withdrawal to the
ledger, in one transaction that commits before the answer returns.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from cdp.db.engine import lock_keys
from cdp.errors import InvalidInput
from cdp.ids import utcnow
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier, find_profile, profile_addresses
from consent import ledger, tokens
from consent.ledger import Entry
from consent.outbox.enqueue import enqueue_opt_outs
from consent.service import cipher_for
from consent.subjects import expand_channel, profile_subject
from consent.suppressions import suppress

STOP_WORDS = {"STOP", "UNSUBSCRIBE", "СТОП", "ОТПИСКА", "STOPALL", "CANCEL", "END", "QUIT"}
_WORD = re.compile(r"[^\w]+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class OptOutResult:
    profile_ids: list[uuid.UUID]
    suppressed: bool


def check_purpose_channel(p: Platform, purpose: str, channel: str) -> None:
    if purpose not in p.policy.purposes:
        raise InvalidInput.field("purpose", "unknown purpose")
    if channel != "*" and channel not in p.policy.channels:
        raise InvalidInput.field("channel", "unknown channel")


async def opt_out(
    p: Platform,
    ident: Identifier,
    *,
    purpose: str = "marketing",
    channel: str = "*",
    source: str,
    actor: str,
    method: str = "opt_out",
    reason: str = "opt_out",
    occurred_at: datetime | None = None,
) -> OptOutResult:
    check_purpose_channel(p, purpose, channel)
    at = occurred_at or utcnow()
    async with p.db.write() as conn:
        await lock_keys(conn, [ident.bidx or str(ident.profile_id)])
        pid = await find_profile(conn, ident)
        subjects: list[tuple[str, bytes]] = []
        named_fits = ident.kind in ("email", "phone") and (
            channel == "*" or p.policy.address_kind(channel) == ident.kind
        )
        if named_fits:
            assert ident.bidx is not None
            subjects.append((ident.kind, ident.bidx))
        elif pid is not None:  # the request names the profile: all its addresses
            subjects.extend(await profile_addresses(conn, pid))
            subjects.append(("profile", profile_subject(pid)))
        cipher = await cipher_for(conn, p, pid)
        entries = []
        for kind, subject in subjects:
            if not expand_channel(p.policy, kind, channel):
                continue
            if kind != "profile":
                await suppress(
                    conn,
                    subject,
                    purpose,
                    channel,
                    reason=reason,
                    source=source,
                    at=at,
                    profile_id=pid,
                    address_kind=kind,
                )
            entries.append(
                Entry(
                    profile_id=pid,
                    subject_kind=kind,
                    subject=subject,
                    purpose=purpose,
                    channel=channel,
                    status="withdrawn",
                    occurred_at=at,
                    source=source,
                    actor=actor,
                    method=method,
                    cipher=cipher,
                )
            )
        await ledger.append(conn, p.policy, entries)
        await enqueue_opt_outs(conn, entries)  # the webhook outbox, in this transaction
    return OptOutResult(profile_ids=[pid] if pid else [], suppressed=bool(entries))


def claims_from_token(p: Platform, token: str) -> tokens.TokenClaims:
    return tokens.verify(p.keys.token_key, token)


async def unsubscribe(p: Platform, token: str, *, source: str = "one_click") -> OptOutResult:
    """Withdraw the token's purpose for its address and channel (RFC 8058 one-click)."""
    claims = claims_from_token(p, token)
    ident = (
        Identifier("profile_id", profile_id=claims.profile_id)
        if claims.subject_kind == "profile"
        else Identifier(claims.subject_kind, bidx=claims.subject)
    )
    return await opt_out(
        p,
        ident,
        purpose=claims.purpose,
        channel=claims.channel,
        source=source,
        actor="customer",
        method="one_click",
        reason="unsubscribe",
    )


def is_stop_message(text: str) -> bool:
    words = [w for w in _WORD.split(text.strip().upper()) if w]
    return len(words) >= 1 and words[0] in STOP_WORDS and len(words) <= 3
