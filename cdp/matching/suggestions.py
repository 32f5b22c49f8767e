"""Probabilistic matching that only proposes: `cdp match` and the suggestions it stores.

The active profiles are decrypted in memory, blocked into candidate pairs, scored, and the pairs
at or above the minimum score are stored as open suggestions (ids, score and per-field
similarities: never values). A pair already suggested (whatever its status) is not suggested
again, so a rejected pair stays rejected, also once either customer was merged into a third
profile (the pair is then asked about under that profile's id). Accepting a suggestion
merges the pair with provenance "reviewed"; rejecting it closes it. Nothing here merges by itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.bulk import bulk_insert
from cdp.db.engine import lock_keys
from cdp.db.tables import ENCRYPTED_PROFILE_FIELDS, profiles
from cdp.errors import Conflict, InvalidInput, NotFound
from cdp.ids import new_id, parse_uuid, utcnow
from cdp.matching import scoring
from cdp.matching.blocking import iter_candidate_pairs
from cdp.matching.decisions import Merged, merge_reviewed
from cdp.matching.features import Person, person
from cdp.matching.tables import match_suggestions
from cdp.platform import Platform
from cdp.profiles.identifiers import profiles_in_status
from cdp.profiles.locks import lock_profiles

STATUSES = ("open", "accepted", "rejected", "stale")
_CHUNK = 2000


@dataclass(frozen=True, slots=True)
class Match:
    a: uuid.UUID
    b: uuid.UUID
    score: float
    reasons: dict[str, Any]


@dataclass(slots=True)
class MatchRun:
    profiles: int = 0
    candidates: int = 0
    matches: int = 0
    stored: int = 0
    seconds: float = 0.0


def check_min_score(value: float | None) -> float:
    if value is None:
        return scoring.THRESHOLD
    if not 0.0 <= value <= 1.0:
        raise InvalidInput.field("min_score", "must be between 0 and 1")
    return value


async def load_people(p: Platform) -> list[Person]:
    """Every active profile, decrypted in memory (in pages; nothing is written)."""
    people: list[Person] = []
    cols = [profiles.c.id, profiles.c.city, *(profiles.c[f] for f in ENCRYPTED_PROFILE_FIELDS)]
    after: uuid.UUID | None = None
    while True:
        async with p.db.read() as conn:
            query = select(*cols).where(profiles.c.status == "active")
            if after is not None:
                query = query.where(profiles.c.id > after)
            rows = (await conn.execute(query.order_by(profiles.c.id).limit(_CHUNK))).all()
            ciphers = await p.keys.ciphers(conn, [r.id for r in rows])
        for r in rows:
            c = ciphers.get(r.id)
            if c is None:
                continue
            plain = {f: c.decrypt(f"profiles.{f}", getattr(r, f)) for f in ENCRYPTED_PROFILE_FIELDS}
            people.append(person(r.id, city=r.city, **plain))
        if len(rows) < _CHUNK:
            return people
        after = rows[-1].id


def find_matches(
    people: list[Person], min_score: float, pairs: Iterable[tuple[int, int]] | None = None
) -> list[Match]:
    """Score candidate pairs (pure: no database); the matches at or above `min_score`."""
    if pairs is None:
        pairs = iter_candidate_pairs(people)
    out: list[Match] = []
    for i, j in pairs:
        x, y = people[i], people[j]
        sims, swapped = scoring.similarities(x, y)
        if scoring.household(sims):
            continue
        s = scoring.score(sims)
        if s >= min_score:
            a, b = (x.id, y.id) if x.id < y.id else (y.id, x.id)
            out.append(Match(a, b, round(s, 4), scoring.reasons(sims, swapped)))
    return out


async def decided_pairs(conn: AsyncConnection) -> set[tuple[uuid.UUID, uuid.UUID]]:
    """The pairs a reviewer has decided, named by the profiles that hold them now.

    A rejected pair whose customer was merged into a third profile since is the same two
    people: asked about again, under the surviving profile's id, it came back after every
    rejection of it. (An accepted pair is one profile now, never a candidate.)"""
    sg = match_suggestions.c
    pa, pb = profiles.alias("pa"), profiles.alias("pb")
    rows = await conn.execute(
        select(
            func.coalesce(pa.c.merged_into, sg.profile_a),
            func.coalesce(pb.c.merged_into, sg.profile_b),
        )
        .select_from(
            match_suggestions.outerjoin(pa, pa.c.id == sg.profile_a).outerjoin(
                pb, pb.c.id == sg.profile_b
            )
        )
        .where(sg.status == "rejected")
    )
    return {(a, b) if a < b else (b, a) for a, b in rows}


async def store_suggestions(p: Platform, matches: list[Match]) -> int:
    """Store the matches not suggested before, nor rejected under the ids of profiles merged
    since; returns how many were stored.

    A stale suggestion (one of the pair was merged away, or split by an unmerge, before
    anyone decided; cdp.matching.stale) whose pair is
    back and matches again, its merge undone, is asked again: it is stored anew, with a new id
    (so it comes after any cursor handed out meanwhile) and this run's score."""
    if not matches:
        return 0
    now = utcnow()
    sg = match_suggestions.c
    async with p.db.write() as conn:
        # still active now: one erased or merged away while the run scored is left out. Under
        # their locks (cdp.profiles.locks): a merge or an erasure committing meanwhile set
        # aside or deleted the suggestions it saw, before these were stored
        named = {pid for m in matches for pid in (m.a, m.b)}
        await lock_profiles(conn, named)
        active = await profiles_in_status(conn, named, "active")
        known, stale = set(), []
        for sid, a, b, status in await conn.execute(
            select(sg.id, sg.profile_a, sg.profile_b, sg.status)
        ):
            if status == "stale":
                stale.append((sid, (a, b)))
            else:
                known.add((a, b))
        known |= await decided_pairs(conn)
        matches = [m for m in matches if m.a in active and m.b in active]
        matched = {(m.a, m.b) for m in matches}
        back = [sid for sid, pair in stale if pair in matched and pair not in known]
        for start in range(0, len(back), 500):
            await conn.execute(
                delete(match_suggestions).where(sg.id.in_(back[start : start + 500]))
            )
        rows = [
            {
                "id": new_id(),
                "profile_a": m.a,
                "profile_b": m.b,
                "score": m.score,
                "reasons": m.reasons,
                "status": "open",
                "created_at": now,
            }
            for m in sorted(matches, key=lambda m: -m.score)
            if (m.a, m.b) not in known
        ]
        for start in range(0, len(rows), 1000):
            await bulk_insert(conn, match_suggestions, rows[start : start + 1000])
    return len(rows)


