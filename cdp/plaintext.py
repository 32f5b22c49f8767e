"""The one rule for text stored unencrypted: it must not hold an email address.

Names, addresses and identifiers are encrypted per field (DESIGN.md §1.3). Some text the callers
choose is stored as it is, because SQL filters or groups on it, or a ledger entry's hash covers
it: a profile's city and traits (segments), an event's source, id, type and category, a
consent's or opt-out's source, wording id and method (the ledger, which an erasure leaves in
place). An email address put there, by a column mix-up, a trait such as `traits.work_email` or
an order keyed by its buyer's address, would be personal data in plaintext at rest, and in
the ledger it would outlive the customer's erasure. Such a value is refused as invalid input.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from cdp.errors import FieldError, InvalidInput

# An email address anywhere in a value: something@something.tld
_EMAIL_IN_TEXT = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
REFUSAL = "holds an email address, which would be stored unencrypted here"


def holds_address(value: object) -> bool:
    return isinstance(value, str) and "@" in value and _EMAIL_IN_TEXT.search(value) is not None


def addresses_in_plaintext(fields: Iterable[tuple[str, object]]) -> list[FieldError]:
    """An error for each (field, value) whose value holds an email address."""
    return [FieldError(name, REFUSAL) for name, value in fields if holds_address(value)]


def refuse_addresses_in_plaintext(fields: Iterable[tuple[str, object]]) -> None:
    """Raise InvalidInput naming each field whose value holds an email address."""
    errors = addresses_in_plaintext(fields)
    if errors:
        raise InvalidInput("; ".join(f"{e.field}: {e.message}" for e in errors), errors)
