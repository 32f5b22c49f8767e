"""Deterministic identity resolution and upsert, batch first.

A batch of normalised records is resolved in one pass: one lookup of every blind index, a
union-find over records and the profiles they hit, then bulk writes. Records that share an
identifier join one profile; a record that links several profiles merges them into the oldest.
The single-record API is a batch of one, so there is one code path.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.fields import FieldCipher
from cdp.db.bulk import bulk_insert
from cdp.db.tables import ENCRYPTED_PROFILE_FIELDS, identities, profile_keys, profile_sources
from cdp.db.tables import profiles as profiles_t
from cdp.db.upsert import insert_ignore
from cdp.errors import FieldError
from cdp.ids import new_id, utcnow
from cdp.platform import Platform
from cdp.profiles.identity import IdentityKey, lookup_bidx, record_keys
from cdp.profiles.merge import merge_profiles
from cdp.profiles.records import Record


@dataclass(slots=True)
class Outcome:
    profile_id: uuid.UUID
    created: bool
    matched_on: list[str]
    merged_profile_ids: list[uuid.UUID]
    ignored: list[FieldError]
    keys: list[IdentityKey]


@dataclass(slots=True)
class _Working:
    """A profile being written by this batch."""

    id: uuid.UUID
    is_new: bool
    cipher: FieldCipher
    created_at: datetime
    jurisdiction: str
    country: str | None
    city: str | None
    traits: dict[str, Any]
    enc: dict[str, bytes | None]
    touched: bool = False
    known_bidx: set[bytes] = field(default_factory=set)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


async def ingest(
    conn: AsyncConnection,
    p: Platform,
    records: list[Record],
    actor: str,
    keys: list[list[IdentityKey]] | None = None,
) -> list[Outcome]:
    """Resolve and upsert `records` inside the caller's write transaction."""
    now = utcnow()
    if keys is None:
        keys = [record_keys(p.keys.indexer, r) for r in records]
    existing = await lookup_bidx(conn, list({k.bidx for ks in keys for k in ks}))

    uf = _UnionFind()
    for i, ks in enumerate(keys):
        uf.find(("r", i))
        for k in ks:
            uf.union(("r", i), ("k", k.bidx))
            if k.bidx in existing:
                uf.union(("r", i), ("p", existing[k.bidx]))

    components: dict[Any, list[int]] = {}
    comp_profiles: dict[Any, set[uuid.UUID]] = {}
    for i in range(len(records)):
        components.setdefault(uf.find(("r", i)), []).append(i)
    for pid in set(existing.values()):
        comp_profiles.setdefault(uf.find(("p", pid)), set()).add(pid)

    # Load every existing profile touched by this batch.
    hit = sorted(set(existing.values()))
    rows: dict[uuid.UUID, Any] = {}
    for start in range(0, len(hit), 500):
        result = await conn.execute(
            select(profiles_t).where(profiles_t.c.id.in_(hit[start : start + 500]))
        )
        rows.update({r.id: r for r in result})
    ciphers = await p.keys.ciphers(conn, hit)

    outcomes: list[Outcome | None] = [None] * len(records)
    working: dict[uuid.UUID, _Working] = {}
    new_keys: list[dict] = []
    new_identities: list[dict] = []
    seen_identities: list[dict] = []
    sources: set[tuple[uuid.UUID, str]] = set()

    for root, members in sorted(components.items(), key=lambda kv: kv[1][0]):
        found = sorted(comp_profiles.get(root, ()), key=lambda pid: (rows[pid].created_at, pid))
        merged_ids: list[uuid.UUID] = []
        if found:
            survivor_id = found[0]
            for absorbed in found[1:]:
                matched = sorted(
                    {k.kind for i in members for k in keys[i] if existing.get(k.bidx) == absorbed}
                )
                await merge_profiles(
                    conn,
                    p,
                    survivor_id,
                    absorbed,
                    matched_on=matched,
                    provenance="deterministic",
                    source=records[members[0]].source,
                    actor=actor,
                )
                merged_ids.append(absorbed)
            if merged_ids:  # the survivor's row changed: reload it
                r = (
                    await conn.execute(select(profiles_t).where(profiles_t.c.id == survivor_id))
                ).one()
                rows[survivor_id] = r
                ciphers.update(await p.keys.ciphers(conn, [survivor_id]))
            r = rows[survivor_id]
            w = _Working(
                id=survivor_id,
                is_new=False,
                cipher=ciphers[survivor_id],
                created_at=r.created_at,
                jurisdiction=r.jurisdiction,
                country=r.country,
                city=r.city,
                traits=dict(r.traits or {}),
                enc={f: getattr(r, f) for f in ENCRYPTED_PROFILE_FIELDS},
            )
            w.known_bidx = {b for b, pid in existing.items() if pid in found}
        else:
            pid = new_id()
            cipher, key_row = p.keys.new_profile_key(pid)
            new_keys.append(key_row)
            first = records[members[0]]
            w = _Working(
                id=pid,
                is_new=True,
                cipher=cipher,
                created_at=now,
                jurisdiction=first.jurisdiction or p.policy.default_jurisdiction,
                country=None,
                city=None,
                traits={},
                enc=dict.fromkeys(ENCRYPTED_PROFILE_FIELDS),
            )
        working[w.id] = w

        for n, i in enumerate(members):
            rec = records[i]
            matched = [k.kind for k in keys[i] if k.bidx in w.known_bidx]
            for k in keys[i]:
                if k.bidx in w.known_bidx:
                    seen_identities.append({"b": k.bidx, "t": now})
                    continue
                w.known_bidx.add(k.bidx)
                new_identities.append(
                    {
                        "id": new_id(),
                        "profile_id": w.id,
                        "kind": k.kind,
                        "bidx": k.bidx,
                        "value": w.cipher.encrypt("identities.value", k.value),
                        "source": k.source,
                        "created_at": now,
                        "last_seen_at": now,
                        "confirmed_at": None,
                    }
                )
            _apply(w, rec)
            sources.add((w.id, rec.source))
            outcomes[i] = Outcome(
                profile_id=w.id,
                created=w.is_new and n == 0,
                matched_on=matched,
                merged_profile_ids=merged_ids if n == 0 else [],
                ignored=rec.ignored,
                keys=keys[i],
            )

    await _write(conn, working, new_keys, new_identities, seen_identities, sources, now)
    return [o for o in outcomes if o is not None]