async def run_matching(p: Platform, min_score: float | None = None) -> MatchRun:
    threshold = check_min_score(min_score)
    started = time.perf_counter()
    run = MatchRun()
    people = await load_people(p)
    scored = [0]

    def counted() -> Iterator[tuple[int, int]]:
        for pair in iter_candidate_pairs(people):
            scored[0] += 1
            yield pair

    matches = find_matches(people, threshold, counted())
    run.profiles, run.candidates, run.matches = len(people), scored[0], len(matches)
    run.stored = await store_suggestions(p, matches)
    run.seconds = time.perf_counter() - started
    return run


def suggestion_body(row: Any) -> dict[str, Any]:
    return {
        "suggestion_id": str(row.id),
        "profile_ids": [str(row.profile_a), str(row.profile_b)],
        "score": row.score,
        "reasons": row.reasons,
        "status": row.status,
        "created_at": row.created_at,
        "decided_at": row.decided_at,
        "decided_by": row.decided_by,  # the API key's name
    }


async def _open(conn: AsyncConnection, suggestion_id: str | uuid.UUID) -> Any:
    sid = suggestion_id if isinstance(suggestion_id, uuid.UUID) else parse_uuid(suggestion_id)
    row = None
    if sid is not None:
        await lock_keys(conn, [f"suggestion|{sid}"])
        row = (
            await conn.execute(select(match_suggestions).where(match_suggestions.c.id == sid))
        ).first()
    if row is None:
        raise NotFound("no match suggestion with this id")
    if row.status != "open":
        raise Conflict(f"this suggestion is already {row.status}")
    return row


async def accept(p: Platform, suggestion_id: str, actor: str) -> tuple[Any, Merged]:
    async with p.db.write() as conn:
        row = await _open(conn, suggestion_id)
        matched = sorted(
            k
            for k, v in row.reasons.items()
            if k in scoring.FIELDS and isinstance(v, float | int) and v >= 0.85
        )
        merged = await merge_reviewed(
            conn,
            p,
            [row.profile_a, row.profile_b],
            matched_on=matched,
            source=f"suggestion:{row.id}",
            actor=actor,
            # read again under the profiles' locks: a merge of one of the pair that committed
            # since it was read above set it aside (stale), and the accept merged the other
            # with whoever that one was merged into
            still_open=lambda: _open(conn, row.id),
        )
        await _decide(conn, row.id, "accepted", actor)
        row = (
            await conn.execute(select(match_suggestions).where(match_suggestions.c.id == row.id))
        ).one()
    return row, merged


async def reject(p: Platform, suggestion_id: str, actor: str) -> Any:
    async with p.db.write() as conn:
        row = await _open(conn, suggestion_id)
        await _decide(conn, row.id, "rejected", actor)
        return (
            await conn.execute(select(match_suggestions).where(match_suggestions.c.id == row.id))
        ).one()


async def _decide(conn: AsyncConnection, sid: uuid.UUID, status: str, actor: str) -> None:
    await conn.execute(
        update(match_suggestions)
        .where(match_suggestions.c.id == sid)
        .values(status=status, decided_at=utcnow(), decided_by=actor)
    )
