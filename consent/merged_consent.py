"""Consent recorded on a merged profile, when the merge is undone.

**Grants** that reached an address through the merged profile (`withdraw_doubtful`):

While a wrong merge stands, a grant naming the merged customer otherwise than by an address
(a profile id, an external id, the preference centre's choice for every address of a kind)
reaches every address of both customers on the channel (`consent_ledger.via_profile`). It may
have been either customer's, and after the unmerge it counts for neither (DESIGN §1.1:
conflicting data means no), as a push grant does (cdp.profiles.unmerge):

- where such a grant holds an address's state, the address's own entries are read again
  without the grants of that kind recorded while the merge stood (`granted_without`);
- if they leave the address granted (the customer's own grant, made before the merge or since
  by naming the address), the state stays as it is;
- otherwise the unmerge records a withdrawal for the address (source and method "unmerge",
  no evidence), so the state stays what the ledger implies and the audit still verifies. A new
  grant makes the address contactable again.

**Withdrawals** recorded on the merged profile bind both customers (fail closed): those that
reached addresses stay on them, their evidence copied without who made them
(consent.evidence). One that concerns the person ("unsubscribe from everything", an opt-out of
one channel naming the customer: consent.optout.concerns_person) also reaches the addresses
the customer gains later (consent.optout.carry_person_opt_outs), which finds it by the profile
its entry names: the holder's. `hand_over_withdrawals` records each for the absorbed customer
too, on her profile, with its time, so it reaches the addresses she gains after the unmerge
(found by a model-based test on 2026-12-07: a CRM record brought her later email with an older
grant and she was handed out for advertising).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.platform import Platform
from consent import ledger
from consent.ledger import Entry, ordering_time, supersedes
from consent.optout import MAY_CONCERN_PERSON, concerns_person
from consent.policy import Policy
from consent.subjects import expand_channel, profile_subject
from consent.tables import address_erasures, consent_ledger, consent_state

SOURCE = METHOD = "unmerge"
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class Fact:
    """A ledger entry on one address, as `granted_without` reads it."""

    seq: int
    kind: str
    purpose: str
    channel: str  # as recorded: a channel or "*"
    status: str
    occurred_at: datetime
    recorded_at: datetime
    via_profile: bool | None
    effective: bool


def granted_without(
    policy: Policy,
    facts: Iterable[Fact],
    purpose: str,
    channel: str,
    merged_since: int,
    erased_at: datetime | None = None,
) -> bool:
    """Whether the address's entries (in seq order) leave it granted for `purpose` on `channel`
    without the grants that reached it through the merged profile after `merged_since`.

    The state is derived as consent.ledger.append derives it (ordered by min(occurred_at,
    recorded_at), a withdrawal winning a tie), from the entries recorded after the address's
    last erasure (`erased_at`: what came before was another customer's, and was erased). A grant
    that was not effective is left out, as the audit's replay leaves it out: where leaving it
    out makes the answer "not granted", that is the safe side."""
    state: tuple[str, datetime] | None = None
    for f in facts:
        if f.purpose != purpose or channel not in expand_channel(policy, f.kind, f.channel):
            continue
        if erased_at is not None and f.recorded_at <= erased_at:
            continue
        if f.status == "granted" and (not f.effective or (f.via_profile and f.seq > merged_since)):
            continue
        at = ordering_time(f.occurred_at, f.recorded_at)
        if supersedes(f.status, at, state):
            state = (f.status, at)
    return state is not None and state[0] == "granted"


async def withdraw_doubtful(
    conn: AsyncConnection,
    p: Platform,
    merged_since: int,
    addresses: dict[uuid.UUID, list[tuple[str, bytes]]],
    actor: str,
    now: datetime,
) -> int:
    """For the addresses of both customers of an undone merge (profile id -> (kind, blind
    index)), withdraw what only a grant through the merged profile granted (see the module's
    docstring). `merged_since`: the ledger's head when the merge was made. Returns how many
    withdrawals were recorded."""
    owner = {bidx: (pid, kind) for pid, held in addresses.items() for kind, bidx in held}
    cs = consent_state.c
    granted = await _rows(
        conn,
        select(cs.subject, cs.purpose, cs.channel, cs.seq).where(
            cs.status == "granted", cs.seq > merged_since
        ),
        cs.subject,
        list(owner),
    )
    if not granted:
        return 0
    led = consent_ledger.c
    through = {
        seq
        for seq, via in await _rows(
            conn,
            select(led.seq, led.via_profile),
            led.seq,
            sorted({r.seq for r in granted}),
        )
        if via
    }
    doubtful = [r for r in granted if r.seq in through]
    if not doubtful:
        return 0
    subjects = sorted({r.subject for r in doubtful})
    facts: dict[bytes, list[Fact]] = {}
    for r in await _rows(
        conn,
        select(
            led.address_bidx,
            led.seq,
            led.subject_kind,
            led.purpose,
            led.channel,
            led.status,
            led.occurred_at,
            led.recorded_at,
            led.via_profile,
            led.effective,
        ).order_by(led.seq),
        led.address_bidx,
        subjects,
    ):
        facts.setdefault(r.address_bidx, []).append(Fact(*r[1:]))
    ec = address_erasures.c
    erased: dict[bytes, datetime] = {}
    for bidx, at in await _rows(conn, select(ec.bidx, ec.at), ec.bidx, subjects):
        erased[bidx] = max(at, erased.get(bidx, at))
    entries = []
    for r in doubtful:
        mine = facts.get(r.subject, [])  # in seq order: each address is read in one chunk
        if granted_without(
            p.policy, mine, r.purpose, r.channel, merged_since, erased.get(r.subject)
        ):
            continue
        pid, kind = owner[r.subject]
        entries.append(
            Entry(
                profile_id=pid,
                subject_kind=kind,
                subject=r.subject,
                purpose=r.purpose,
                channel=r.channel,
                status="withdrawn",
                occurred_at=now,
                source=SOURCE,
                actor=actor,
                method=METHOD,
                # occurs when the ledger records it, after the grant it withdraws, also one
                # recorded by a process whose clock runs ahead of this one's (consent.ledger)
                undated=True,
                via_profile=False,
            )
        )
    await ledger.append(conn, p.policy, entries)
    return len(entries)


async def hand_over_withdrawals(
    conn: AsyncConnection,
    p: Platform,
    holder: uuid.UUID,
    absorbed: uuid.UUID,
    merged_since: int,
    actor: str,
) -> int:
    """Record for `absorbed`, on her profile, each withdrawal concerning the person that was
    recorded on `holder` after `merged_since` (the latest per purpose and channel), with its
    time, method and source. Returns how many."""
    led = consent_ledger.c
    latest: dict[tuple[str, str], Any] = {}
    for r in await conn.execute(
        select(
            led.purpose,
            led.channel,
            led.subject_kind,
            led.via_profile,
            led.occurred_at,
            led.method,
            led.source,
        )
        .where(led.profile_id == holder, led.seq > merged_since, MAY_CONCERN_PERSON)
        .order_by(led.seq)
    ):
        if concerns_person(p.policy, r.subject_kind, r.channel, r.via_profile):
            key = (r.purpose, r.channel)
            if key not in latest or r.occurred_at >= latest[key].occurred_at:
                latest[key] = r
    entries = [
        Entry(
            profile_id=absorbed,
            subject_kind="profile",
            subject=profile_subject(absorbed),
            purpose=r.purpose,
            channel=r.channel,
            status="withdrawn",
            occurred_at=r.occurred_at,
            source=r.source,
            actor=actor,
            method=r.method,  # an opt-out stays one (carry_person_opt_outs reads the method)
        )
        for r in latest.values()
    ]
    await ledger.append(conn, p.policy, entries)
    return len(entries)


async def _rows(conn: AsyncConnection, query: Any, column: Any, values: Sequence[Any]) -> list:
    out: list = []
    for start in range(0, len(values), _CHUNK):
        out += (await conn.execute(query.where(column.in_(values[start : start + _CHUNK])))).all()
    return out