def _apply(w: _Working, rec: Record) -> None:
    """Latest non-empty value wins; traits merge key by key."""
    for name, value in rec.fields.items():
        w.enc[name] = w.cipher.encrypt(f"profiles.{name}", value)
    if rec.jurisdiction:
        w.jurisdiction = rec.jurisdiction
    if rec.country:
        w.country = rec.country
    if rec.city:
        w.city = rec.city
    if rec.traits:
        w.traits.update(rec.traits)
    w.touched = True


async def _write(
    conn: AsyncConnection,
    working: dict[uuid.UUID, _Working],
    new_keys: list[dict],
    new_identities: list[dict],
    seen_identities: list[dict],
    sources: set[tuple[uuid.UUID, str]],
    now: datetime,
) -> None:
    await bulk_insert(conn, profile_keys, new_keys)
    created = [w for w in working.values() if w.is_new]
    if created:
        await bulk_insert(
            conn,
            profiles_t,
            [
                {
                    "id": w.id,
                    "status": "active",
                    "merged_into": None,
                    "jurisdiction": w.jurisdiction,
                    "country": w.country,
                    "city": w.city,
                    "traits": w.traits,
                    "key_id": w.cipher.key_id,
                    **w.enc,
                    "created_at": w.created_at,
                    "updated_at": now,
                }
                for w in created
            ],
        )
    changed = [w for w in working.values() if not w.is_new and w.touched]
    if changed:
        stmt = (
            update(profiles_t)
            .where(profiles_t.c.id == bindparam("pid"))
            .values(
                jurisdiction=bindparam("j"),
                country=bindparam("c"),
                city=bindparam("ci"),
                traits=bindparam("tr"),
                updated_at=bindparam("u"),
                **{f: bindparam(f"e_{f}") for f in ENCRYPTED_PROFILE_FIELDS},
            )
        )
        await conn.execute(
            stmt,
            [
                {
                    "pid": w.id,
                    "j": w.jurisdiction,
                    "c": w.country,
                    "ci": w.city,
                    "tr": w.traits,
                    "u": now,
                    **{f"e_{f}": w.enc[f] for f in ENCRYPTED_PROFILE_FIELDS},
                }
                for w in changed
            ],
        )
    await bulk_insert(conn, identities, new_identities)
    if seen_identities:
        await conn.execute(
            update(identities)
            .where(identities.c.bidx == bindparam("b"))
            .values(last_seen_at=bindparam("t")),
            seen_identities,
        )
    if sources:
        await conn.execute(
            insert_ignore(conn, profile_sources),
            [{"profile_id": pid, "source": s, "first_seen_at": now} for pid, s in sources],
        )
