"""No JSON object we accept names a key twice.

A JSON decoder keeps the last of two values under one key (`{"email": "work@...", "email":
"home@..."}`), so the other was lost without a word: from a `cdp import` line, as from a
request body. Such an object is refused, as a CSV header naming a column twice is
(`cdp.import_file`), where JSON enters: `cdp.import_file` for each line (the row is rejected)
and `api.requests.ApiRequest` for every body (a 400 naming `body`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from cdp.errors import TOO_DEEP, repeatable

# Every key of a JSON object ends with a quote, then a colon (perhaps after spaces); a string
# value may hold the same, so the count is at least the number of keys the text names.
_KEY_END = re.compile(rb'"\s*:')


def duplicate_key(text: str | bytes, decoded: Any) -> str | None:
    """Why `text`, which decodes to `decoded`, is refused: an object in it names a key twice
    (the key is named when it is `repeatable`); None when none does. The text is decoded again
    only when it may hold more keys than were decoded (a few microseconds for a record)."""
    if not isinstance(decoded, dict | list):
        return None
    raw = text.encode() if isinstance(text, str) else text
    keys = _keys(decoded)
    try:
        # every colon, then the colons that may end a key: no more than the keys decoded
        if raw.count(b":") <= keys or len(_KEY_END.findall(raw)) <= keys:
            return None
        json.loads(raw, object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as exc:
        named = f"the key {exc.key!r}" if repeatable(exc.key) else "a key"
        return f"names {named} twice (one of its values would be lost)"
    except RecursionError:
        return TOO_DEEP
    except ValueError:  # not JSON to Python's decoder (it was to msgspec's): nothing to say
        return None
    return None


def _keys(value: dict | list) -> int:
    """The keys of every object in a decoded JSON object or array. A loop, not a recursion:
    msgspec decodes about 1,000 levels, and two Python frames a level overflowed the stack
    from about 500 (a segment rule nested 900 levels deep was a 500, not a 400)."""
    count, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            count += len(item)
            pending.extend(v for v in item.values() if isinstance(v, dict | list))
        else:
            pending.extend(v for v in item if isinstance(v, dict | list))
    return count


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return dict(pairs)
