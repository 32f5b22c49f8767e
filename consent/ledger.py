"""Appending to the consent ledger and keeping the derived state in the same transaction.

Appends are serialised (PostgreSQL: a transaction-scoped advisory lock on the ledger head;
SQLite: the write transaction), so seq has no gaps and every entry links to the one before.
The effective state is the latest by occurred_at; on a tie a withdrawal wins. An older event is
kept in the ledger (effective = false) and changes nothing. An event is ordered by its
occurred_at, or by when it is recorded if that is earlier: a grant dated in the future (2099)
would otherwise outrank every opt-out made before then, and the customer would stay
contactable after opting out. The ledger keeps the occurred_at it was given; the state's `since`
is the ordering time. (Input more than a few minutes ahead is refused anyway:
`cdp.ids.time_problem`.)

The recording time never goes back: it is this process's clock, or the head entry's recorded_at
where that is later (another API process whose clock runs ahead, or this clock stepped back),
by at most `cdp.ids.MAX_AHEAD` (a clock that once read 2099 must not date every later opt-out
2099, where no grant could ever outrank it).
A withdrawal that gives no time of its own (`Entry.undated`: an opt-out or a withdrawal "now")
occurred when it is recorded, so it outranks every entry recorded before it. Dated by the clock
of the process that took the request, an opt-out a second behind the clock that recorded the
grant before it lost to that grant, and the customer stayed contactable.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import Update, and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.fields import CryptoError, FieldCipher, nonces
from cdp.db.bulk import bulk_insert, execute_rows
from cdp.db.engine import xact_lock
from cdp.db.tables import identities
from cdp.ids import MAX_AHEAD, new_id, parse_uuid, utcnow
from cdp.keyring import SYSTEM_OWNER
from cdp.profiles.identifiers import profiles_held
from consent.chain import GENESIS, entry_hash
from consent.outbox.enqueue import ledger_event_row, write_rows
from consent.policy import Policy
from consent.subjects import expand_channel, profile_subject
from consent.suppressions import latest_for_profile, latest_suppression, suppressed_at
from consent.tables import consent_ledger, consent_state

if TYPE_CHECKING:
    from cdp.platform import Platform

LEDGER_LOCK = 5_147_001_001


@dataclass(slots=True)
class Entry:
    profile_id: uuid.UUID | None
    subject_kind: str  # email | phone | profile
    subject: bytes
    purpose: str
    channel: str  # a channel, or "*" (withdrawals only)
    status: str
    occurred_at: datetime
    source: str
    actor: str
    method: str | None = None
    wording_id: str | None = None
    evidence: dict[str, Any] | None = None
    cipher: FieldCipher | None = None
    # No occurred_at was given (a consent column of an imported or synced record): when it was
    # given is unknown, so as a grant it cannot outrank a withdrawal or an opt-out. Re-importing
    # last year's CRM export must not resubscribe whoever opted out since. A withdrawal without
    # one occurred when it is recorded: `append` sets its occurred_at to the recording time.
    undated: bool = False
    # On an address: whether the request reached it through the profile rather than naming it
    # (consent_ledger.via_profile); None on the profile's own entries.
    via_profile: bool | None = None


@dataclass(frozen=True, slots=True)
class Appended:
    event_id: uuid.UUID
    seq: int
    effective: bool
    profile_id: uuid.UUID | None


def ordering_time(occurred_at: datetime, recorded_at: datetime) -> datetime:
    """When an entry counts as having happened, for the order of the consent state: the time
    it reports, never later than when it was recorded (see the module's docstring)."""
    return min(occurred_at, recorded_at)


_HEAD = (
    select(consent_ledger.c.seq, consent_ledger.c.hash, consent_ledger.c.recorded_at)
    .order_by(consent_ledger.c.seq.desc())
    .limit(1)
)


async def _head(conn: AsyncConnection) -> tuple[int, bytes, datetime]:
    """(last seq, last hash, recording time) of the ledger, locked for appending until the
    transaction ends (as consent.chain.chain_head): the recording time is now, or the last
    entry's recorded_at where this clock is behind it."""
    await xact_lock(conn, LEDGER_LOCK)
    head = (await conn.execute(_HEAD)).first()
    now = utcnow()
    if head is None:
        return 0, GENESIS, now
    return head.seq, head.hash, max(now, min(head.recorded_at, now + MAX_AHEAD))


def supersedes(status: str, at: datetime, current: tuple[str, datetime] | None) -> bool:
    if current is None:
        return True
    cur_status, cur_at = current
    if at != cur_at:
        return at > cur_at
    return status == "withdrawn" and cur_status != "withdrawn"


async def append(
    conn: AsyncConnection,
    policy: Policy,
    entries: list[Entry],
    *,
    outbox: list[dict] | None = None,
) -> list[Appended]:
    """Append `entries` to the ledger and bring the consent state up to date; each effective
    one's event goes to the webhook outbox, or onto `outbox` for the caller to write with its
    own events (one insert for all)."""
    if not entries:
        return []
    seq, prev, now = await _head(conn)

    expanded = [expand_channel(policy, e.subject_kind, e.channel) for e in entries]
    wanted = {
        (e.subject, e.purpose, ch) for e, chs in zip(entries, expanded, strict=True) for ch in chs
    }
    state = await load_states(conn, wanted)
    existing = set(state)
    blocked, holders = await _suppressions(conn, entries)
    ledger_rows: list[dict] = []
    changed: dict[tuple[bytes, str, str], dict] = {}
    confirmed: list[tuple[bytes, datetime]] = []
    results: list[Appended] = []
    outbox_rows: list[dict] = []
    fresh = iter(nonces(len(entries)))  # one read, enough for every entry's evidence
    for e, chs in zip(entries, expanded, strict=True):
        seq += 1
        effective = False
        if e.undated and e.status == "withdrawn":
            e.occurred_at = now  # occurred when recorded (see the module's docstring)
        at = ordering_time(e.occurred_at, now)
        for ch in chs:
            key = (e.subject, e.purpose, ch)
            if (
                e.undated
                and e.status == "granted"
                and (
                    _already_granted(key, state)
                    or _opted_out(key, state, blocked, holders.get(e.subject))
                )
            ):
                continue
            if supersedes(e.status, at, state.get(key)):
                effective = True
                state[key] = (e.status, at)
                changed[key] = {
                    "subject": e.subject,
                    "purpose": e.purpose,
                    "channel": ch,
                    "profile_id": e.profile_id,
                    "status": e.status,
                    "since": at,
                    "seq": seq,
                    "source": e.source,
                }
        if effective and e.status == "granted" and e.subject_kind != "profile":
            confirmed.append((e.subject, at))
        evidence_blob = owner = key_id = None
        if e.evidence and e.cipher is not None:
            evidence_blob = e.cipher.encrypt(
                "consent_ledger.evidence", msgspec.json.encode(e.evidence), next(fresh)
            )
            owner, key_id = e.cipher.owner, e.cipher.key_id
        row = {
            "seq": seq,
            "event_id": new_id(),
            "profile_id": e.profile_id,
            "subject_kind": e.subject_kind,
            "address_bidx": None if e.subject_kind == "profile" else e.subject,
            "purpose": e.purpose,
            "channel": e.channel,
            "status": e.status,
            "occurred_at": e.occurred_at,
            "recorded_at": now,
            "source": e.source,
            "actor": e.actor,
            "method": e.method,
            "wording_id": e.wording_id,
            "policy_version": policy.version,
            "evidence": evidence_blob,
            "evidence_owner": owner,
            "evidence_key_id": key_id,
            "effective": effective,
            "prev_hash": prev,
            "via_profile": None if e.subject_kind == "profile" else e.via_profile,
        }
        row["hash"] = entry_hash(prev, row)
        prev = row["hash"]
        ledger_rows.append(row)
        results.append(Appended(row["event_id"], seq, effective, e.profile_id))
        if effective:  # consent.granted / consent.withdrawn, committed with the change
            outbox_rows.append(ledger_event_row(e, now))

    await bulk_insert(conn, consent_ledger, ledger_rows)
    if outbox is None:
        await write_rows(conn, outbox_rows)
    else:
        outbox.extend(outbox_rows)
    await _write_states(conn, changed, existing)
    await execute_rows(conn, "ledger.confirm", _confirm, ("b", "t"), confirmed)
    return results


async def _suppressions(
    conn: AsyncConnection, entries: list[Entry]
) -> tuple[dict[tuple[bytes, str, str], datetime], dict[bytes, list[bytes]]]:
    """The suppressions that undated grants ask about (the only ones that do): of the address
    a grant names, and for a profile's channel (push, messenger) of every identifier the profile
    holds (external ids too), with those by profile subject. "Stop all marketing" said from an
    address, and the suppression an erasure leaves, concern the person: an undated push grant
    that came back with them in a stale import used to make them contactable again."""
    undated = [e for e in entries if e.undated and e.status == "granted"]
    bidxs = {e.subject for e in undated if e.subject_kind != "profile"}
    pids = {e.profile_id for e in undated if e.subject_kind == "profile" and e.profile_id}
    holders: dict[bytes, list[bytes]] = {}
    if pids:
        for pid, addresses in (await profiles_held(conn, pids)).items():
            holders[profile_subject(pid)] = [bidx for _, bidx in addresses]
            bidxs.update(holders[profile_subject(pid)])
    return (await suppressed_at(conn, sorted(bidxs)) if bidxs else {}), holders


def _already_granted(
    key: tuple[bytes, str, str], state: dict[tuple[bytes, str, str], tuple[str, datetime]]
) -> bool:
    """An undated grant of what is granted already (a nightly sync repeating every
    subscriber's consent column) says nothing new: taking its recorded time would make an old
    subscription look new (`consent_days`, the address's confirmation, a consent.granted
    webhook each night)."""
    current = state.get(key)
    return current is not None and current[0] == "granted"


def _opted_out(
    key: tuple[bytes, str, str],
    state: dict[tuple[bytes, str, str], tuple[str, datetime]],
    blocked: dict[tuple[bytes, str, str], datetime],
    held: list[bytes] | None = None,
) -> bool:
    """Whether the subject has withdrawn or is suppressed for this purpose and channel; a
    profile (push, messenger) is suppressed by a suppression of any address it `held`."""
    current = state.get(key)
    if current is not None and current[0] == "withdrawn":
        return True
    subject, purpose, channel = key
    if held is not None:
        return latest_for_profile(blocked, held, purpose, channel) is not None
    return latest_suppression(blocked, subject, purpose, channel) is not None


def _confirm() -> Update:
    """An effective grant confirms its address (the latest grant's time is kept)."""
    ic = identities.c
    return (
        update(identities)
        .where(ic.bidx == bindparam("b"))
        .where(or_(ic.confirmed_at.is_(None), ic.confirmed_at < bindparam("t")))
        .values(confirmed_at=bindparam("t"))
    )


_cs = consent_state.c
# Statements built once: building one per call cost more than the driver's whole round trip.
_STATES = select(_cs.subject, _cs.purpose, _cs.channel, _cs.status, _cs.since).where(
    _cs.subject.in_(bindparam("subjects", expanding=True))
)
_STATE_CHANGE = (
    update(consent_state)
    .where(
        and_(
            _cs.subject == bindparam("n_subject"),
            _cs.purpose == bindparam("n_purpose"),
            _cs.channel == bindparam("n_channel"),
        )
    )
    .values(
        profile_id=bindparam("n_profile_id"),
        status=bindparam("n_status"),
        since=bindparam("n_since"),
        seq=bindparam("n_seq"),
        source=bindparam("n_source"),
    )
)


async def load_states(
    conn: AsyncConnection, keys: set[tuple[bytes, str, str]]
) -> dict[tuple[bytes, str, str], tuple[str, datetime]]:
    out: dict[tuple[bytes, str, str], tuple[str, datetime]] = {}
    items = list(keys)
    for start in range(0, len(items), 300):
        chunk = items[start : start + 300]
        rows = await conn.execute(_STATES, {"subjects": list({k[0] for k in chunk})})
        wanted = set(chunk)
        for subject, purpose, channel, status, since in rows:
            if (subject, purpose, channel) in wanted:
                out[(subject, purpose, channel)] = (status, since)
    return out


async def _write_states(
    conn: AsyncConnection, changed: dict[tuple[bytes, str, str], dict], existing: set
) -> None:
    inserts = [v for k, v in changed.items() if k not in existing]
    updates = [
        {**{f"n_{k}": v for k, v in row.items()}} for key, row in changed.items() if key in existing
    ]
    await bulk_insert(conn, consent_state, inserts)
    if updates:
        await conn.execute(_STATE_CHANGE, updates)


# Reading evidence back: the one place that decrypts what `append` encrypted. -----------
async def owner_ciphers(
    conn: AsyncConnection, p: Platform, owners: set[str]
) -> dict[str, FieldCipher]:
    ids = {o: u for o in owners if (u := parse_uuid(o)) is not None}
    found = await p.keys.ciphers(conn, ids.values())
    out = {o: found[u] for o, u in ids.items() if u in found}
    if SYSTEM_OWNER in owners:
        out[SYSTEM_OWNER] = p.keys.system
    return out


def read_evidence(row: Any, ciphers: dict[str, FieldCipher]) -> tuple[Any, bool]:
    """(decrypted evidence, readable): null and unreadable once the data key is destroyed."""
    if row.evidence is None:
        return None, True
    cipher = ciphers.get(row.evidence_owner or "")
    if cipher is None or cipher.key_id != row.evidence_key_id:
        return None, False
    try:
        plain = cipher.decrypt_bytes("consent_ledger.evidence", row.evidence)
        return msgspec.json.decode(plain), True
    except (CryptoError, msgspec.DecodeError):
        return None, False
