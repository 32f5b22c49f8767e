"""Request bodies of the consent API (msgspec)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
Short = Annotated[str, msgspec.Meta(max_length=200)]
Name64 = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class EvidenceIn(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    wording_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None
    method: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None = None
    ip: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    user_agent: Annotated[str, msgspec.Meta(max_length=1000)] | None = None
    page_url: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
    advertiser: Short | None = None
    text: Annotated[str, msgspec.Meta(max_length=10000)] | None = None


class ConsentItemIn(msgspec.Struct, forbid_unknown_fields=True):
    """A consent carried inside a profile record: it concerns the record's own addresses."""

    purpose: Name64
    channel: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
    status: Literal["granted", "withdrawn"]
    source: Name64 | None = None
    occurred_at: AwareDatetime | None = None
    evidence: EvidenceIn | None = None


class ConsentIn(msgspec.Struct, forbid_unknown_fields=True):
    """POST /v1/consents: one consent event for a customer named by one identifier.

    Consent to email, sms and phone belongs to the address: a grant naming an email or phone is
    for that address alone, and one naming an address of the other kind than the channel's (an
    email granting sms) is a 400 on `channel`. Push and messenger reach the profile that holds
    the address named. A grant naming the profile (or an external id), and any withdrawal not
    naming an address of the channel's kind, concern every address the profile has on it."""

    purpose: Name64
    channel: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
    status: Literal["granted", "withdrawn"]
    source: Name64
    occurred_at: AwareDatetime | None = None
    evidence: EvidenceIn | None = None
    profile_id: str | None = None
    email: Short | None = None
    phone: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    external_id: Short | None = None
    id_source: Name64 | None = None  # the source of external_id, when it differs from `source`
    country: Annotated[str, msgspec.Meta(max_length=2)] | None = None
