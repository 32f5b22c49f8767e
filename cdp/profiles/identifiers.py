"""A request names a customer by exactly one identifier: profile_id, email, phone, or
source + external_id. This module parses it (400 naming the field) and finds the profile."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cdp.crypto.blind_index import BlindIndexer
from cdp.db.tables import identities, profiles
from cdp.errors import FieldError, InvalidInput
from cdp.ids import parse_uuid
from cdp.normalize import clean_text, normalise_country, normalise_email, parse_phone
from cdp.profiles.guards import junk_reason
from cdp.profiles.identity import lookup_bidx, resolve_profile_id, resolve_profile_ids
from consent.policy import Policy


@dataclass(frozen=True, slots=True)
class Identifier:
    kind: str  # profile_id | email | phone | external_id
    profile_id: uuid.UUID | None = None
    bidx: bytes | None = None
    value: str | None = None  # normalised, in memory only
    source: str | None = None
    # why the merge guards never link it (a placeholder, a phone given with an extension: a
    # shared line), or None. Such an identifier finds what holds it, but names nobody new: no
    # event or consent joins its holder or creates a customer holding it, as no record does
    unlinked: str | None = None


IDENTIFIERS = ("profile_id", "email", "phone", "external_id")


def parse_identifier(
    policy: Policy,
    indexer: BlindIndexer,
    *,
    profile_id: str | None = None,
    email: str | None = None,
    phone: str | None = None,
    source: str | None = None,
    external_id: str | None = None,
    country: str | None = None,
    accepted: tuple[str, ...] = IDENTIFIERS,
) -> Identifier:
    """`accepted`: the identifiers the caller's endpoint takes, which a 400 for none names
    (GET /v1/profiles takes no profile_id, and its 400 used to ask for one)."""
    given = [
        name
        for name, v in (
            ("profile_id", profile_id),
            ("email", email),
            ("phone", phone),
            ("external_id", external_id),
        )
        if v is not None and str(v).strip()
    ]
    if not given:
        raise InvalidInput(
            "name the customer by one identifier",
            [FieldError("email" if "email" in accepted else accepted[0], _required(accepted))],
        )
    if len(given) > 1:
        raise InvalidInput(
            "name the customer by one identifier only",
            [FieldError(name, "only one identifier may be given") for name in given[1:]],
        )
    kind = given[0]
    if kind == "profile_id":
        pid = parse_uuid(str(profile_id))
        if pid is None:
            raise InvalidInput.field("profile_id", "not a valid profile id")
        return Identifier("profile_id", profile_id=pid)
    guards = policy.identity
    if kind == "email":
        value = normalise_email(str(email))
        reason = junk_reason("email", value, guards)
        return Identifier("email", bidx=indexer.email(value), value=value, unlinked=reason)
    if kind == "phone":
        region = normalise_country(country) if country else policy.phone_region(None)
        number = parse_phone(str(phone), region)
        reason = junk_reason(
            "phone", number.e164, guards, national=number.national, extension=number.extension
        )
        return Identifier(
            "phone", bidx=indexer.phone(number.e164), value=number.e164, unlinked=reason
        )
    src = clean_text(source)
    if not src:
        raise InvalidInput.field("source", "required with external_id")
    ext = clean_text(external_id)
    assert ext is not None
    reason = junk_reason("external_id", ext, guards)
    return Identifier(
        "external_id", bidx=indexer.external_id(src, ext), value=ext, source=src, unlinked=reason
    )


def _required(accepted: tuple[str, ...]) -> str:
    names = [n if n != "external_id" else "source + external_id" for n in accepted]
    if len(names) == 1:
        return f"{names[0]} is required"
    return f"one of {', '.join(names)} is required"


async def find_profile(conn: AsyncConnection, ident: Identifier) -> uuid.UUID | None:
    """The surviving profile this identifier names, or None. Raises Gone for an erased one."""
    if ident.profile_id is not None:
        return await resolve_profile_id(conn, ident.profile_id)
    pid = (await lookup_bidx(conn, [ident.bidx])).get(ident.bidx)  # type: ignore[list-item]
    return None if pid is None else await resolve_profile_id(conn, pid)


async def profile_addresses(
    conn: AsyncConnection, profile_id: uuid.UUID
) -> list[tuple[str, bytes]]:
    """(kind, blind index) of the profile's emails and phones."""
    return (await profiles_addresses(conn, {profile_id})).get(profile_id, [])


