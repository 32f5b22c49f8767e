"""Opt-outs from every entry point: API, one-click unsubscribe, inbound SMS keywords.

An opt-out suppresses the address (also one never seen before) and appends a withdrawal to the
ledger, in one transaction that commits before the answer returns. One for every channel ('*')
that names an address also reaches every other address and channel of the customer holding it.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, not_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.bulk import rows_where_in
from cdp.db.engine import lock_keys
from cdp.db.tables import identities, profiles
from cdp.errors import InvalidInput, NotFound
from cdp.ids import time_problem, utcnow
from cdp.platform import Platform
from cdp.profiles.identifiers import Identifier, find_profile, find_profiles, profiles_addresses
from cdp.profiles.locks import lock_found
from consent import ledger, tokens
from consent.dsr.customer import recorded_before_erasure
from consent.ledger import Entry
from consent.outbox.enqueue import opt_out_rows, write_rows
from consent.policy import Policy
from consent.subjects import expand_channel, profile_subject, via_profile
from consent.suppressions import Suppression, suppress_many, suppressed_at
from consent.tables import consent_ledger, suppressions

# An SMS reply that opts the number out: a stop phrase, any case, alone or followed by at most
# MAX_TRAILING_WORDS words ("STOP please", "Opt-out now"). FCC 24-24 (47 CFR 64.1200(a)(10))
# names stop, quit, end, revoke, opt out, cancel and unsubscribe; STOP ALL is the carriers'
# keyword (STOP followed by one word); СТОП, ОТПИСКА and ОТПИСАТЬСЯ are the Russian replies,
# and so are ОТПИШИТЕ and ОТПИСАТЬ ("Отпишите меня": unsubscribe me, how people write it).
# Punctuation separates words, so "opt-out" and "OPT OUT!" are the phrase OPT OUT; the text is
# read in NFKC, so full-width letters (ＳＴＯＰ) are the same words.
STOP_PHRASES = frozenset(
    tuple(phrase.split())
    for phrase in (
        "STOP", "STOPALL", "QUIT", "END", "REVOKE", "OPT OUT", "OPTOUT", "CANCEL",
        "UNSUBSCRIBE", "СТОП", "ОТПИСКА", "ОТПИСАТЬСЯ", "ОТПИШИТЕ", "ОТПИСАТЬ",
    )
)  # fmt: skip
MAX_TRAILING_WORDS = 2
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


@dataclass(frozen=True, slots=True)
class OptOutRequest:
    ident: Identifier
    purpose: str
    channel: str
    source: str
    actor: str
    method: str
    reason: str
    at: datetime


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
    """Suppress and withdraw; returns once the change has committed.

    Opt-outs arriving together share one write transaction (cdp.db.group_commit): under load
    the answer still waits for the commit of its own change, but a hundred opt-outs cost one
    transaction, not a hundred."""
    check_purpose_channel(p, purpose, channel)
    if (problem := time_problem(occurred_at)) is not None:
        raise InvalidInput.field("occurred_at", problem)
    request = OptOutRequest(
        ident, purpose, channel, source, actor, method, reason, occurred_at or utcnow()
    )
    group = p.db.group_commit("opt-outs", lambda conn, reqs: apply_opt_outs(conn, p, reqs))
    return await group.submit(request)


async def apply_opt_outs(
    conn: AsyncConnection, p: Platform, requests: list[OptOutRequest]
) -> list[OptOutResult | Exception]:
    """Apply opt-outs inside the caller's write transaction, in a fixed number of statements."""
    await lock_keys(conn, [r.ident.bidx or str(r.ident.profile_id) for r in requests])
    # the profiles named, locked: a merge or an erasure of one may have committed meanwhile
    found = await lock_found(conn, lambda: find_profiles(conn, [r.ident for r in requests]))
    # an email or phone no one holds is suppressed as it is; an external id is not an address
    found = [
        NotFound("no customer has this external id")
        if pid is None and r.ident.kind not in ("email", "phone")
        else pid
        for r, pid in zip(requests, found, strict=True)
    ]
    pids = {pid for pid in found if isinstance(pid, uuid.UUID)}
    # a request that names the profile (not one of its addresses), or every channel ('*'),
    # opts out all its addresses
    whole = {
        pid
        for r, pid in zip(requests, found, strict=True)
        if isinstance(pid, uuid.UUID) and _whole_profile(p, r)
    }
    addresses = await profiles_addresses(conn, whole)
    ciphers = await p.keys.ciphers(conn, sorted(pids), strict=True)
    results: list[OptOutResult | Exception] = []
    held: list[Suppression] = []
    entries: list[Entry] = []
    # addresses no customer holds: their opt_out events carry them, sealed, to the
    # subscriptions allowed to see addresses (no identity to decrypt them from at delivery)
    unseen = {
        r.ident.bidx: r.ident.value
        for r, pid in zip(requests, found, strict=True)
        if pid is None and r.ident.bidx is not None and r.ident.value
    }
    for r, pid in zip(requests, found, strict=True):
        if isinstance(pid, Exception):
            results.append(pid)
            continue
        subjects: list[tuple[str, bytes]] = []
        if _names_address(p, r) or _reaches_profile_by_address(p, r):
            assert r.ident.bidx is not None
            subjects.append((r.ident.kind, r.ident.bidx))
        named = list(subjects)
        if pid is not None and _whole_profile(p, r):
            for subject in [*addresses.get(pid, []), ("profile", profile_subject(pid))]:
                if subject not in subjects:
                    subjects.append(subject)
        cipher = ciphers.get(pid, p.keys.system) if pid is not None else p.keys.system
        mine = 0
        for kind, subject in subjects:
            if not expand_channel(p.policy, kind, r.channel) and not (
                _reaches_profile_by_address(p, r)
                and (kind, subject) == (r.ident.kind, r.ident.bidx)
            ):
                continue
            if kind != "profile":
                held.append(
                    Suppression(subject, r.purpose, r.channel, r.reason, r.source, r.at, pid, kind)
                )
            entries.append(
                Entry(
                    profile_id=pid,
                    subject_kind=kind,
                    subject=subject,
                    purpose=r.purpose,
                    channel=r.channel,
                    status="withdrawn",
                    occurred_at=r.at,
                    source=r.source,
                    actor=r.actor,
                    method=r.method,
                    cipher=cipher,
                    via_profile=via_profile((kind, subject), named),
                )
            )
            mine += 1
        results.append(OptOutResult(profile_ids=[pid] if pid else [], suppressed=bool(mine)))
    await _write(conn, p, held, entries, unseen)
    return results


