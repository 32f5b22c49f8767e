"""The state check for profile-keyed consent (push, messenger: subject "p:" + profile id).

Merges move this state between profiles and unmerges split it back (cdp.profiles.merge and
cdp.profiles.unmerge) without ledger entries of their own: a merge keeps the more restrictive
state of the two whatever its time, an unmerge restores what the merge's snapshot holds. So
what is compared depends on the profile:
- an erased profile holds no state (the erasure deleted it, and nothing can be recorded for an
  erased profile afterwards); a merged-away one neither (the merge moved it to the survivor);
- an active profile that never took part in a merge (no `merges` row names it, done or undone)
  holds exactly what its own ledger entries imply, as an address does;
- an active profile that took part in a merge: every row must be accounted for by the entry
  its seq names: a profile entry of this profile or of one merged with it (directly or through
  others), for that purpose, covering that channel, with that status, and a `since` no earlier
  than the entry's time. A missing row, or one that a later entry of its own would have
  replaced, is not reported for such a profile: undoing a merge can legitimately leave both.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from itertools import groupby
from operator import itemgetter
from typing import Any

from consent.audit.findings import Findings
from consent.audit.replay import (
    EFFECTIVE_GRANTS,
    OTHER_POLICY,
    SEQ,
    SUBJECT,
    Channels,
    Fact,
    Outcome,
    acceptable,
    by_key,
    fact_columns,
    replay,
)
from consent.audit.rows import Reader, Row
from consent.subjects import PROFILE_PREFIX, subject_profile_bytes

_STATUS = "SELECT id, status FROM profiles WHERE id IN {in}"
_MERGES = "SELECT survivor_id, absorbed_id FROM merges WHERE {side} IN {{in}}"


def ledger_sql(reader: Reader) -> str:
    """The entries on profiles, by profile then seq: the entries without an address, which the
    address index finds without reading the others."""
    return (
        f"SELECT {fact_columns(reader, 'profile_id', 'NULL')} FROM consent_ledger "
        f"WHERE address_bidx IS NULL AND {EFFECTIVE_GRANTS} ORDER BY profile_id, seq"
    )


def subject_key(reader: Reader) -> Callable[[Row], bytes]:
    """The consent subject of a row of `ledger_sql`: "p:" + the profile id's bytes."""
    return lambda row: PROFILE_PREFIX + reader.id_bytes(row[SUBJECT])


async def prepare(
    reader: Reader,
    channels: Channels,
    policy_version: str,
    out: Findings,
    ledger: Sequence[Row],
    states: Sequence[Row],
) -> Callable[[], None]:
    """The check of one batch, in which every profile comes with all its entries and states:
    what it needs from the database is read now, the returned function compares."""
    by_seq = f"SELECT {fact_columns(reader, 'profile_id', 'NULL')} FROM consent_ledger "
    known = _Known(reader, channels, policy_version, by_seq + "WHERE seq IN {in}")
    await known.load(ledger, states)
    return partial(_compare, known, ledger, states, out)


class _Known:
    """What a batch needs besides its rows: statuses, merge histories, entries named by seq."""

    def __init__(
        self, reader: Reader, channels: Channels, policy_version: str, by_seq: str
    ) -> None:
        self.reader, self.channels = reader, channels
        self.version, self.by_seq = policy_version, by_seq
        self.status: dict[bytes, str] = {}
        self.merged: set[bytes] = set()  # profiles a merges row names
        self.named: dict[int, tuple[Fact, bytes]] = {}  # seq -> (entry, its profile)
        self.families: dict[bytes, set[bytes]] = {}

    async def load(self, ledger: Sequence[Row], states: Sequence[Row]) -> None:
        reader, pid_of = self.reader, self.reader.id_bytes
        held = {reader.id_param(subject_profile_bytes(s[0])) for s in states}
        ids = list({r[SUBJECT] for r in ledger} | held)
        for pid, status in await reader.rows_in(_STATUS, ids):
            self.status[pid_of(pid)] = status
        for side in ("survivor_id", "absorbed_id"):
            for pair in await reader.rows_in(_MERGES.format(side=side), ids):
                self.merged.update(pid_of(v) for v in pair)
        if not self.merged:
            return
        own: dict[bytes, set[int]] = defaultdict(set)
        for r in ledger:
            if (pid := pid_of(r[SUBJECT])) in self.merged:
                own[pid].add(r[SEQ])
        outside: set[bytes] = set()  # profiles with a row that an own entry does not explain
        wanted: set[int] = set()
        for subject, *_, seq in states:
            pid = subject_profile_bytes(subject)
            if pid in self.merged and seq not in own[pid]:
                outside.add(pid)
                wanted.add(seq)
        for r in await reader.rows_in(self.by_seq, sorted(wanted), self.version):
            fact = Fact._make(r)
            self.named[fact.seq] = (fact, pid_of(fact.subject) if fact.subject else b"")
        for pid in sorted(outside):
            self.families[pid] = await self._family(pid)

    async def _family(self, start: bytes) -> set[bytes]:
        """Every profile linked to `start` by merges rows (done or undone)."""
        seen, frontier = {start}, [start]
        while frontier:
            ids = [self.reader.id_param(p) for p in frontier]
            pairs = []
            for side in ("survivor_id", "absorbed_id"):
                pairs += await self.reader.rows_in(_MERGES.format(side=side), ids)
            found = {self.reader.id_bytes(v) for pair in pairs for v in pair} - seen
            seen |= found
            frontier = sorted(found)
        return seen


