"""Request bodies of the profile and event API (msgspec)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Annotated, Any

import msgspec

from consent.schemas import AwareDatetime, ConsentItemIn, Name64, Short

Text = Annotated[str, msgspec.Meta(max_length=200)]
# Traits are stored in plain text, in every profile's row, for segments to filter on: a value is
# a label (a tier, a store, a score), not a document. 1,000 characters holds any label and keeps
# a client from filling a row (and every backup) with a megabyte per customer.
TRAIT_TEXT_MAX = 1000
TraitValue = Annotated[str, msgspec.Meta(max_length=TRAIT_TEXT_MAX)] | int | float | bool | None


class ProfileIn(msgspec.Struct, forbid_unknown_fields=True):
    source: Name64
    external_id: Text | None = None
    email: Text | None = None
    phone: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    first_name: Text | None = None
    last_name: Text | None = None
    birth_date: date | None = None
    postal_address: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    postcode: Annotated[str, msgspec.Meta(max_length=20)] | None = None
    city: Annotated[str, msgspec.Meta(max_length=120)] | None = None  # profiles.city
    country: Annotated[str, msgspec.Meta(max_length=2)] | None = None
    jurisdiction: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    traits: Annotated[dict[str, TraitValue], msgspec.Meta(max_length=200)] = {}
    consents: Annotated[list[ConsentItemIn], msgspec.Meta(max_length=50)] = []


class BatchIn(msgspec.Struct, forbid_unknown_fields=True):
    # each record stands alone (API.md): one that is not an object is reported, not the batch
    records: Annotated[list[Any], msgspec.Meta(max_length=1000)]


class EventIn(msgspec.Struct, forbid_unknown_fields=True):
    source: Name64
    event_id: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    occurred_at: AwareDatetime
    profile_id: str | None = None
    email: Short | None = None
    phone: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    external_id: Short | None = None
    country: Annotated[str, msgspec.Meta(max_length=2)] | None = None
    amount: Decimal | None = None
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")] | None = None
    category: Annotated[str, msgspec.Meta(max_length=120)] | None = None
    properties: dict[str, Any] | None = None