async def _write(
    conn: AsyncConnection,
    p: Platform,
    held: list[Suppression],
    entries: list[Entry],
    unseen: dict[bytes, str] | None = None,
) -> None:
    """What an opt-out writes, in the caller's transaction: the suppressions, the withdrawals
    in the ledger, and their events in the webhook outbox."""
    outbox: list[dict] = []  # the three kinds of event, in this order, in one insert
    await suppress_many(conn, held, outbox=outbox)
    await ledger.append(conn, p.policy, entries, outbox=outbox)
    outbox += await opt_out_rows(entries, unseen, p.keys)
    await write_rows(conn, outbox)


_pc, _led, _ic, _sc = profiles.c, consent_ledger.c, identities.c, suppressions.c
# Statements built once: building one per call cost more than the driver's whole round trip.
_MERGED_INTO = select(_pc.id, _pc.merged_into).where(
    _pc.merged_into.in_(bindparam("ids", expanding=True))
)
_WITHDRAWN_ALL = select(
    _led.profile_id, _led.purpose, _led.occurred_at, _led.source, _led.actor
).where(
    _led.profile_id.in_(bindparam("ids", expanding=True)),
    _led.channel == "*",
    _led.status == "withdrawn",
)
# The emails and phones of these profiles that someone opted out of every channel (an erasure
# suppresses every channel too, but is not the customer's "stop").
_HELD_OPTED_OUT = (
    select(_ic.profile_id, _ic.bidx)
    .select_from(identities.join(suppressions, _sc.bidx == _ic.bidx))
    .where(
        _ic.profile_id.in_(bindparam("ids", expanding=True)),
        _ic.kind.in_(("email", "phone")),
        _sc.channel == "*",
        _sc.reason != "erasure",
    )
)
# The withdrawals of every channel on these addresses, whoever they name ("stop all marketing"
# from an address we had never seen names no profile); one recorded up to the address's erasure
# was its erased holder's, not the customer's who holds it since.
_WITHDRAWN_ALL_ON = select(
    _led.address_bidx, _led.purpose, _led.occurred_at, _led.source, _led.actor
).where(
    _led.address_bidx.in_(bindparam("bidxs", expanding=True)),
    _led.channel == "*",
    _led.status == "withdrawn",
    not_(recorded_before_erasure()),
)


