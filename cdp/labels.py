"""Names that segment rules compare with what ingest stored: trait names, purchase categories
and cities.

One rule for each, used on both sides, so that whatever can be ingested can be selected.

A trait name has 1 to 64 characters: Unicode letters (Cyrillic included, with their combining
marks), digits, '_', '-', '.' and spaces; it starts with a letter, digit or '_' and does not end
with a space (`уровень`, `loyalty tier`, `tier_2024`, `crm.segment`). It is kept in Unicode NFC,
so the same word typed on two systems is one trait. No name can hold a quote or a backslash,
which the JSON paths of the trait SQL could not carry (cdp.segments.traits).

A trait's string value is stored, and a rule's string compared with it, in NFC: `й` and `ё` sent
as a letter and a combining mark (a Mac export, some 1C configurations) are the same value as
typed in one character. Nothing else about it changes (case and spaces are the source's).

A category is compared trimmed, with inner whitespace collapsed and case folded (" Shoes ",
"SHOES" and "shoes" are one category), in NFC.

A city is shown as its source wrote it (cleaned: trimmed, inner whitespace collapsed, NFC) and
compared by the same folding, kept beside it in `profiles.city_key`: "МОСКВА", "Москва" and
" москва " are one city, and so are "Straße" and "STRASSE". Neither database folds case alike
(SQLite's lower() knows ASCII only, PostgreSQL's follows the server's locale), so the fold is
done here, in Python, when the city is written.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from cdp.normalize import clean_text

TRAIT_NAME_MAX = 64
TRAIT_NAME_RULE = (
    "a trait name has 1 to 64 letters, digits, spaces, '_', '-' or '.', "
    "and starts with a letter, digit or '_'"
)
CATEGORY_MAX = 120  # events.category and profile_categories.category
_PUNCTUATION = frozenset("_-. ")


def _allowed(ch: str) -> bool:
    return ch in _PUNCTUATION or unicodedata.category(ch)[0] in "LM" or ch.isdecimal()


def trait_name(raw: str) -> str | None:
    """The name in the form it is stored and selected by, or None when it breaks the rule."""
    if len(raw) > 4 * TRAIT_NAME_MAX:  # not even in decomposed form (and never cached)
        return None
    return _trait_name(raw)


@lru_cache(maxsize=4096)  # an import names the same few traits on every row
def _trait_name(raw: str) -> str | None:
    name = unicodedata.normalize("NFC", raw)
    if not 1 <= len(name) <= TRAIT_NAME_MAX or name.endswith(" "):
        return None
    first = name[0]
    if not (first == "_" or first.isdecimal() or unicodedata.category(first)[0] == "L"):
        return None
    return name if all(map(_allowed, name)) else None


def trait_value(value: object) -> object:
    """A trait's value in the form it is stored and compared in (strings in NFC)."""
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


def _folded(raw: str | None) -> str | None:
    text = clean_text(raw)
    if text is None:
        return None
    return unicodedata.normalize("NFC", text.casefold())


def normalise_category(raw: str | None) -> str | None:
    """The form a category is stored and compared in; None when nothing is left of it."""
    return _folded(raw)


@lru_cache(maxsize=4096)  # an import's customers live in a few hundred cities
def city_key(city: str | None) -> str | None:
    """The form a city is compared in (`profiles.city_key`, and a rule's value); None for none."""
    return _folded(city)
