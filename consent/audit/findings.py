"""What the state check found: counts, and a few examples named by ledger seq.

An example never carries an address, a blind index or any other personal data: only the kind
of mismatch, purpose, channel, times and ledger seq numbers. `GET /v1/audit/consent-events`
(or the evidence bundle) leads from a seq to the customer, for those allowed to see them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consent.audit.rows import iso

# a consent_state row whose status, since or seq is not what the ledger implies
STATE_DIFFERS = "state_differs"
# the ledger implies a state that consent_state lacks
STATE_MISSING = "state_missing"
# a consent_state row that no ledger entry accounts for
STATE_EXTRA = "state_extra"
# a suppression that neither an opt-out in the ledger nor a completed erasure accounts for
SUPPRESSION_UNBACKED = "suppression_unbacked"
# an opt-out in the ledger whose suppression is gone (suppressions are never lifted)
SUPPRESSION_MISSING = "suppression_missing"
# an address's erasure time (address_erasures) that no completed erasure accounts for: it
# would hide the entries recorded on the address before it from the customer's consent events,
# evidence bundle and access export (consent.dsr.customer.ledger_entries_of)
ERASURE_UNBACKED = "erasure_unbacked"
KINDS = (
    STATE_DIFFERS,
    STATE_MISSING,
    STATE_EXTRA,
    SUPPRESSION_UNBACKED,
    SUPPRESSION_MISSING,
    ERASURE_UNBACKED,
)
EXAMPLES = 3  # kept per kind of mismatch


@dataclass(slots=True)
class Findings:
    """Mismatches counted by kind; the first EXAMPLES of each kind kept as examples."""

    entries: int = 0  # ledger entries the check read
    states: int = 0  # consent_state rows compared
    suppressions: int = 0  # suppression rows compared
    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, **detail: Any) -> None:
        self.by_kind[kind] += 1
        if self.by_kind[kind] <= EXAMPLES:
            self.examples.append({"kind": kind, **detail})

    def merge(self, other: Findings) -> None:
        """Add what another part of the check found."""
        self.entries += other.entries
        self.states += other.states
        self.suppressions += other.suppressions
        for example in other.examples:
            if sum(e["kind"] == example["kind"] for e in self.examples) < EXAMPLES:
                self.examples.append(example)
        for kind, n in other.by_kind.items():
            self.by_kind[kind] += n

    def state(
        self,
        purpose: str,
        channel: str,
        found: tuple[str, str, int] | None,
        expected: tuple[str, str, int] | None,
    ) -> None:
        """A consent_state mismatch: `found` is the stored (status, since, seq), `expected`
        what the ledger implies (None: no row)."""

        def shown(o: tuple[str, str, int] | None) -> dict[str, Any] | None:
            return None if o is None else {"status": o[0], "since": iso(o[1]), "seq": o[2]}

        where = {"purpose": purpose, "channel": channel}
        if found is None:
            assert expected is not None
            self.add(STATE_MISSING, seq=expected[2], **where, expected=shown(expected))
        elif expected is None:
            self.add(STATE_EXTRA, seq=found[2], **where, stored=shown(found))
        else:
            stored, implied = shown(found), shown(expected)
            self.add(STATE_DIFFERS, seq=expected[2], **where, stored=stored, expected=implied)

    @property
    def mismatches(self) -> int:
        return sum(self.by_kind.values())

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def summary(self) -> str:
        counts = ", ".join(f"{n} {kind}" for kind, n in self.by_kind.items() if n)
        return (
            f"the derived consent state disagrees with the ledger: {self.mismatches} "
            f"mismatches ({counts})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": True,
            "ok": self.ok,
            "mismatches": self.mismatches,
            "compared": {
                "entries": self.entries,
                "states": self.states,
                "suppressions": self.suppressions,
            },
            "by_kind": dict(self.by_kind),
            "examples": sorted(self.examples, key=lambda e: KINDS.index(e["kind"])),
        }


def describe(example: dict[str, Any]) -> str:
    """One line for a person: what disagrees, where (purpose/channel, ledger seq)."""
    kind, where = example["kind"], f"{example['purpose']}/{example['channel']}"
    if kind == ERASURE_UNBACKED:
        return (
            f"{kind}: an address erased at {example['at']} by no completed erasure (its "
            "earlier entries are hidden from its customer's consent events)"
        )

    def state(o: dict[str, Any]) -> str:
        return f"{o['status']} since {o['since']} (seq {o['seq']})"

    if kind == STATE_DIFFERS:
        detail = (
            f"consent_state holds {state(example['stored'])}, the ledger implies "
            f"{state(example['expected'])}"
        )
    elif kind == STATE_MISSING:
        detail = f"consent_state has no row, the ledger implies {state(example['expected'])}"
    elif kind == STATE_EXTRA:
        detail = f"consent_state holds {state(example['stored'])}, which no entry accounts for"
    elif kind == SUPPRESSION_MISSING:
        detail = f"the opt-out at seq {example['seq']} has no suppression"
    else:
        detail = (
            f"a suppression ({example['reason']}, at {example['at']}) that no opt-out or "
            "completed erasure accounts for"
        )
        if example["seq"] is not None:
            detail += f" (latest ledger entry of the address: seq {example['seq']})"
    return f"{kind}: {where}: {detail}"


NOT_CHECKED: dict[str, Any] = {
    "checked": False,
    "ok": None,
    "mismatches": None,
    "reason": "the ledger's hash chain does not verify, so there is nothing to compare with",
}
