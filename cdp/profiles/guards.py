"""Merge guards: identifier values that must never link two profiles, and the limits on merges.

Junk values come from the policy (`[identity]` in policies/policy.toml: `junk_values`,
`junk_emails`, `junk_email_local_parts`, `junk_phones`), compared after normalisation in one
form (`placeholder_key`: compatibility characters folded, inner whitespace collapsed, case
ignored). Whatever the policy lists, two kinds of value are placeholders by rule: one with no
letter or digit at all (`-`, `—`, `?`, `...`), and a spreadsheet error value: `#`, a word, and
`!` or `?` or a `/` part (`#N/A`, `#Н/Д`, `#VALUE!`, `#ЗНАЧ!`, `#DIV/0!`, `#ИМЯ?`).
A phone whose whole national number is one repeated digit or a straight run of digits
(+7 999 999-99-99, +1 123-456-7890) is a placeholder too, whatever the policy lists.
A phone given with an extension ("+7 495 123-45-67 доб. 101") is an office's shared line: E.164
has no extension, so colleagues would share one number and be merged into one customer, and no
SMS reaches an extension. It never links, and is not kept as an address.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import phonenumbers

from consent.policy import IdentityGuards

_RUNS = ("01234567890123456", "12345678901234567", "98765432109876543")
# Excel's and LibreOffice's error values in any language: #N/A, #Н/Д, #DIV/0!, #ДЕЛ/0!, #REF!,
# #ССЫЛКА!, #NAME?, #ИМЯ? ([^\W_] is a Unicode letter or digit)
_SHEET_ERROR = re.compile(r"#[^\W_]+(?:/[^\W_]+[!?]?|[!?])")


@dataclass(frozen=True, slots=True)
class _Lists:
    values: frozenset[str]
    emails: frozenset[str]
    local_parts: frozenset[str]
    phones: frozenset[str]


_cache: dict[int, tuple[IdentityGuards, _Lists]] = {}


def placeholder_key(value: str) -> str:
    """The form in which values are compared with the policy's lists: "N/A", " n/a " and
    "Ｎ/Ａ" (full width) are the same placeholder."""
    return " ".join(unicodedata.normalize("NFKC", value).split()).casefold()


def placeholder_by_rule(key: str) -> bool:
    """No letter or digit at all, or a spreadsheet error value (`key` from placeholder_key)."""
    return not any(c.isalnum() for c in key) or _SHEET_ERROR.fullmatch(key) is not None


def _lists(guards: IdentityGuards) -> _Lists:
    hit = _cache.get(id(guards))
    if hit is None or hit[0] is not guards:
        lists = _Lists(
            values=frozenset(map(placeholder_key, guards.junk_values)),
            emails=frozenset(map(placeholder_key, guards.junk_emails)),
            local_parts=frozenset(map(placeholder_key, guards.junk_email_local_parts)),
            phones=frozenset(v.strip() for v in guards.junk_phones),
        )
        hit = (guards, lists)
        _cache[id(guards)] = hit
    return hit[1]


def placeholder_phone(e164: str, national: str | None = None) -> bool:
    """+7 999 999-99-99, +1 111 111 1111, +7 123 456-78-90: not somebody's number.

    `national`: the national number phonenumbers finds in `e164`, when the caller has it
    (cdp.normalize.parse_phone); without it the number is parsed here."""
    if national is None:
        try:
            national = str(phonenumbers.parse(e164, None).national_number)
        except phonenumbers.NumberParseException:
            return False
    if len(national) < 6:
        return False
    return len(set(national)) == 1 or any(run.startswith(national) for run in _RUNS)


def junk_reason(
    kind: str,
    value: str,
    guards: IdentityGuards,
    *,
    national: str | None = None,
    extension: bool = False,
) -> str | None:
    """Why this normalised identifier is a placeholder, or None when it is usable.
    `national`: for a phone, its national number when known (see placeholder_phone);
    `extension`: the phone was given with one (cdp.normalize.Phone)."""
    if kind == "phone" and extension:
        return "a number with an extension is a shared line, not used to link profiles"
    lists = _lists(guards)
    key = placeholder_key(value)
    if key in lists.values or placeholder_by_rule(key):
        return "placeholder value, not used to link profiles"
    if kind == "email":
        local = key.split("@", 1)[0]
        if key in lists.emails or local in lists.local_parts:
            return "placeholder address, not used to link profiles"
    if kind == "phone" and (value in lists.phones or placeholder_phone(value, national)):
        return "placeholder number, not used to link profiles"
    return None
