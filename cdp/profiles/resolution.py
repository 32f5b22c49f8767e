"""Which profile each record of a batch joins (plain Python: no database).

A batch is resolved as its records would be one request after another, so that the same records
make the same profiles whichever way they arrive: one POST /v1/profiles each, /v1/profiles/batch
cut anywhere, `cdp import` with any chunk and transaction size. Each record, in order:
- joins the profile its identifiers name, or starts one when they name none;
- where they name several, merges them into the oldest: an existing profile is older than any
  the batch starts, and of existing ones the lowest id is the oldest (ids are time-ordered,
  each drawn as its record arrived: an import draws them as it reads the file, before a
  worker seals the record, so a record's profile is never older than an earlier record's),
  unless the merge guards refuse (`refusal`): then the record is stored in the profile its own
  (source, external id) names, else the oldest, its identifiers that belong to the others are
  not kept, and the merge is queued for review;
- adds its other identifiers to the profile, up to the policy's cap per kind (one over the cap
  is not kept, so it links nothing later).

Before, a batch joined every record it connected into one profile first and asked the guards
about the whole of it: three records each linking two of four customers were refused as "a merge
of four profiles" (one request each merged them), two customers of one shop whose records met
in one batch were merged without a review (one request each: refused), and after a refusal
every record of the batch that touched either profile was stored in one of them.

The oldest was the earliest `created_at`, which is not always the lowest id (a request that
took its time before another may make its id after it). Segment members are walked in id
order with a keyset cursor, so a merge into a profile of a higher id, still ahead of a sending
tool's cursor, handed the customer out again under the survivor's id. Now the lowest id
survives (here and in `cdp.matching.decisions`), and a walk never meets a merged customer
twice.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cdp.errors import FieldError
from cdp.ids import new_id
from cdp.profiles.identity import IdentityKey
from cdp.stats import beyond_kept
from consent.policy import IdentityGuards

CAP_MESSAGE = "the profile holds the most identifiers of this kind the policy allows; not linked"
REFUSED_MESSAGE = (
    "belongs to another profile; the merge guards refused to merge them (queued for review)"
)


@dataclass(eq=False, slots=True)
class Group:
    """A profile as the batch makes it: an existing one, or one a record of the batch starts,
    with the groups merged into it."""

    age: tuple  # (0, id) for an existing profile, (1, record index) for a new one
    profile_id: uuid.UUID
    existing: list[uuid.UUID]  # the existing profiles in it, oldest first once merged
    counts: dict[str, int] = field(default_factory=dict)  # identifiers per kind
    ext_sources: set[str] = field(default_factory=set)  # sources of its external ids
    spent: Decimal = Decimal(0)  # the total_spent of its existing profiles
    first: int | None = None  # the record that started it (a new profile)
    into: Group | None = None  # the group it was merged into

    def root(self) -> Group:
        g = self
        while g.into is not None:
            g = g.into
        return g


@dataclass(slots=True)
class Step:
    """What one record did."""

    group: Group  # where it was stored (its root at the end of the batch is the profile)
    created: bool = False  # it started its group
    matched: list[str] = field(default_factory=list)  # kinds of identifiers it was found by
    anchor: uuid.UUID | None = None  # the identity it matched first (unmerge follows it)
    seen: list[bytes] = field(default_factory=list)  # its identifiers the profile held
    new: list[tuple[IdentityKey, uuid.UUID]] = field(default_factory=list)  # kept, with ids
    ignored: list[FieldError] = field(default_factory=list)
    absorbed: list[uuid.UUID] = field(default_factory=list)  # existing profiles it merged
    refused: tuple[list[Group], dict[str, Any]] | None = None  # a refused merge, and why


def refusal(found: list[Group], guards: IdentityGuards) -> dict[str, Any] | None:
    """Why merging `found` must wait for review, or None when it may go ahead."""
    limit = max(2, guards.max_profiles_per_merge)
    if len(found) > limit:
        return {"code": "too_many_profiles", "profiles": len(found), "limit": limit}
    seen: dict[str, int] = defaultdict(int)
    for g in found:
        for source in g.ext_sources:
            seen[source] += 1
    shared = sorted(s for s, n in seen.items() if n > 1)
    if shared:
        return {"code": "conflicting_external_ids", "sources": shared, "profiles": len(found)}
    totals: dict[str, int] = defaultdict(int)
    for g in found:
        for kind, n in g.counts.items():
            totals[kind] += n
    over = sorted(k for k, n in totals.items() if n > guards.max_identities_per_kind)
    if over:
        return {"code": "identity_cap", "kinds": over, "limit": guards.max_identities_per_kind}
    if beyond_kept(sum(g.spent for g in found)):
        return {"code": "totals_too_large", "profiles": len(found)}
    return None


def resolve(
    order: list[int],
    keys: list[list[IdentityKey]],
    existing: dict[bytes, tuple[uuid.UUID, uuid.UUID]],
    groups: dict[uuid.UUID, Group],
    guards: IdentityGuards,
    new_ids: Sequence[uuid.UUID],
) -> dict[int, Step]:
    """The step of each record in `order` (ascending indexes into `keys`); `new_ids[i]` is the
    id of the profile record i starts, if it starts one. `existing`: bidx ->
    (profile id, identity id) of identifiers already held; `groups`: a Group for each of those
    profiles, with what it holds (counts, external id sources, total spent) wherever a merge or
    a new identifier may need the guards."""
    group_of: dict[bytes, Group] = {bidx: groups[pid] for bidx, (pid, _) in existing.items()}
    identity_of: dict[bytes, uuid.UUID] = {bidx: iid for bidx, (_, iid) in existing.items()}
    steps: dict[int, Step] = {}
    for i in order:
        ks = keys[i]
        hits: list[Group] = []
        for k in ks:
            g = group_of.get(k.bidx)
            if g is not None and (g := g.root()) not in hits:
                hits.append(g)
        foreign: set[bytes] = set()
        if not hits:
            g = Group(age=(1, i), profile_id=new_ids[i], existing=[], first=i)
            step = Step(g, created=True)
        elif len(hits) == 1:
            g = hits[0]
            step = Step(g)
        else:
            found = sorted(hits, key=lambda x: x.age)
            reason = refusal(found, guards)
            if reason is not None:
                g = _own_group(ks, group_of, found)
                others = [x for x in found if x is not g]
                step = Step(g, refused=([g, *others], reason))
                foreign = {
                    k.bidx for k in ks if k.bidx in group_of and group_of[k.bidx].root() in others
                }
            else:
                g = found[0]
                step = Step(g)
                for other in found[1:]:
                    other.into = g
                    g.existing.extend(other.existing)
                    step.absorbed.extend(other.existing)
                    g.ext_sources |= other.ext_sources
                    g.spent += other.spent
                    for kind, n in other.counts.items():
                        g.counts[kind] = g.counts.get(kind, 0) + n
        for k in ks:
            if k.bidx in foreign:
                step.ignored.append(FieldError(k.kind, REFUSED_MESSAGE))
            elif k.bidx in group_of:  # held by g: every other holder was merged or is foreign
                step.seen.append(k.bidx)
                step.matched.append(k.kind)
                if step.anchor is None:
                    step.anchor = identity_of[k.bidx]
        for k in ks:
            if k.bidx in foreign or k.bidx in group_of:
                continue
            if g.counts.get(k.kind, 0) >= guards.max_identities_per_kind:
                step.ignored.append(FieldError(k.kind, CAP_MESSAGE))
                continue
            iid = new_id()
            group_of[k.bidx] = g
            identity_of[k.bidx] = iid
            g.counts[k.kind] = g.counts.get(k.kind, 0) + 1
            if k.kind == "external_id":
                g.ext_sources.add(k.source)
            step.new.append((k, iid))
        steps[i] = step
    return steps


def _own_group(ks: list[IdentityKey], group_of: dict[bytes, Group], found: list[Group]) -> Group:
    """Where a record whose merge is refused is stored: the profile its own (source, external
    id) names, when it names one, else the oldest it matched. A shop's record for its customer
    F4 that carries an email another profile holds is F4's record: its name must not overwrite
    the other customer's."""
    for k in ks:
        if k.kind == "external_id" and k.bidx in group_of:
            own = group_of[k.bidx].root()
            if own in found:
                return own
    return found[0]
