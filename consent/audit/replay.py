"""The consent state that the ledger implies, derived as `consent.ledger.append` derives it.

For the entries on one subject, in seq order: an entry is ordered by min(occurred_at,
recorded_at), covers the channels `consent.subjects.expand_channel` gives for its subject kind
and channel ("*": every channel of that kind), and replaces the state of a (purpose, channel)
when `consent.ledger.supersedes` says so. The outcome of a (purpose, channel) is
(status, since, seq): what its consent_state row must hold.

Two facts the ledger alone cannot settle give a key more than one acceptable outcome:
- an erasure deleted the state of an address at time E (the erasure suppression records E), so
  the state is derived from the entries recorded after E. An entry recorded just after E by a
  transaction the erasure waited for was erased with it, so each entry recorded within
  a minute (RACE) after E may also be where the derivation starts;
- a "*" withdrawal recorded under another policy version than the loaded one: earlier policy
  files are not kept, so for a channel an operator may have added since (any but the required
  five, which every policy has) it may or may not have covered it. Withdrawals in a channel's
  history before some point did not cover it, those after did: each such cut is acceptable.

Times are UTC text as the database writes it (consent.audit.rows), which orders and compares as
the times do; the erasure window is computed on datetimes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from consent.audit.rows import Reader, Row, instant
from consent.ledger import supersedes
from consent.policy import REQUIRED_CHANNELS, Policy
from consent.subjects import expand_channel

RACE = timedelta(seconds=60)
Key = tuple[str, str]  # (purpose, channel)
Outcome = tuple[str, Any, int]  # (status, since, seq)


class Fact(NamedTuple):
    """A ledger entry as the derivation reads it, in the order the state check selects it."""

    seq: int
    kind: str  # email | phone | profile
    purpose: str
    channel: str  # as recorded: a channel or "*"
    status: str
    at: Any  # the ordering time: min(occurred_at, recorded_at)
    recorded_at: Any
    other_policy: bool  # recorded under another policy version than the loaded one
    subject: Any  # the address's blind index, or the profile id as the driver returns it
    opt_out_at: str | None  # a withdrawal consent.optout wrote (with a suppression): occurred_at


# the check reads rows in Fact's order; where it handles millions it reads them by position
SEQ, KIND, PURPOSE, CHANNEL, STATUS, AT, RECORDED_AT, OTHER_POLICY, SUBJECT, OPT_OUT_AT = range(
    len(Fact._fields)
)


# A grant recorded as not effective is left out: consent.ledger.append kept it from the state,
# either because an entry already there outranked it (leaving it out changes nothing) or because
# it was undated and the address had withdrawn or opted out (`Entry.undated`: its recorded time
# would wrongly outrank them). `effective` is hashed into the chain, so it is as proven as the
# rest of the entry.
EFFECTIVE_GRANTS = "(effective OR status <> 'granted')"


def fact_columns(reader: Reader, subject: str, opt_out_at: str) -> str:
    """SQL selecting a ledger entry's Fact, in its order: `subject` and `opt_out_at` are the
    expressions of those fields. The ordering time is min(occurred_at, recorded_at), as
    consent.ledger.append orders an entry."""
    at = reader.time("CASE WHEN occurred_at < recorded_at THEN occurred_at ELSE recorded_at END")
    return (
        f"seq, subject_kind, purpose, channel, status, {at}, {reader.time('recorded_at')}, "
        f"policy_version <> ?, {subject}, {opt_out_at}"
    )


class Channels:
    """expand_channel, remembered per (kind, channel): the derivation asks millions of times."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.memo: dict[tuple[str, str], list[str]] = {}

    def __call__(self, kind: str, channel: str) -> list[str]:
        found = self.memo.get((kind, channel))
        if found is None:
            found = self.memo[(kind, channel)] = expand_channel(self.policy, kind, channel)
        return found

    def known(self, channel: str) -> bool:
        return channel in self.policy.channels


def by_key(channels: Channels, facts: Iterable[Fact]) -> dict[Key, list[Fact]]:
    """The entries that concern each (purpose, channel) of one subject, in seq order."""
    out: dict[Key, list[Fact]] = {}
    for f in facts:
        for ch in channels(f.kind, f.channel):
            out.setdefault((f.purpose, ch), []).append(f)
    return out


def replay(channels: Channels, facts: Iterable[Row]) -> dict[tuple[Any, str, str], Outcome]:
    """The outcome of every (subject, purpose, channel) of these entries (all the entries of
    their subjects, in seq order, as rows in Fact's order), where they need no second reading
    (no erasure, no entry under another policy): what `acceptable` gives then, in one pass."""
    state: dict[tuple[Any, str, str], tuple[str, Any]] = {}
    seqs: dict[tuple[Any, str, str], int] = {}
    memo = channels.memo
    for f in facts:
        status, at = f[STATUS], f[AT]
        for ch in memo.get((f[KIND], f[CHANNEL])) or channels(f[KIND], f[CHANNEL]):
            key = (f[SUBJECT], f[PURPOSE], ch)
            if supersedes(status, at, state.get(key)):
                state[key] = (status, at)
                seqs[key] = f[SEQ]
    return {key: (status, at, seqs[key]) for key, (status, at) in state.items()}


def outcome(facts: Iterable[Fact]) -> Outcome | None:
    """The state after these entries, applied in order to an empty state."""
    state: Outcome | None = None
    for f in facts:
        if supersedes(f.status, f.at, None if state is None else (state[0], state[1])):
            state = (f.status, f.at, f.seq)
    return state


def _uncertain(f: Fact, channel: str) -> bool:
    return f.other_policy and f.channel == "*" and channel not in REQUIRED_CHANNELS


def acceptable(
    facts: list[Fact], channel: str, erased_at: str | None = None
) -> set[Outcome | None]:
    """Every outcome the state of this key may legitimately hold (usually exactly one).
    `erased_at`: when an erasure last deleted the key's state."""
    if erased_at is None and not any(f.other_policy for f in facts):
        return {outcome(facts)}
    starts: list[datetime | None] = [None]
    if erased_at is not None:
        erased = instant(erased_at)
        starts = [erased]
        starts += [t for f in facts if erased < (t := instant(f.recorded_at)) <= erased + RACE]
    out: set[Outcome | None] = set()
    for start in starts:
        kept = [f for f in facts if start is None or instant(f.recorded_at) > start]
        doubtful = [f.seq for f in kept if _uncertain(f, channel)]
        for cut in range(len(doubtful) + 1):
            dropped = set(doubtful[:cut])
            out.add(outcome(f for f in kept if f.seq not in dropped))
    return out