async def profiles_addresses(
    conn: AsyncConnection, profile_ids: set[uuid.UUID]
) -> dict[uuid.UUID, list[tuple[str, bytes]]]:
    """`profile_addresses` for many profiles in one query per 500."""
    return await _identifiers(conn, profile_ids, ("email", "phone"))


async def profiles_held(
    conn: AsyncConnection, profile_ids: set[uuid.UUID]
) -> dict[uuid.UUID, list[tuple[str, bytes]]]:
    """(kind, blind index) of every identifier each profile holds, external ids included: a
    suppression of any of them concerns a channel addressed by the profile (push, messenger),
    as cdp.segments.audience reads it. An erasure suppresses the customer's external ids too, so
    a CRM that brings them back by its customer number alone does not make them contactable."""
    return await _identifiers(conn, profile_ids, None)


_ic = identities.c
# Statements built once: building one per call cost more than the driver's whole round trip.
# In the order the profile lists them (cdp.profiles.service), the same on both databases: the
# ledger entries a withdrawal of every address appends come in this order.
_HELD = (
    select(_ic.profile_id, _ic.kind, _ic.bidx)
    .where(_ic.profile_id.in_(bindparam("ids", expanding=True)))
    .order_by(_ic.created_at, _ic.id)
)
_HELD_OF_KINDS = _HELD.where(_ic.kind.in_(bindparam("kinds", expanding=True)))


async def _identifiers(
    conn: AsyncConnection, profile_ids: set[uuid.UUID], kinds: tuple[str, ...] | None
) -> dict[uuid.UUID, list[tuple[str, bytes]]]:
    out: dict[uuid.UUID, list[tuple[str, bytes]]] = {}
    ids = sorted(profile_ids)
    query, params = (_HELD, {}) if kinds is None else (_HELD_OF_KINDS, {"kinds": list(kinds)})
    for start in range(0, len(ids), 500):
        params["ids"] = ids[start : start + 500]
        for pid, kind, bidx in await conn.execute(query, params):
            out.setdefault(pid, []).append((kind, bidx))
    return out


async def find_profiles(
    conn: AsyncConnection, idents: list[Identifier]
) -> list[uuid.UUID | Exception | None]:
    """`find_profile` for many identifiers in two or three queries, not two per identifier.

    Each answer is the surviving profile, None (an address no profile holds), or the NotFound /
    Gone that `find_profile` would raise for that identifier alone."""
    held = await lookup_bidx(conn, sorted({i.bidx for i in idents if i.bidx is not None}))
    named = [i.profile_id if i.profile_id is not None else held.get(i.bidx or b"") for i in idents]
    survivors = await resolve_profile_ids(conn, {pid for pid in named if pid is not None})
    return [None if pid is None else survivors[pid] for pid in named]


async def profiles_in_status(
    conn: AsyncConnection, profile_ids: set[uuid.UUID], status: str
) -> set[uuid.UUID]:
    """Which of these profiles have this status ("active", "erased", "merged"), one query per
    500."""
    ids = sorted(profile_ids)
    found: set[uuid.UUID] = set()
    for start in range(0, len(ids), 500):
        query = select(profiles.c.id).where(
            profiles.c.id.in_(ids[start : start + 500]), profiles.c.status == status
        )
        found.update(pid for (pid,) in await conn.execute(query))
    return found
