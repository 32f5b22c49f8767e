"""Opt-outs from every entry point: API, one-click unsubscribe, inbound SMS keywords.

An opt-out suppresses the address (also one never seen before) and appends a withdrawal to the
ledger, in one transaction that commits before the answer returns. One for every channel ('*')
that names an address also reaches every other address and channel of the customer holding it.
One that concerns the person (every channel; or one channel, naming the customer or an address
of another kind than the channel's) also reaches the addresses they gain later
(`carry_person_opt_outs`), and is recorded even where they have no address of the channel yet.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import and_, bindparam, not_, or_, select
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
from consent.audit.addresses import OPT_OUT_METHODS
from consent.dsr.customer import recorded_before_erasure
from consent.ledger import Entry
from consent.outbox.enqueue import opt_out_rows, write_rows
from consent.policy import Policy
from consent.subjects import expand_channel, profile_subject, via_profile
from consent.suppressions import (
    Suppression,
    latest_suppression,
    suppress_many,
    suppressed_at,
)
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
    undated: bool = False  # no time given: it occurred when the ledger records it


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
    transaction, not a hundred. Their transaction is urgent: on SQLite it is next to write,
    ahead of batches of records (cdp.db.write_lock)."""
    check_purpose_channel(p, purpose, channel)
    if (problem := time_problem(occurred_at)) is not None:
        raise InvalidInput.field("occurred_at", problem)
    # Never later than now: a sender's clock a little ahead (time_problem allows it) would date
    # the suppression after the ledger's ordering time (consent.ledger.ordering_time), and a
    # grant made after the opt-out would stay suppressed though the state says granted. One
    # without a time is dated by the ledger when it records it (consent.ledger.Entry.undated).
    now = utcnow()
    at = now if occurred_at is None else min(occurred_at, now)
    request = OptOutRequest(
        ident, purpose, channel, source, actor, method, reason, at, occurred_at is None
    )
    group = p.db.group_commit(
        "opt-outs", lambda conn, reqs: apply_opt_outs(conn, p, reqs), urgent=True
    )
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
    # a request that names the profile (not one of its addresses), or every channel ('*'),
    # opts out all its addresses
    whole = {
        pid
        for r, pid in zip(requests, found, strict=True)
        if isinstance(pid, uuid.UUID) and _whole_profile(p, r)
    }
    addresses = await profiles_addresses(conn, whole)
    results: list[OptOutResult | Exception] = []
    held: list[tuple[Suppression, Entry]] = []
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
        named: list[tuple[str, bytes]] = []
        if r.ident.kind in ("email", "phone"):
            assert r.ident.bidx is not None
            named.append((r.ident.kind, r.ident.bidx))
        # the address named is recorded and suppressed for the channel even where the channel
        # does not send to it (push naming an email, sms naming an email; its entry changes no
        # address state), also where no one holds it yet: the contactability rule stops a
        # profile's push where any address it holds is suppressed, and carry_person_opt_outs
        # gives an sms opt-out to the phones of whoever holds the email, now or later
        subjects = list(named)
        if pid is not None and _whole_profile(p, r):
            for subject in [*addresses.get(pid, []), ("profile", profile_subject(pid))]:
                if subject not in subjects and expand_channel(p.policy, subject[0], r.channel):
                    subjects.append(subject)
            if not subjects:
                # one channel the customer has no address of yet: the record, on the customer,
                # that they opted out of it (carry_person_opt_outs gives it to the addresses
                # of that channel they gain later)
                subjects.append(("profile", profile_subject(pid)))
        for kind, subject in subjects:
            entry = Entry(
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
                # no evidence to encrypt: an opt-out needs no data key, so it is in force while
                # the key store is away (it was refused, 503, when it had to unwrap one)
                cipher=None,
                undated=r.undated,
                via_profile=via_profile((kind, subject), named),
            )
            entries.append(entry)
            if kind != "profile":
                held.append(
                    (
                        Suppression(
                            subject, r.purpose, r.channel, r.reason, r.source, r.at, pid, kind
                        ),
                        entry,
                    )
                )
        # in force: recorded, so no address of the channel that they hold or gain is
        # contactable until a grant that occurred after it (every accepted request records one)
        results.append(OptOutResult(profile_ids=[pid] if pid else [], suppressed=bool(subjects)))
    await _write(conn, p, held, entries, unseen)
    return results


