"""Request bodies of the data subject request API (msgspec).

The customer is named by one identifier, given at the top level (`{"email": ...}`) or nested
(`{"identifier": {"email": ...}}`).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from cdp.errors import FieldError, InvalidInput
from cdp.profiles.identifiers import Identifier, parse_identifier
from consent.policy import Policy
from consent.schemas import Name64, Short

Phone = Annotated[str, msgspec.Meta(max_length=64)]
Country = Annotated[str, msgspec.Meta(max_length=2)]
# an officer's reason: some text, not only spaces (a blank reason was taken as one)
Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500, pattern=r"\S")]


class IdentifierIn(msgspec.Struct, forbid_unknown_fields=True):
    profile_id: Short | None = None
    email: Short | None = None
    phone: Phone | None = None
    source: Name64 | None = None
    external_id: Short | None = None
    country: Country | None = None


class AccessIn(IdentifierIn, forbid_unknown_fields=True):
    identifier: IdentifierIn | None = None


class ErasureIn(AccessIn, forbid_unknown_fields=True, kw_only=True):
    requested_by: Literal["customer", "operator"]
    jurisdiction: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    note: Annotated[str, msgspec.Meta(max_length=2000)] | None = None


class ReasonIn(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason


_FIELDS = ("profile_id", "email", "phone", "source", "external_id", "country")


def identifier_of(body: AccessIn, policy: Policy, indexer) -> Identifier:  # type: ignore[no-untyped-def]
    top = {f: getattr(body, f) for f in _FIELDS}
    given_top = any(v is not None for v in top.values())
    if body.identifier is not None and given_top:
        raise InvalidInput(
            "name the customer at the top level or in `identifier`, not both",
            [FieldError("identifier", "given together with top-level identifier fields")],
        )
    fields = {f: getattr(body.identifier, f) for f in _FIELDS} if body.identifier else top
    try:
        return parse_identifier(policy, indexer, **fields)
    except InvalidInput as exc:
        if body.identifier is None:
            raise
        raise InvalidInput(
            exc.detail, [FieldError(f"identifier.{e.field}", e.message) for e in exc.errors]
        ) from None