async def carry_person_opt_outs(
    conn: AsyncConnection,
    p: Platform,
    profile_ids: set[uuid.UUID],
    *,
    gained: set[uuid.UUID] | None = None,
    new: dict[uuid.UUID, list[tuple[str, bytes]]] | None = None,
) -> None:
    """An opt-out for every channel ('*') concerns the person, so it also reaches the emails
    and phones learned to be theirs later: a record that carries one, a profile merged in.
    So does any withdrawal of every channel: "unsubscribe from everything" in the preference
    centre (recorded with its evidence, not as an opt-out), a GPC signal, one sent to
    POST /v1/consents. Before, a phone added by a stale import or a merge, with a grant older
    than the customer's "stop all marketing" or "unsubscribe from everything", made them
    contactable by SMS again. Each such address gets the opt-out as the opt-out itself writes
    it (a suppression and a ledger withdrawal of the address, dated when the customer asked),
    so only a grant that occurred after it makes the address contactable.

    The withdrawals carried are those naming the profile (or one merged into it), and the
    opt-outs of every channel of any email or phone it holds, whoever they name: "stop all
    marketing" from an address we had never seen names no profile, yet reaches the phone its
    owner is imported with, or that joins them later. The latter are found by the addresses'
    suppressions, and read from the ledger only for the few addresses that have one.

    `profile_ids`: surviving profiles that existed and may have gained addresses; their
    opt-outs include those of profiles merged into them. `gained`: those of them (by default
    all) that gained an email or phone, or a merged profile: the opt-outs of their addresses
    are looked up too. `new`: profiles this transaction created, with their emails and phones
    (the caller passes those with two or more: with one there is nowhere to carry to); nothing
    names them yet, so only their addresses are looked up, by blind index at the driver's speed
    (the ingest hot path: one statement per 500 addresses).
    """
    new = new or {}
    if not profile_ids and not new:
        return
    survivor = {pid: pid for pid in profile_ids}
    ids = sorted(profile_ids)
    for start in range(0, len(ids), 500):  # a merge re-points what was merged into the absorbed
        rows = await conn.execute(_MERGED_INTO, {"ids": ids[start : start + 500]})
        survivor.update({pid: into for pid, into in rows})
    latest: dict[tuple[uuid.UUID, str], tuple[datetime, str, str]] = {}

    def keep(pid: uuid.UUID, purpose: str, at: datetime, source: str, actor: str) -> None:
        key = (survivor.get(pid, pid), purpose)
        if key not in latest or at > latest[key][0]:
            latest[key] = (at, source, actor)

    owners = sorted(survivor)
    for start in range(0, len(owners), 500):
        for row in await conn.execute(_WITHDRAWN_ALL, {"ids": owners[start : start + 500]}):
            keep(*row)
    # the opt-outs of every channel of the addresses these customers hold, whoever they name
    look = set(profile_ids if gained is None else gained)
    if new:  # most new customers' addresses have none: ask for the profiles of those that do
        of = {b: pid for pid, addresses in new.items() for _, b in addresses}
        found = await rows_where_in(
            conn, suppressions, ("bidx", "channel", "reason"), "bidx", sorted(of)
        )
        look |= {of[b] for b, channel, reason in found if channel == "*" and reason != "erasure"}
    holder: dict[bytes, uuid.UUID] = {}
    ordered = sorted(look)
    for start in range(0, len(ordered), 500):
        rows = await conn.execute(_HELD_OPTED_OUT, {"ids": ordered[start : start + 500]})
        holder.update({bidx: pid for pid, bidx in rows})
    opted = sorted(holder)
    for start in range(0, len(opted), 500):
        for bidx, *row in await conn.execute(
            _WITHDRAWN_ALL_ON, {"bidxs": opted[start : start + 500]}
        ):
            keep(holder[bidx], *row)
    if not latest:
        return
    addresses = await profiles_addresses(conn, {pid for pid, _ in latest})
    held = await suppressed_at(conn, sorted({b for a in addresses.values() for _, b in a}))
    carried: list[Suppression] = []
    entries: list[Entry] = []
    for (pid, purpose), (at, source, actor) in sorted(latest.items()):
        for kind, bidx in addresses.get(pid, []):
            if (t := held.get((bidx, purpose, "*"))) is not None and t >= at:
                continue  # opted out already (this opt-out, or a later one)
            carried.append(Suppression(bidx, purpose, "*", "opt_out", source, at, pid, kind))
            entries.append(
                Entry(
                    profile_id=pid,
                    subject_kind=kind,
                    subject=bidx,
                    purpose=purpose,
                    channel="*",
                    status="withdrawn",
                    occurred_at=at,
                    source=source,
                    actor=actor,
                    method="opt_out",
                    via_profile=True,  # carried from another address of the customer
                )
            )
    await _write(conn, p, carried, entries)


