"""Consent use cases: capture at ingest, POST /v1/consents, and the consent view of a profile."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.fields import FieldCipher
from cdp.db.engine import lock_keys
from cdp.db.tables import identities, profile_stats, profiles
from cdp.errors import FieldError, InvalidInput
from cdp.ids import utcnow
from cdp.platform import Platform
from cdp.profiles.identifiers import (
    Identifier,
    find_profile,
    profile_addresses,
    profiles_addresses,
)
from cdp.profiles.locks import lock_profile
from cdp.profiles.records import RECORD_METHOD, ConsentClaim, consent_problems
from consent import ledger
from consent.ledger import Appended, Entry
from consent.outbox.enqueue import seal_unseen, write_rows
from consent.policy import Policy
from consent.rule import Facts, decide, suppression_outranks
from consent.schemas import ConsentIn, EvidenceIn
from consent.subjects import profile_subject, via_profile
from consent.suppressions import (
    Suppression,
    latest_for_profile,
    latest_suppression,
    suppress_many,
    suppressed_at,
)
from consent.tables import consent_state

# The suppression reason of a withdrawal (POST /v1/consents) naming an address no one holds
WITHDRAWAL = "withdrawal"


def recorded_evidence(
    policy: Policy, purpose: str, status: str, evidence: EvidenceIn | None
) -> dict[str, Any] | None:
    """The evidence a ledger entry keeps: as given, and for a grant of a purpose that names its
    advertiser, that advertiser (in the policy's spelling): the proof says whose advertising
    the customer agreed to (38-FZ art. 18), whether or not the sender said it."""
    p = policy.purposes.get(purpose)
    advertiser = p.advertiser if p is not None and status == "granted" else None
    return evidence_dict(evidence, advertiser=advertiser)


def evidence_dict(evidence: EvidenceIn | None, **extra: Any) -> dict[str, Any] | None:
    data: dict[str, Any] = {}
    if evidence is not None:
        data = {
            k: getattr(evidence, k)
            for k in evidence.__struct_fields__
            if getattr(evidence, k) is not None
        }
    data.update({k: v for k, v in extra.items() if v is not None})
    return data or None


@dataclass(slots=True)
class Target:
    """Where a consent lands: (subject kind, subject) pairs of one profile (or none)."""

    profile_id: uuid.UUID | None
    subjects: list[tuple[str, bytes]]


def targets_for(
    policy_channels: list[str],
    kind_of: dict[str, str],
    profile_id: uuid.UUID | None,
    named: list[tuple[str, bytes]],
    all_addresses: list[tuple[str, bytes]],
    channel: str,
    *,
    grant: bool,
    names_address: bool,
) -> list[tuple[str, bytes]]:
    """The addresses a consent on `channel` concerns: the one rule for where a consent lands.

    `named`: the addresses the event names (a record: its own); `names_address`: whether it
    names any (false where it names the profile only, by id or external id). For each address
    kind the channel uses, the named address of that kind. Where none is named: a withdrawal,
    or an event naming the profile only, concerns every address the profile has of that kind
    (`all_addresses`); a grant naming an address reaches no other (consent belongs to the
    address: an email cannot agree to texts on the customer's phones). Profile-keyed channels
    (push, messenger) concern the profile itself.
    """
    kinds = {kind_of[c] for c in policy_channels} if channel == "*" else {kind_of[channel]}
    out: list[tuple[str, bytes]] = []
    for kind in sorted(kinds):
        if kind == "profile":
            if profile_id is not None:
                out.append(("profile", profile_subject(profile_id)))
            continue
        mine = [s for s in named if s[0] == kind]
        if mine:
            out.extend(mine)
        elif not grant or not names_address:
            out.extend(s for s in all_addresses if s[0] == kind)
    return out


def address_kind_problem(
    policy: Policy, ident: Identifier, channel: str, status: str
) -> str | None:
    """Why a grant naming an email or phone cannot be for `channel`: the channel goes to an
    address of the other kind (an email granting sms, a phone granting email). Consent belongs
    to the address, and the address named is not the one that would be contacted. None where
    it can (the channel's own kind, or push and messenger, which reach the profile)."""
    if status != "granted" or ident.kind not in ("email", "phone"):
        return None
    kind = policy.address_kind(channel)
    if kind in ("email", "phone") and kind != ident.kind:
        return f"a grant on this channel must name a {kind} or the profile: consent is per address"
    return None


async def cipher_for(
    conn: AsyncConnection, p: Platform, profile_id: uuid.UUID | None
) -> FieldCipher:
    if profile_id is None:
        return p.keys.system
    ciphers = await p.keys.ciphers(conn, [profile_id], strict=True)
    return ciphers.get(profile_id, p.keys.system)


async def record_claims(
    conn: AsyncConnection,
    p: Platform,
    items: list[tuple[uuid.UUID, list[tuple[str, bytes]], ConsentClaim]],
    actor: str,
    held: dict[uuid.UUID, FieldCipher] | None = None,
) -> list[bool]:
    """Consents carried by ingested records (API or import), inside the ingest transaction.
    For each item, whether it was recorded.

    A grant is for the addresses the record itself named (`named`): where none of the
    channel's kind was kept (the identity cap, a refused merge) it is not recorded, rather
    than reaching the customer's other addresses. A withdrawal without an address of its kind
    reaches every address the profile has on the channel (stopping more is the safe side). A
    claim without occurred_at is undated: as a grant it cannot outrank a withdrawal or an
    opt-out (`consent.ledger.Entry.undated`)."""
    if not items:
        return []
    kind_of = {name: ch.address for name, ch in p.policy.channels.items()}
    channels = list(p.policy.channels)
    now = utcnow()
    ciphers = dict(held or {})  # the data keys the caller holds in this transaction
    wanted = {pid for pid, _, _ in items if pid not in ciphers}
    if wanted:
        ciphers.update(await p.keys.ciphers(conn, wanted, strict=True))
    # The profile's other addresses matter only to withdrawals naming none of the kind.
    need = {
        pid
        for pid, named, claim in items
        if claim.status != "granted"
        and any(
            k not in {n[0] for n in named} and k != "profile"
            for k in (
                {kind_of[c] for c in channels}
                if claim.channel == "*"
                else {kind_of.get(claim.channel)}
            )
        )
    }
    addresses = await profiles_addresses(conn, need)
    entries: list[Entry] = []
    recorded: list[bool] = []
    for pid, named, claim in items:
        targets = targets_for(
            channels,
            kind_of,
            pid,
            named,
            addresses.get(pid, []),
            claim.channel,
            grant=claim.status == "granted",
            names_address=True,  # a record's consent is for the record's own addresses
        )
        recorded.append(bool(targets))
        for kind, subject in targets:
            entries.append(
                Entry(
                    profile_id=pid,
                    subject_kind=kind,
                    subject=subject,
                    purpose=claim.purpose,
                    channel=claim.channel,
                    status=claim.status,
                    occurred_at=claim.occurred_at or now,
                    source=claim.source,
                    actor=actor,
                    method=(claim.evidence.method if claim.evidence else None) or RECORD_METHOD,
                    wording_id=claim.evidence.wording_id if claim.evidence else None,
                    evidence=recorded_evidence(
                        p.policy, claim.purpose, claim.status, claim.evidence
                    ),
                    cipher=ciphers.get(pid, p.keys.system),
                    undated=claim.occurred_at is None,
                    via_profile=via_profile((kind, subject), named),
                )
            )
    await ledger.append(conn, p.policy, entries)
    return recorded


async def record_consent(
    p: Platform, body: ConsentIn, ident: Identifier, actor: str
) -> list[Appended]:
    """POST /v1/consents. An unknown email, phone or external id creates the profile, except
    where a withdrawal names an email or phone no one holds: that is recorded on the address
    alone, and suppresses it for the purpose and channel, as an opt-out of an unseen address
    does (a withdrawal is no reason to keep the address of someone we do not know, least of
    all after their erasure). The suppression is what makes it concern the person who turns
    out to hold the address, as a known customer's withdrawal concerns them: their push and
    messenger (consent.rule), and for every channel ('*') the addresses they bring with it
    (consent.optout.carry_person_opt_outs). Without it, the phone and push of the customer
    then imported with the address and older grants were contactable."""
    problems = consent_problems(
        p.policy,
        body.purpose,
        body.channel,
        body.status,
        body.evidence,
        occurred_at=body.occurred_at,
    )
    if (wrong := address_kind_problem(p.policy, ident, body.channel, body.status)) is not None:
        problems.append(FieldError("channel", wrong))
    if body.status == "granted" and ident.unlinked is not None:
        # as a record's grant for an address not kept (cdp.profiles.records): a shared line
        # or a placeholder is nobody's own address, and would be given to whoever holds it
        problems.append(
            FieldError(ident.kind, f"{ident.unlinked}: no consent can be granted to it")
        )
    if problems:
        raise InvalidInput("the consent is not acceptable under the policy", problems)
    from cdp.profiles.service import ensure_profile

    occurred = body.occurred_at or utcnow()
    async with p.db.write() as conn:
        await lock_keys(conn, [ident.bidx] if ident.bidx else [])
        named = [(ident.kind, ident.bidx)] if ident.kind in ("email", "phone") else []
        pid: uuid.UUID | None
        if named and body.status == "withdrawn":
            pid = await find_profile(conn, ident)
        else:
            pid = await ensure_profile(
                conn, p, ident, source=body.source, actor=actor, country=body.country
            )
        if pid is not None:
            pid = await lock_profile(conn, pid)  # an erasure or merge may have committed
        if pid is None:  # suppressed, as an opt-out is: never dated later than now (optout)
            occurred = min(occurred, utcnow())
        kind_of = {name: ch.address for name, ch in p.policy.channels.items()}
        all_addr = await profile_addresses(conn, pid) if pid is not None else []
        subjects = (
            named  # unheld: the address named, whatever the channel (as an opt-out records it)
            if pid is None
            else targets_for(
                list(p.policy.channels),
                kind_of,
                pid,
                named,
                all_addr,
                body.channel,
                grant=body.status == "granted",
                names_address=bool(named),
            )
        )
        if not subjects:
            raise InvalidInput.field("channel", "the customer has no address on this channel")
        evidence = recorded_evidence(p.policy, body.purpose, body.status, body.evidence)
        # only evidence is encrypted: a withdrawal without any unwraps no data key, so it is
        # recorded while the key store is away (as an opt-out is)
        cipher = await cipher_for(conn, p, pid) if evidence is not None else None
        entries = [
            Entry(
                profile_id=pid,
                subject_kind=kind,
                subject=subject,
                purpose=body.purpose,
                channel=body.channel,
                status=body.status,
                occurred_at=occurred,
                source=body.source,
                actor=actor,
                method=(body.evidence.method if body.evidence else None) or "api",
                wording_id=body.evidence.wording_id if body.evidence else None,
                evidence=evidence,
                cipher=cipher,
                # a withdrawal "now" occurred when the ledger records it (consent.ledger)
                undated=body.status == "withdrawn" and body.occurred_at is None,
                via_profile=via_profile((kind, subject), named),
            )
            for kind, subject in subjects
        ]
        if pid is not None:
            return await ledger.append(conn, p.policy, entries)
        withdrawn: list[dict] = []
        appended = await ledger.append(conn, p.policy, entries, outbox=withdrawn)
        await seal_unseen(withdrawn, {ident.bidx: ident.value}, p.keys)  # type: ignore[dict-item]
        outbox: list[dict] = []  # suppression.added names the index only (docs/webhooks.md)
        held = [  # dated as their entries (an undated one: when the ledger recorded it)
            Suppression(
                e.subject,
                e.purpose,
                e.channel,
                WITHDRAWAL,
                e.source,
                e.occurred_at,
                None,
                e.subject_kind,
            )
            for e in entries
        ]
        await suppress_many(conn, held, outbox=outbox)
        await write_rows(conn, outbox + withdrawn)
        return appended


@dataclass(slots=True)
class ConsentView:
    items: list[dict[str, Any]]
    contactable: dict[str, dict[str, bool]]
    # purpose -> channel -> the blind indexes of the emails or phones it is contactable at
    # (the preference centre names them, so a customer with two sees which one is on)
    open_at: dict[str, dict[str, set[bytes]]] = field(default_factory=dict)


# consent_view's statements, built once: building one per call cost more than running it
_STANDING = select(profiles.c.status, profiles.c.jurisdiction).where(
    profiles.c.id == bindparam("pid")
)
_IDENTITIES = (  # in the order the profile lists them (cdp.profiles.service)
    select(identities.c.kind, identities.c.bidx, identities.c.value)
    .where(identities.c.profile_id == bindparam("pid"))
    .order_by(identities.c.created_at, identities.c.id)
)
_STATES_OF = select(consent_state).where(
    consent_state.c.subject.in_(bindparam("subjects", expanding=True))
)
_ORDERS = select(profile_stats.c.orders_count).where(profile_stats.c.profile_id == bindparam("pid"))


@dataclass(frozen=True, slots=True)
class Loaded:
    """What the consent view reads of the profile, unless a caller read it already in the
    same transaction (a profile read): `identities` all of them, as (kind, blind index,
    encrypted value)."""

    status: str
    jurisdiction: str
    cipher: FieldCipher  # `Keyring.reader_cipher`: Gone where the key was destroyed
    identities: list[tuple[str, bytes, bytes]]
    orders_count: int


async def _load(conn: AsyncConnection, p: Platform, profile_id: uuid.UUID) -> Loaded:
    one = {"pid": profile_id}
    prof = (await conn.execute(_STANDING, one)).one()
    return Loaded(
        status=prof.status,
        jurisdiction=prof.jurisdiction,
        cipher=await p.keys.reader_cipher(conn, profile_id),
        identities=[(k, b, v) for k, b, v in await conn.execute(_IDENTITIES, one)],
        orders_count=(await conn.execute(_ORDERS, one)).scalar() or 0,
    )


async def consent_view(
    conn: AsyncConnection,
    p: Platform,
    profile_id: uuid.UUID,
    loaded: Loaded | None = None,
    *,
    now: datetime | None = None,
) -> ConsentView:
    """Current consent per address and the contactable matrix of a (surviving) profile, at
    `now` (the current time unless given): a grant that has lapsed by then keeps its status
    and since in `items`, and contactable says no."""
    now = now or utcnow()
    if loaded is None:
        loaded = await _load(conn, p, profile_id)
    cipher = loaded.cipher
    idents = [i for i in loaded.identities if i[0] in ("email", "phone")]
    held = [b for _, b, _ in loaded.identities]  # external ids too (cdp.profiles.identifiers)
    plain = {b: cipher.decrypt("identities.value", v) for _, b, v in idents}
    psubj = profile_subject(profile_id)
    subjects = [b for _, b, _ in idents] + [psubj]
    states = {
        (r.subject, r.purpose, r.channel): r
        for r in (await conn.execute(_STATES_OF, {"subjects": subjects}))
    }
    # ties (one opt-out withdrawing every address at once) in the profile's order of its
    # addresses, the profile's own state last: the databases return the rows in orders of
    # their own (SQLite by blind index, PostgreSQL by where a row lies)
    position = {subject: n for n, subject in enumerate(subjects)}
    supp = await suppressed_at(conn, held)
    items = [
        {
            "purpose": r.purpose,
            "channel": r.channel,
            "address": plain.get(r.subject) if r.subject != psubj else None,
            "status": r.status,
            "since": r.since,
            "source": r.source,
            # an opt-out of the address outranks this state (only a later grant lifts it)
            "suppressed": suppression_outranks(
                r.status, r.since, latest_suppression(supp, r.subject, r.purpose, r.channel)
            ),
        }
        for r in sorted(
            states.values(), key=lambda r: (r.purpose, r.channel, r.since, position[r.subject])
        )
    ]
    matrix: dict[str, dict[str, bool]] = {}
    open_at: dict[str, dict[str, set[bytes]]] = {}
    for purpose in p.policy.purposes:
        matrix[purpose] = {}
        open_at[purpose] = {}
        for channel, ch in p.policy.channels.items():
            if ch.address == "profile":
                candidates = [psubj]
            else:
                candidates = [b for k, b, _ in idents if k == ch.address]
            ok = False
            reached: set[bytes] = set()
            for subject in candidates or [None]:
                state = states.get((subject, purpose, channel)) if subject else None
                facts = Facts(
                    profile_status=loaded.status,
                    jurisdiction=loaded.jurisdiction,
                    has_address=subject is not None,
                    state_status=state.status if state else None,
                    state_since=state.since if state else None,
                    suppressed_at=latest_for_profile(supp, held, purpose, channel)
                    if subject == psubj
                    else latest_suppression(supp, subject, purpose, channel)
                    if subject
                    else None,
                    is_customer=loaded.orders_count > 0,
                )
                if decide(p.policy, purpose, channel, facts, now=now) is None:
                    ok = True
                    if subject is not None and subject != psubj:
                        reached.add(subject)
            matrix[purpose][channel] = ok
            open_at[purpose][channel] = reached
    return ConsentView(items=items, contactable=matrix, open_at=open_at)


async def address_decision(
    conn: AsyncConnection,
    p: Platform,
    kind: str,
    bidx: bytes,
    purpose: str,
    channel: str,
    *,
    now: datetime | None = None,
) -> str | None:
    """The rule's answer for one address at `now` (the current time unless given): None when
    contactable, else the reason."""
    owner = (
        await conn.execute(
            select(profiles.c.id, profiles.c.status, profiles.c.jurisdiction)
            .select_from(identities.join(profiles, profiles.c.id == identities.c.profile_id))
            .where(identities.c.bidx == bidx, identities.c.kind == kind)
        )
    ).first()
    state = (
        await conn.execute(
            select(consent_state.c.status, consent_state.c.since).where(
                consent_state.c.subject == bidx,
                consent_state.c.purpose == purpose,
                consent_state.c.channel == channel,
            )
        )
    ).first()
    supp = await suppressed_at(conn, [bidx])
    facts = Facts(
        profile_status=owner.status if owner else None,
        jurisdiction=owner.jurisdiction if owner else None,
        has_address=owner is not None and p.policy.address_kind(channel) == kind,
        state_status=state.status if state else None,
        state_since=state.since if state else None,
        suppressed_at=latest_suppression(supp, bidx, purpose, channel),
        is_customer=owner is not None and await is_customer(conn, owner.id),
    )
    return decide(p.policy, purpose, channel, facts, now=now or utcnow())


async def is_customer(conn: AsyncConnection, profile_id: uuid.UUID) -> bool:
    """Whether the profile has bought (the contactability rule's soft opt-in condition)."""
    orders = (await conn.execute(_ORDERS, {"pid": profile_id})).scalar()
    return bool(orders)
