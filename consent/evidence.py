"""Consent evidence that stays with the customer it is about (consent_evidence_copies).

A ledger entry's evidence is encrypted under the data key of the profile that held the address
when it was recorded. While two customers are merged that is the merged profile; when a wrong
merge is undone, the address goes back to the other customer, but its evidence stays under the
first customer's key, and the first customer's erasure would destroy the other customer's proof
of consent. `keep_for` (called by the unmerge) stores a copy of such evidence under the data key
of the customer the address went back to; the ledger entry itself never changes, so its hash
still verifies. `read` decrypts an entry's evidence from the entry, else from a copy; a copy
goes with its owner's erasure (`forget`), as its key does.

An entry recorded while the merge stood that reached an address through the merged profile
(`consent_ledger.via_profile`: a withdrawal from either customer's manage link, a grant naming
a profile id) may be the other customer's act: its copy keeps only the proof of what was agreed
to or withdrawn (`PROOF_FIELDS`), not who did it from where (IP address, browser, page), which
may be the other customer's personal data and would outlive her erasure under this key.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.fields import CryptoError, FieldCipher
from cdp.db.upsert import insert_ignore
from cdp.ids import utcnow
from cdp.keyring import SYSTEM_OWNER
from consent.ledger import owner_ciphers, read_evidence
from consent.tables import consent_evidence_copies, consent_ledger

if TYPE_CHECKING:
    from cdp.platform import Platform

_PLACE = "consent_evidence_copies.evidence"
# What a copy of an entry that reached the address through a merged profile keeps.
PROOF_FIELDS = ("wording_id", "method", "advertiser", "text")


def proof_only(evidence: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in evidence.items() if k in PROOF_FIELDS}


def _doubtful(row: Any, merged_since: int) -> bool:
    """Recorded while the merge stood, and reached its address through the merged profile."""
    return bool(row.via_profile) and row.seq > merged_since


def _place(seq: int) -> str:
    """A copy is bound to its entry: moved to another seq it fails authentication."""
    return f"{_PLACE}.{seq}"


async def keep_for(
    conn: AsyncConnection,
    p: Platform,
    addresses: Sequence[bytes],
    cipher: FieldCipher,
    merged_since: int,
) -> int:
    """Copy the evidence of every entry on these addresses that is under another key than
    `cipher`'s (the customer they now belong to) and can still be read; of an entry recorded
    after `merged_since` (the ledger's head at the undone merge) that reached its address
    through the merged profile, only its proof fields. Returns how many."""
    led = consent_ledger.c
    rows = []
    for start in range(0, len(addresses), 500):
        rows += (
            await conn.execute(
                select(
                    led.seq,
                    led.evidence,
                    led.evidence_owner,
                    led.evidence_key_id,
                    led.via_profile,
                ).where(
                    led.address_bidx.in_(addresses[start : start + 500]),
                    led.evidence.is_not(None),
                    led.evidence_owner.is_not(None),
                    led.evidence_owner.not_in((cipher.owner, SYSTEM_OWNER)),
                )
            )
        ).all()
    if not rows:
        return 0
    ciphers = await owner_ciphers(conn, p, {r.evidence_owner for r in rows})
    now = utcnow()
    copies = []
    for r in rows:
        evidence, readable = read_evidence(r, ciphers)
        if evidence is None or not readable:
            continue
        if _doubtful(r, merged_since):
            evidence = proof_only(evidence)
        blob = cipher.encrypt(_place(r.seq), msgspec.json.encode(evidence))
        copies.append(
            {
                "seq": r.seq,
                "owner": cipher.owner,
                "key_id": cipher.key_id,
                "evidence": blob,
                "created_at": now,
            }
        )
    if copies:
        await conn.execute(insert_ignore(conn, consent_evidence_copies), copies)
    return len(copies)


async def rekey(
    conn: AsyncConnection,
    holder: uuid.UUID,
    addresses: Sequence[bytes],
    old: FieldCipher,
    new: FieldCipher,
    merged_since: int,
) -> int:
    """The holder of an undone merge has a new data key (cdp.profiles.rekey): its copies are
    encrypted again under it, and the entries recorded under its old key that are its own (on
    an address it holds, or on the profile itself before the merge, `merged_since`: after it,
    a sender naming the other customer's profile id reached the holder) get a copy under it.
    The other entries under the old key are about the customer the merge gave back, who has a
    copy of those on her addresses (`keep_for`): the holder's new key does not read them. An
    entry on its address recorded after `merged_since` that reached it through the merged
    profile is copied with its proof fields only. Returns the entries copied."""
    c = consent_evidence_copies.c
    mine = await conn.execute(
        select(c.seq, c.evidence).where(c.owner == old.owner, c.key_id == old.key_id)
    )
    again = [
        {"s": seq, "e": new.encrypt(_place(seq), old.decrypt_bytes(_place(seq), blob))}
        for seq, blob in mine
    ]
    if again:
        await conn.execute(
            update(consent_evidence_copies)
            .where(c.seq == bindparam("s"), c.owner == old.owner)
            .values(evidence=bindparam("e"), key_id=new.key_id),
            again,
        )
    led = consent_ledger.c
    under_old = (
        led.evidence.is_not(None),
        led.evidence_owner == old.owner,
        led.evidence_key_id == old.key_id,
    )
    columns = (led.seq, led.evidence, led.via_profile)
    rows = (
        await conn.execute(
            select(*columns).where(
                *under_old,
                led.address_bidx.is_(None),
                led.profile_id == holder,
                led.seq <= merged_since,
            )
        )
    ).all()
    for start in range(0, len(addresses), 500):
        rows += (
            await conn.execute(
                select(*columns).where(
                    *under_old, led.address_bidx.in_(addresses[start : start + 500])
                )
            )
        ).all()
    now = utcnow()
    copies = []
    for r in rows:
        plain = old.decrypt_bytes("consent_ledger.evidence", r.evidence)
        if _doubtful(r, merged_since):
            plain = msgspec.json.encode(proof_only(msgspec.json.decode(plain)))
        copies.append(
            {
                "seq": r.seq,
                "owner": new.owner,
                "key_id": new.key_id,
                "evidence": new.encrypt(_place(r.seq), plain),
                "created_at": now,
            }
        )
    if copies:
        await conn.execute(insert_ignore(conn, consent_evidence_copies), copies)
    return len(copies)


async def read(conn: AsyncConnection, p: Platform, rows: Sequence[Any]) -> list[tuple[Any, bool]]:
    """(evidence, readable) of each ledger row: from the entry, else from a copy of it."""
    ciphers = await owner_ciphers(conn, p, {r.evidence_owner for r in rows if r.evidence_owner})
    out = [read_evidence(r, ciphers) for r in rows]
    lost = [r.seq for r, (_, readable) in zip(rows, out, strict=True) if not readable]
    if not lost:
        return out
    c = consent_evidence_copies.c
    copies: dict[int, list[Any]] = {}
    for start in range(0, len(lost), 500):
        for row in await conn.execute(
            select(c.seq, c.owner, c.key_id, c.evidence).where(c.seq.in_(lost[start : start + 500]))
        ):
            copies.setdefault(row.seq, []).append(row)
    owners = await owner_ciphers(conn, p, {r.owner for rs in copies.values() for r in rs})
    for i, r in enumerate(rows):
        for copy in copies.get(r.seq, ()):
            found = _open(copy, owners)
            if found is not None:
                out[i] = (found, True)
                break
    return out


def _open(copy: Any, ciphers: dict[str, FieldCipher]) -> Any:
    cipher = ciphers.get(copy.owner)
    if cipher is None or cipher.key_id != copy.key_id:
        return None
    try:
        return msgspec.json.decode(cipher.decrypt_bytes(_place(copy.seq), copy.evidence))
    except (CryptoError, msgspec.DecodeError):
        return None


async def forget(conn: AsyncConnection, profile_ids: Sequence[uuid.UUID]) -> None:
    """An erasure: the copies under the erased profiles' keys go with the keys."""
    owners = [str(pid) for pid in profile_ids]
    for start in range(0, len(owners), 500):
        await conn.execute(
            delete(consent_evidence_copies).where(
                consent_evidence_copies.c.owner.in_(owners[start : start + 500])
            )
        )