def _whole_profile(p: Platform, r: OptOutRequest) -> bool:
    """The opt-out reaches every address of the customer: it names the profile (or an address
    of another kind than the channel's), or it stops every channel ('*': "stop all marketing"
    said from one address concerns the person, GDPR art. 21(3))."""
    return r.channel == "*" or not _names_address(p, r)


def _reaches_profile_by_address(p: Platform, r: OptOutRequest) -> bool:
    """The request names an email or phone and stops a channel that reaches the profile (push,
    messenger). The address is suppressed for that channel too (with its ledger entry, which
    changes no address state): the contactability rule stops a profile's push where any
    address it holds is suppressed, so the opt-out also holds for an address never seen, once
    its owner is imported with an older grant. Before, nothing was stored for it."""
    return r.ident.kind in ("email", "phone") and p.policy.address_kind(r.channel) == "profile"


def _names_address(p: Platform, r: OptOutRequest) -> bool:
    """The request names an email or phone that the opted-out channel uses."""
    return r.ident.kind in ("email", "phone") and (
        r.channel == "*" or p.policy.address_kind(r.channel) == r.ident.kind
    )


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


def stop_purposes(policy: Policy, jurisdiction: str | None) -> list[str]:
    """What an SMS stop reply withdraws: every advertising purpose by sms, and the service
    texts where the sender's jurisdiction makes them need consent (US federal, TCPA: a STOP
    revokes the consent automated texts rest on, FCC 24-24). For a number we do not know (no
    jurisdiction), wherever any jurisdiction does: fail closed."""
    known = [jurisdiction] if jurisdiction in policy.jurisdictions else None
    service = policy.opt_in_anywhere("service", "sms", known)
    return [
        name
        for name, purpose in policy.purposes.items()
        if purpose.advertising or (name == "service" and service)
    ]


async def sms_stop(p: Platform, ident: Identifier, actor: str) -> OptOutResult:
    """An inbound stop reply: opt the number out of `stop_purposes` by sms."""
    async with p.db.read() as conn:
        pid = await find_profile(conn, ident)
        jurisdiction = (
            None
            if pid is None
            else (
                await conn.execute(select(profiles.c.jurisdiction).where(profiles.c.id == pid))
            ).scalar()
        )
    results = []
    for purpose in stop_purposes(p.policy, jurisdiction):
        result = await opt_out(
            p,
            ident,
            purpose=purpose,
            channel="sms",
            source="sms_keyword",
            actor=actor,
            method="sms_keyword",
            reason="sms_stop",
        )
        results.append(result)
    return OptOutResult(
        profile_ids=sorted({pid for r in results for pid in r.profile_ids}),
        suppressed=any(r.suppressed for r in results),
    )


def is_stop_message(text: str) -> bool:
    """Whether an inbound SMS asks to stop (see STOP_PHRASES)."""
    words = tuple(w for w in _WORD.split(unicodedata.normalize("NFKC", text).upper()) if w)
    return any(words[:n] in STOP_PHRASES and len(words) - n <= MAX_TRAILING_WORDS for n in (1, 2))
