"""No text we accept holds a NUL character (U+0000).

PostgreSQL cannot store one in text (`invalid byte sequence for encoding "UTF8": 0x00`), so a
NUL that reached a plaintext column (a source, a city, an event id, a segment's name) failed the
whole write: a 500 from the API, and a `cdp import` that stopped at the first such row. No name,
address, identifier or label holds one; it is a client's bug or a probe. It is refused as
invalid input naming the field, on SQLite and PostgreSQL alike, where text enters:
`cdp.profiles.records.parse_profile` for every customer record (the API, its batches, whose
other records are still stored, and `cdp import`, which reports the row), and
`api.nul_guard` for every other request's query, JSON body or form.
"""

from __future__ import annotations

from typing import Any

import msgspec

from cdp.errors import TOO_DEEP, InvalidInput, repeatable

NUL = "\x00"
MESSAGE = "must not contain a NUL character"
_json = msgspec.json.Encoder()


def nul_field(value: Any, path: str = "", whole: str = "body") -> str | None:
    """The path ("city", "traits.tier", "consents[0].source") of the first string in `value`
    that holds a NUL, or of the mapping whose key holds one; None when there is none. A key
    that is not `repeatable` (an object keyed by email address) is not named: its mapping is,
    or `whole` (the body, the query) for the top level."""
    if isinstance(value, str):
        return (path or whole) if NUL in value else None
    if isinstance(value, msgspec.Struct):
        items: Any = ((name, getattr(value, name)) for name in value.__struct_fields__)
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = nul_field(item, f"{path}[{i}]", whole)
            if found is not None:
                return found
        return None
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and NUL in key:
            return path or whole  # the key itself is not echoed
        if not repeatable(str(key)):  # keyed by an address, say: the mapping is named
            found = (path or whole) if nul_field(item) is not None else None
        else:
            found = nul_field(item, f"{path}.{key}" if path else str(key), whole)
        if found is not None:
            return found
    return None


def refuse_nul(value: Any, path: str = "", whole: str = "body") -> None:
    """Raise InvalidInput naming the field when `value` holds a NUL anywhere. Encoding the
    value as JSON, which writes a NUL as the escape \\u0000, is the quick test (about 1 µs for
    a record; walking it in Python took 8); the walk only names the field."""
    try:
        found = None if _encodes_without_nul(value) else nul_field(value, path, whole)
    except RecursionError:
        raise InvalidInput.field(path or whole, TOO_DEEP) from None
    if found is not None:
        raise InvalidInput.field(found, MESSAGE)


def _encodes_without_nul(value: Any) -> bool:
    try:
        return b"\\u0000" not in _json.encode(value)
    except (TypeError, ValueError, OverflowError):
        return False  # not JSON-encodable as it is: walk it
