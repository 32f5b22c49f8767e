"""API keys: random secrets shown once, stored as SHA-256 (they carry 256 bits of entropy, so a
slow password hash adds nothing), each with one role."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from cdp.db.engine import Database
from cdp.db.tables import api_keys
from cdp.errors import Conflict, InvalidInput, NotFound
from cdp.ids import new_id, utcnow

ROLES = ("admin", "ingest", "marketing", "compliance")
PREFIX = "cdp_"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


async def create_key(db: Database, name: str, role: str) -> str:
    if role not in ROLES:
        raise InvalidInput.field("role", f"must be one of {', '.join(ROLES)}")
    if not name or len(name) > 64:
        raise InvalidInput.field("name", "1 to 64 characters")
    key = PREFIX + secrets.token_urlsafe(32)
    try:
        async with db.write() as conn:
            await conn.execute(
                insert(api_keys).values(
                    id=new_id(),
                    name=name,
                    role=role,
                    key_hash=hash_key(key),
                    prefix=key[:10],
                    created_at=utcnow(),
                )
            )
    except IntegrityError as exc:
        raise Conflict("a key with this name exists") from exc
    return key


async def list_keys(db: Database) -> list[tuple[str, str, str, datetime, datetime | None]]:
    async with db.read() as conn:
        rows = await conn.execute(
            select(
                api_keys.c.name,
                api_keys.c.role,
                api_keys.c.prefix,
                api_keys.c.created_at,
                api_keys.c.revoked_at,
            ).order_by(api_keys.c.created_at)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def revoke_key(db: Database, name: str) -> None:
    async with db.write() as conn:
        result = await conn.execute(
            update(api_keys)
            .where(api_keys.c.name == name, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        if result.rowcount == 0:
            raise NotFound("no active key with this name")
    forget_cached_keys()


# Successful look-ups are remembered briefly so a request does not pay a database round trip
# for its key; a revocation (possibly from another process) takes effect within AUTH_TTL.
AUTH_TTL = 5.0
_auth_cache: dict[bytes, tuple[float, Principal]] = {}
_lookups: dict[bytes, asyncio.Future[Principal | None]] = {}
_generation = [0]  # bumped by forget_cached_keys


async def authenticate(db: Database, key: str) -> Principal | None:
    if not key.startswith(PREFIX) or len(key) > 200:
        return None
    digest = hash_key(key)
    hit = _auth_cache.get(digest)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    # One lookup per key at a time: when a busy key's entry expires, the requests that arrive
    # meanwhile wait for that lookup instead of each reading the database.
    pending = _lookups.get(digest)
    if pending is None:
        pending = asyncio.ensure_future(_lookup(db, digest))
        _lookups[digest] = pending
        pending.add_done_callback(lambda _: _lookups.pop(digest, None))
    return await asyncio.shield(pending)


async def _lookup(db: Database, digest: bytes) -> Principal | None:
    generation = _generation[0]
    async with db.read() as conn:
        row = (
            await conn.execute(
                select(api_keys.c.name, api_keys.c.role).where(
                    api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)
                )
            )
        ).first()
    if row is None:
        _auth_cache.pop(digest, None)
        return None
    principal = Principal(row.name, row.role)
    if len(_auth_cache) > 10_000:
        _auth_cache.clear()
    if generation != _generation[0]:  # a revocation ran meanwhile: do not remember this read
        return principal
    _auth_cache[digest] = (time.monotonic() + AUTH_TTL, principal)
    return principal


def forget_cached_keys() -> None:
    _generation[0] += 1
    _auth_cache.clear()
