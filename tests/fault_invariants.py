"""What a user relies on after any failed write, checked on the whole database (tests/faults.py).

- the audit verification says ok (the chain, and consent_state and suppressions equal what the
  ledger gives);
- every active profile has its data key, and the key store its share: it reads back;
- every identity names an active profile; every merged profile names a profile that exists;
- stats and categories equal what the stored events give;
- `erased_done`: every erased profile has no data key, no identity and no share.
"""

from __future__ import annotations

import uuid
import weakref
from typing import Any

from sqlalchemy import select

from cdp.db.tables import (
    events,
    identities,
    profile_categories,
    profile_keys,
    profile_stats,
    profiles,
)
from cdp.key_store import share_id
from cdp.stats import recompute


async def _rows(p: Any, statement: Any) -> list:
    async with p.db.read() as conn:
        return list(await conn.execute(statement))


async def stats_snapshot(conn: Any) -> tuple[dict, set]:
    stats = {
        r.profile_id: (r.orders_count, r.total_spent, r.first_order_at, r.last_order_at)
        for r in await conn.execute(select(profile_stats))
        if r.orders_count or r.total_spent
    }
    cats = {tuple(r) for r in await conn.execute(select(profile_categories))}
    return stats, cats


async def stats_recomputed(p: Any, pids: list[uuid.UUID]) -> tuple[tuple, tuple]:
    """(stored, recomputed from the events), recomputed in a transaction rolled back."""
    async with p.db.engine.connect() as conn:
        tx = await conn.begin()
        try:
            stored = await stats_snapshot(conn)
            for pid in pids:
                await recompute(conn, pid, p.policy.stats_currency)
            again = await stats_snapshot(conn)
        finally:
            await tx.rollback()
    return stored, again


# what each platform's last check found sound, by profile: checked again only once it changed
_checked: weakref.WeakKeyDictionary[Any, dict[str, dict]] = weakref.WeakKeyDictionary()


async def violations(p: Any, client: Any, keys: Any, *, erased_done: bool = True) -> list[str]:
    found: list[str] = []
    checked = _checked.setdefault(p.keys, {"read": {}, "stats": {}})  # a platform: its keys
    r = await client.get("/v1/audit/verify", headers=keys["compliance"])
    if r.status_code != 200 or not r.json().get("ok"):
        found.append(f"audit verify: {r.status_code} {r.text[:300]}")
    pc = profiles.c
    rows = await _rows(p, select(pc.id, pc.status, pc.merged_into, pc.updated_at))
    status = {pid: (s, into) for pid, s, into, _ in rows}
    signature: dict[uuid.UUID, list] = {pid: [at] for pid, _, _, at in rows}
    keyed: dict[uuid.UUID, list[int]] = {}
    pk = profile_keys.c
    for pid, kid, wrapped in await _rows(p, select(pk.profile_id, pk.key_id, pk.wrapped)):
        keyed.setdefault(pid, []).append(kid)
        signature.setdefault(pid, []).append((kid, wrapped))
    idents: dict[uuid.UUID, set] = {}
    for iid, pid in await _rows(p, select(identities.c.id, identities.c.profile_id)):
        idents.setdefault(pid, set()).add(iid)
        if status.get(pid, ("missing",))[0] != "active":
            found.append(f"identity {iid} names a {status.get(pid, ('missing',))[0]} profile")
    active = sorted(pid for pid, (s, _) in status.items() if s == "active")
    store = p.keys.store
    shares = await store.get([share_id(pid, k) for pid, ks in keyed.items() for k in ks])
    for pid in active:
        if pid not in keyed:
            found.append(f"active profile {pid} without a data key")
            continue
        if share_id(pid, max(keyed[pid])) not in shares:
            found.append(f"active profile {pid} without its share in the key store")
        sign = (tuple(signature[pid]), frozenset(idents.get(pid, ())))
        if checked["read"].get(pid) == sign:
            continue
        p.keys.forget(pid)
        r = await client.get(f"/v1/profiles/{pid}", headers=keys["admin"])
        if r.status_code != 200:
            found.append(f"active profile {pid} reads {r.status_code}")
        else:
            checked["read"][pid] = sign
    for pid, (s, into) in status.items():
        if s == "merged" and into not in status:
            found.append(f"merged profile {pid} into a missing profile")
    changed = await _stats_changed(p, active, checked["stats"])
    stored, again = await stats_recomputed(p, sorted(changed))
    if stored != again:
        found.append(f"stats differ from the events: {stored} != {again}")
    elif not found:
        checked["stats"].update(changed)
    if erased_done:
        erased = [pid for pid, (s, _) in status.items() if s == "erased"]
        for pid in erased:
            if pid in keyed:
                found.append(f"erased profile {pid} still has a data key")
        left = await store.get(erased)
        for pid in left:
            found.append(f"erased profile {pid} still has its share in the key store")
    return found


async def _stats_changed(p: Any, active: list[uuid.UUID], checked: dict) -> dict:
    """The active profiles whose events, stats or categories changed since they were last
    found to agree, with what they hold now."""
    held: dict[uuid.UUID, list] = {pid: [] for pid in active}
    for pid, eid in await _rows(p, select(events.c.profile_id, events.c.id)):
        if pid in held:
            held[pid].append(eid)
    for row in await _rows(p, select(profile_stats)):
        if row[0] in held:
            held[row[0]].append(tuple(row))
    for pid, category in await _rows(p, select(profile_categories)):
        if pid in held:
            held[pid].append(category)
    now = {pid: frozenset(map(str, v)) for pid, v in held.items()}
    return {pid: v for pid, v in now.items() if checked.get(pid) != v}


async def assert_invariants(p: Any, client: Any, keys: Any, context: str, **kw: Any) -> None:
    found = await violations(p, client, keys, **kw)
    assert not found, f"{context}: " + "; ".join(found)
