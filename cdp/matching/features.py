"""What the matcher compares, normalised in memory: transliterated, lower-case, no punctuation.

Names go through anyascii, so Cyrillic and Latin spellings meet (Иванова / Ivanova); values are
decrypted for matching only and never stored.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from anyascii import anyascii

_NOT_WORD = re.compile(r"[^a-z0-9 ]+")


def normalise(text: str | None) -> str:
    """Transliterated to ASCII, lower-cased, punctuation dropped, spaces collapsed."""
    if not text:
        return ""
    return " ".join(_NOT_WORD.sub(" ", anyascii(text).lower()).split())


@dataclass(frozen=True, slots=True)
class Person:
    id: uuid.UUID
    first: str = ""
    last: str = ""
    birth: str = ""  # YYYYMMDD
    postcode: str = ""
    city: str = ""
    address: str = ""


def person(
    profile_id: uuid.UUID,
    *,
    first_name: str | None = None,
    last_name: str | None = None,
    birth_date: str | None = None,
    postcode: str | None = None,
    city: str | None = None,
    postal_address: str | None = None,
) -> Person:
    return Person(
        id=profile_id,
        first=normalise(first_name),
        last=normalise(last_name),
        birth=(birth_date or "").replace("-", ""),
        postcode=normalise(postcode).replace(" ", ""),
        city=normalise(city),
        address=normalise(postal_address),
    )