async def _write(
    conn: AsyncConnection,
    p: Platform,
    held: list[tuple[Suppression, Entry]],
    entries: list[Entry],
    unseen: dict[bytes, str] | None = None,
) -> None:
    """What an opt-out writes, in the caller's transaction: the withdrawals in the ledger, the
    suppressions (each dated as its address's withdrawal: the ledger dates an undated one when
    it records it), and their events in the webhook outbox."""
    withdrawn: list[dict] = []
    await ledger.append(conn, p.policy, entries, outbox=withdrawn)
    outbox: list[dict] = []  # the three kinds of event, in this order, in one insert
    await suppress_many(conn, [replace(s, at=e.occurred_at) for s, e in held], outbox=outbox)
    outbox += withdrawn
    outbox += await opt_out_rows(entries, unseen, p.keys)
    await write_rows(conn, outbox)


_pc, _led, _ic, _sc = profiles.c, consent_ledger.c, identities.c, suppressions.c
# Statements built once: building one per call cost more than the driver's whole round trip.
_MERGED_INTO = select(_pc.id, _pc.merged_into).where(
    _pc.merged_into.in_(bindparam("ids", expanding=True))
)
# The withdrawals that may concern the person (`concerns_person` keeps those that do): of every
# channel, however recorded; of one channel, the opt-outs (an opt-out of one channel that named
# the customer or an address of another kind; one naming an address of the channel is that
# address's only), and a withdrawal of an address no one held, which is one (consent.service).
MAY_CONCERN_PERSON = and_(
    _led.status == "withdrawn",
    or_(
        _led.channel == "*",
        and_(_led.method.in_(OPT_OUT_METHODS), _led.evidence.is_(None)),
        _led.profile_id.is_(None),
    ),
)
_WITHDRAWN_BY = select(
    _led.profile_id,
    _led.subject_kind,
    _led.channel,
    _led.via_profile,
    _led.purpose,
    _led.occurred_at,
    _led.source,
    _led.actor,
).where(_led.profile_id.in_(bindparam("ids", expanding=True)), MAY_CONCERN_PERSON)
# The suppressions of these profiles' emails and phones (`concerns_person` keeps the opt-outs
# of every channel, and of a channel of another kind of address: an erasure suppresses every
# channel too, but is not the customer's "stop").
_HELD_OPTED_OUT = (
    select(_ic.profile_id, _ic.bidx, _ic.kind, _sc.channel)
    .select_from(identities.join(suppressions, _sc.bidx == _ic.bidx))
    .where(
        _ic.profile_id.in_(bindparam("ids", expanding=True)),
        _ic.kind.in_(("email", "phone")),
        _sc.reason != "erasure",
    )
)
# The withdrawals on these addresses that may concern the person, whoever they name ("stop all
# marketing" from an address we had never seen names no profile); one recorded up to the
# address's erasure was its erased holder's, not the customer's who holds it since.
_WITHDRAWN_ON = select(
    _led.address_bidx,
    _led.subject_kind,
    _led.channel,
    _led.purpose,
    _led.occurred_at,
    _led.source,
    _led.actor,
).where(
    _led.address_bidx.in_(bindparam("bidxs", expanding=True)),
    MAY_CONCERN_PERSON,
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

    So does an opt-out of one channel that concerns the person: one that named the customer
    (profile id, external id) or an address of another kind than the channel's (sms, naming
    the email), recorded even where they had no address of the channel yet. It reaches the
    addresses of that channel's kind they gain later; one naming an address of the channel
    (a STOP reply, a one-click unsubscribe) stays that address's. Before, an sms opt-out of a
    customer without a phone recorded nothing, and the phone a stale import brought later was
    contactable with its older grant.

    The withdrawals carried are those naming the profile (or one merged into it), and the
    opt-outs of any email or phone it holds that concern the person, whoever they name: "stop
    all marketing" from an address we had never seen names no profile, yet reaches the phone
    its owner is imported with, or that joins them later. The latter are found by the
    addresses' suppressions, and read from the ledger only for the few addresses that have one.

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
    policy = p.policy
    survivor = {pid: pid for pid in profile_ids}
    ids = sorted(profile_ids)
    for start in range(0, len(ids), 500):  # a merge re-points what was merged into the absorbed
        rows = await conn.execute(_MERGED_INTO, {"ids": ids[start : start + 500]})
        survivor.update({pid: into for pid, into in rows})
    # (customer, purpose, channel or "*") -> the latest such withdrawal's (time, source, actor)
    latest: dict[tuple[uuid.UUID, str, str], tuple[datetime, str, str]] = {}

    def keep(
        pid: uuid.UUID, purpose: str, channel: str, at: datetime, source: str, actor: str
    ) -> None:
        key = (survivor.get(pid, pid), purpose, channel)
        if key not in latest or at > latest[key][0]:
            latest[key] = (at, source, actor)

    owners = sorted(survivor)
    for start in range(0, len(owners), 500):
        for pid, kind, channel, via, *row in await conn.execute(
            _WITHDRAWN_BY, {"ids": owners[start : start + 500]}
        ):
            if concerns_person(policy, kind, channel, via):
                keep(pid, row[0], channel, *row[1:])
    # the opt-outs of the addresses these customers hold that concern the person, whoever
    # they name
    look = set(profile_ids if gained is None else gained)
    if new:  # most new customers' addresses have none: ask for the profiles of those that do
        of = {b: (pid, kind) for pid, addresses in new.items() for kind, b in addresses}
        found = await rows_where_in(
            conn, suppressions, ("bidx", "channel", "reason"), "bidx", sorted(of)
        )
        look |= {
            of[b][0]
            for b, channel, reason in found
            if reason != "erasure" and concerns_person(policy, of[b][1], channel)
        }
    holder: dict[bytes, uuid.UUID] = {}
    ordered = sorted(look)
    for start in range(0, len(ordered), 500):
        rows = await conn.execute(_HELD_OPTED_OUT, {"ids": ordered[start : start + 500]})
        holder.update(
            {bidx: pid for pid, bidx, kind, ch in rows if concerns_person(policy, kind, ch)}
        )
    opted = sorted(holder)
    for start in range(0, len(opted), 500):
        for bidx, kind, channel, *row in await conn.execute(
            _WITHDRAWN_ON, {"bidxs": opted[start : start + 500]}
        ):
            if concerns_person(policy, kind, channel):
                keep(holder[bidx], row[0], channel, *row[1:])
    if not latest:
        return
    addresses = await profiles_addresses(conn, {pid for pid, _, _ in latest})
    held = await suppressed_at(conn, sorted({b for a in addresses.values() for _, b in a}))
    carried: list[tuple[Suppression, Entry]] = []
    entries: list[Entry] = []
    for (pid, purpose, channel), (at, source, actor) in sorted(latest.items()):
        for kind, bidx in addresses.get(pid, []):
            if not expand_channel(policy, kind, channel):
                continue  # one channel, of another kind of address
            if (t := latest_suppression(held, bidx, purpose, channel)) is not None and t >= at:
                continue  # opted out already (this opt-out, or a later one)
            entry = Entry(
                profile_id=pid,
                subject_kind=kind,
                subject=bidx,
                purpose=purpose,
                channel=channel,
                status="withdrawn",
                occurred_at=at,
                source=source,
                actor=actor,
                method="opt_out",
                via_profile=True,  # carried from another address of the customer
            )
            entries.append(entry)
            carried.append(
                (Suppression(bidx, purpose, channel, "opt_out", source, at, pid, kind), entry)
            )
    await _write(conn, p, carried, entries)


def concerns_person(policy: Policy, kind: str, channel: str, via: bool | None = False) -> bool:
    """Whether a withdrawal (or its suppression) recorded on `kind` (email, phone, profile)
    for `channel` reaches the customer's addresses learned later: every channel ('*') does;
    one channel sent to an email or phone does where it was recorded on the customer, on an
    address of another kind, or on an address it reached through the customer (`via`, which
    consent_ledger.via_profile holds). Push and messenger go to the profile, whose own state
    and addresses' suppressions already stop them: nothing to carry."""
    if channel == "*":
        return True
    target = policy.address_kind(channel)
    return target in ("email", "phone") and (kind != target or bool(via))


def _whole_profile(p: Platform, r: OptOutRequest) -> bool:
    """The opt-out concerns the person, not one address: it names the profile (or an address
    of another kind than the channel's), or it stops every channel ('*': "stop all marketing"
    said from one address concerns the person, GDPR art. 21(3)). It reaches every address of
    the customer on the channel, and those they gain later (carry_person_opt_outs)."""
    return r.channel == "*" or not _names_address(p, r)


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
