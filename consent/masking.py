"""How a customer's own address is shown on the pages their links open (the preference centre,
the unsubscribe page): enough to tell which of their addresses it is, not enough to learn it
from a forwarded message."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.db.tables import identities
from cdp.platform import Platform


def mask_email(value: str) -> str:
    local, at, domain = value.partition("@")
    return f"{local[:1]}***@{domain}" if at else "***"


def mask_phone(value: str) -> str:
    digits = value.lstrip("+")
    if len(digits) <= 4:
        return "***"
    plus = "+" if value.startswith("+") else ""
    return plus + digits[:1] + "*" * (len(digits) - 3) + digits[-2:]


def mask(kind: str, value: str | None) -> str:
    if not value:
        return "***"
    return mask_email(value) if kind == "email" else mask_phone(value)


async def masked_address(conn: AsyncConnection, p: Platform, kind: str, bidx: bytes) -> str | None:
    """The address of this kind and blind index, masked, if a standing customer holds it (the
    link acts for whoever holds it now); None for a profile link (push, messenger), an address
    no one holds (erased) or a key destroyed since the read began."""
    if kind not in ("email", "phone"):
        return None
    row = (
        await conn.execute(
            select(identities.c.profile_id, identities.c.value).where(
                identities.c.kind == kind, identities.c.bidx == bidx
            )
        )
    ).first()
    if row is None:
        return None
    owner: uuid.UUID = row.profile_id
    cipher = (await p.keys.ciphers(conn, [owner], fresh=True)).get(owner)
    return mask(kind, cipher.decrypt("identities.value", row.value)) if cipher else None
