"""Cells a spreadsheet would run as a formula (OWASP CSV injection), for every CSV the platform
writes: segment exports and the rejects file of `cdp import`.

A value starting with = + - @, a tab or a carriage return gets a leading apostrophe, which a
spreadsheet shows as text; stripping it gives the value back. An E.164 phone (`+` and digits,
a number to a spreadsheet) stays exact.
"""

from __future__ import annotations

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text: str | None) -> str:
    """The cell for a value someone else typed (a name, a key of an imported file)."""
    if not text:
        return ""
    return "'" + text if text.startswith(_FORMULA_START) else text


def spreadsheet_safe_address(address: str) -> str:
    """The cell for an email or a phone: an email's local part may begin with = + - (RFC 5322
    allows them, so a sign-up form can send `=cmd|'/c calc'!a0@...`) and is defused as a name
    is; an E.164 phone keeps its `+`."""
    if address.startswith("+") and address[1:].isdigit():
        return address
    return spreadsheet_safe(address)