def _compare(known: _Known, ledger: Sequence[Row], states: Sequence[Row], out: Findings) -> None:
    out.entries += len(ledger)
    pid_of = known.reader.id_bytes
    own = {pid_of(s): list(g) for s, g in groupby(ledger, itemgetter(SUBJECT))}
    held: dict[bytes, dict[tuple[str, str], Outcome]] = defaultdict(dict)
    for subject, purpose, channel, status, since, seq in states:
        held[subject_profile_bytes(subject)][(purpose, channel)] = (status, since, seq)
    # erased, merged away, or with a merge history: compared profile by profile
    special = {
        p
        for p in own.keys() | held.keys()
        if p in known.merged or known.status.get(p, "active") != "active"
    }
    special |= {p for p, rows in own.items() if any(r[OTHER_POLICY] for r in rows)}
    expected = replay(
        known.channels, (r for p, rows in own.items() if p not in special for r in rows)
    )
    if _agrees(expected, held, special, pid_of):
        out.states += sum(len(v) for p, v in held.items() if p not in special)
        pids = special
    else:
        pids = own.keys() | held.keys()
    for pid in sorted(pids):
        facts = list(map(Fact._make, own.get(pid, [])))
        _profile(known, pid, facts, held.get(pid, {}), out)


def _agrees(
    expected: dict[tuple[Any, str, str], Outcome],
    held: dict[bytes, dict[tuple[str, str], Outcome]],
    special: set[bytes],
    pid_of: Callable[[Any], bytes],
) -> bool:
    """Whether every profile outside `special` holds exactly what its entries imply."""
    mine = {(pid_of(s), p, c): o for (s, p, c), o in expected.items()}
    found = {
        (pid, p, c): o
        for pid, rows in held.items()
        if pid not in special
        for (p, c), o in rows.items()
    }
    return mine == found


def _profile(
    known: _Known,
    pid: bytes,
    facts: list[Fact],
    held: dict[tuple[str, str], Outcome],
    out: Findings,
) -> None:
    """One profile, key by key (see the module's docstring)."""
    rows = {k: v for k, v in held.items() if known.channels.known(k[1])}
    out.states += len(rows)
    status = known.status.get(pid)
    if status in ("erased", "merged"):
        for (purpose, channel), found in rows.items():
            out.state(purpose, channel, found, None)
    elif pid in known.merged:
        for key, found in rows.items():
            _account_for(known, pid, facts, key, found, out)
    else:
        wanted = by_key(known.channels, facts)
        for key in sorted(wanted.keys() | rows.keys()):
            if not known.channels.known(key[1]):
                continue
            allowed = acceptable(wanted.get(key, []), key[1])
            if rows.get(key) not in allowed:
                expected = max((o for o in allowed if o), key=lambda o: o[2], default=None)
                out.state(*key, rows.get(key), expected)


def _account_for(
    known: _Known,
    pid: bytes,
    facts: list[Fact],
    key: tuple[str, str],
    found: Outcome,
    out: Findings,
) -> None:
    """A row of a profile with a merge history: is the entry its seq names its origin?"""
    purpose, channel = key
    status, since, seq = found
    own = next((x for x in facts if x.seq == seq), None)
    entry, owner = (own, pid) if own is not None else known.named.get(seq, (None, b""))
    if (
        entry is None
        or entry.kind != "profile"
        or entry.purpose != purpose
        or channel not in known.channels(entry.kind, entry.channel)
        or owner not in known.families.get(pid, {pid})
    ):
        out.state(purpose, channel, found, None)
    elif entry.status != status or since < entry.at:
        out.state(purpose, channel, found, (entry.status, entry.at, entry.seq))
