"""The state check for addresses (email and phone blind indexes), which email, sms and phone
segments read: consent_state against the ledger, and the suppression list against the opt-outs
and erasures that write it.

consent_state: every (address, purpose, channel) must hold the outcome the address's ledger
entries imply (consent.audit.replay), derived from the entries recorded after the address's
last erasure (an erasure deletes the address's state and suppresses it, reason "erasure", at
the erasure's time, for every purpose it had state for: so that suppression dates it). No row
where the ledger implies none, a row where it implies one.

Suppressions (consent.optout writes one with every opt-out withdrawal, in one transaction;
consent.dsr.erasure writes them for an erased customer's addresses; nothing ever deletes one,
and a repeat keeps the latest time):
- a suppression with reason "erasure" must carry the completion time of a completed erasure
  request; any other must carry the occurred_at of an opt-out withdrawal of that address,
  purpose and channel in the ledger;
- every opt-out withdrawal in the ledger must still have its suppression, at that time or later.
Opt-out withdrawals are the ledger entries consent.optout writes: no evidence, and the method of
an opt-out entry point (below); and any withdrawal of an address no customer held (no profile),
which POST /v1/consents suppresses as an opt-out of an unseen address is (consent.service). A
withdrawal of a customer's address through POST /v1/consents, an import or the preference
centre has another method or carries evidence, and suppresses nothing itself (one
of every channel gives an address learned later an opt-out entry: consent.optout, carry; so
does an opt-out of one channel that named the customer or an address of another kind, whose
entry on that address, sms on an email, implies no state and has its suppression).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from itertools import groupby
from operator import itemgetter
from typing import Any

from consent.audit import findings as f
from consent.audit.findings import Findings
from consent.audit.replay import (
    EFFECTIVE_GRANTS,
    OPT_OUT_AT,
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
from consent.audit.rows import Reader, Row, iso

# the methods consent.optout records: POST /v1/opt-outs, one-click unsubscribe, SMS STOP
OPT_OUT_METHODS = ("opt_out", "one_click", "sms_keyword")
ERASURE = "erasure"

_OPT_OUT = (
    "status = 'withdrawn' AND (profile_id IS NULL OR evidence IS NULL AND method IN ("
    + ", ".join(f"'{m}'" for m in OPT_OUT_METHODS)
    + "))"
)


def ledger_sql(reader: Reader) -> str:
    """The entries on addresses, by address then seq. On SQLite the `+` keeps the planner off
    the address index: a scan and a sort cost less than a table lookup per entry (2.5 s
    against 4.0 s at a million entries)."""
    bidx = "+address_bidx" if reader.sqlite else "address_bidx"
    opt_out_at = reader.time(f"CASE WHEN {_OPT_OUT} THEN occurred_at END")
    return (
        f"SELECT {fact_columns(reader, 'address_bidx', opt_out_at)} FROM consent_ledger "
        f"WHERE {bidx} IS NOT NULL AND {EFFECTIVE_GRANTS} ORDER BY {bidx}, seq"
    )


def suppressions_sql(reader: Reader) -> str:
    return (
        f"SELECT bidx, purpose, channel, reason, {reader.time('at')} FROM suppressions "
        "ORDER BY bidx, purpose, channel"
    )


async def prepare(
    reader: Reader,
    channels: Channels,
    out: Findings,
    ledger: Sequence[Row],
    states: Sequence[Row],
    sups: Sequence[Row],
) -> Callable[[], None]:
    """The check of one batch, in which every address comes with all its entries, states and
    suppressions: what it needs from the database is read now, the returned function compares
    (no database; run it in a worker thread)."""
    completed = (
        f"SELECT {reader.time('completed_at')} FROM dsr_requests WHERE kind = 'erasure' "
        f"AND status = 'completed' AND {reader.time('completed_at')} IN {{in}}"
    )
    erasure_ats = sorted({r[4] for r in sups if r[3] == ERASURE})
    erasures = {r[0] for r in await reader.rows_in(completed, erasure_ats)}
    return partial(_Batch(channels, out, erasures).run, ledger, states, sups)


class _Batch:
    def __init__(self, channels: Channels, out: Findings, erasures: set[str]) -> None:
        self.channels, self.out, self.erasures = channels, out, erasures

    def run(self, ledger: Sequence[Row], states: Sequence[Row], sups: Sequence[Row]) -> None:
        self.out.entries += len(ledger)
        self.out.suppressions += len(sups)
        suppressed: dict[bytes, dict[tuple[str, str], tuple[str, Any]]] = defaultdict(dict)
        for bidx, purpose, channel, reason, at in sups:
            suppressed[bidx][(purpose, channel)] = (reason, at)
        # suppressions first: they also tell where an erasure deleted an address's state
        opt_outs: dict[bytes, list[Fact]] = defaultdict(list)
        for r in ledger:
            if r[OPT_OUT_AT]:
                opt_outs[r[SUBJECT]].append(Fact._make(r))
        erased = {
            subject: self.suppressions(
                subject, opt_outs.get(subject, []), suppressed.get(subject, {}), ledger
            )
            for subject in sorted(suppressed.keys() | opt_outs.keys())
        }
        special = {s for s, times in erased.items() if times}
        special |= {r[SUBJECT] for r in ledger if r[OTHER_POLICY]}
        held = {(r[0], r[1], r[2]): (r[3], r[4], r[5]) for r in states}
        if special:
            held_plain = {k: v for k, v in held.items() if k[0] not in special}
            expected = replay(self.channels, (r for r in ledger if r[SUBJECT] not in special))
        else:
            held_plain, expected = held, replay(self.channels, ledger)
        if expected == held_plain:  # the usual case: all but the special addresses agree
            self.out.states += len(held_plain)
            subjects = special
        else:
            subjects = {r[SUBJECT] for r in ledger} | {k[0] for k in held}
        by_subject = {
            s: list(map(Fact._make, g)) for s, g in groupby(ledger, _SUBJECT) if s in subjects
        }
        rows: dict[bytes, dict[tuple[str, str], Outcome]] = defaultdict(dict)
        for (subject, purpose, channel), found in held.items():
            if subject in subjects:
                rows[subject][(purpose, channel)] = found
        for subject in sorted(subjects):
            self.subject(by_subject.get(subject, []), rows[subject], erased.get(subject, {}))

    def subject(
        self,
        facts: list[Fact],
        held: dict[tuple[str, str], Outcome],
        erased: dict[tuple[str, str], str],
    ) -> None:
        """One address, key by key, with every acceptable outcome (consent.audit.replay)."""
        wanted = by_key(self.channels, facts)
        for key in sorted(wanted.keys() | held.keys()):
            purpose, channel = key
            if not self.channels.known(channel):
                continue  # no one is contacted on a channel the policy does not know
            found = held.get(key)
            if found is not None:
                self.out.states += 1
            times = [t for k in (key, (purpose, "*")) if (t := erased.get(k)) is not None]
            allowed = acceptable(wanted.get(key, []), channel, max(times, default=None))
            if found not in allowed:
                expected = max((o for o in allowed if o), key=itemgetter(2), default=None)
                self.out.state(purpose, channel, found, expected)

    def suppressions(
        self,
        subject: bytes,
        opt_outs: list[Fact],
        suppressed: dict[tuple[str, str], tuple[str, Any]],
        ledger: Sequence[Row],
    ) -> dict[tuple[str, str], str]:
        """Check one address's suppressions against its opt-outs; returns when erasures
        deleted its state, by (purpose, channel or "*")."""
        erased: dict[tuple[str, str], str] = {}
        for (purpose, channel), (reason, at) in suppressed.items():
            if reason == ERASURE:
                backed = at in self.erasures
                if backed:
                    erased[(purpose, channel)] = at
            else:
                backed = any(
                    (o.purpose, o.channel, o.opt_out_at) == (purpose, channel, at) for o in opt_outs
                )
            if not backed:
                seqs = [r[SEQ] for r in ledger if r[SUBJECT] == subject]
                self.out.add(
                    f.SUPPRESSION_UNBACKED,
                    seq=max(seqs, default=None),  # the address's latest entry, to find it by
                    purpose=purpose,
                    channel=channel,
                    reason=reason,
                    at=iso(at),
                )
        for o in opt_outs:
            kept = suppressed.get((o.purpose, o.channel))
            if kept is None or kept[1] < o.opt_out_at:
                self.out.add(f.SUPPRESSION_MISSING, seq=o.seq, purpose=o.purpose, channel=o.channel)
        return erased


_SUBJECT = itemgetter(SUBJECT)
