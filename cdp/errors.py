"""Domain errors. Messages never carry personal data: they name fields, not values."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    field: str
    message: str


class DomainError(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []

    def __str__(self) -> str:
        if not self.errors:
            return self.detail
        return self.detail + " (" + "; ".join(f"{e.field}: {e.message}" for e in self.errors) + ")"


# Input nested deeper than msgspec decodes (Python's recursion limit, about 1,000 levels)
TOO_DEEP = "nested too deeply"

# msgspec reports an unknown or missing field at the object that holds it; these name the field
_OBJECT_MESSAGES = (
    ("Object contains unknown field `", "unknown field"),
    ("Object missing required field `", "required"),
)


# msgspec's words for a type (JSON's, or the schema's) in plain words
_TYPE_WORDS = {
    "str": "text",
    "int": "a whole number",
    "float": "a number",
    "decimal": "a decimal number",
    "bool": "true/false",
    "null": "null",
    "date": "a date as YYYY-MM-DD",
    "datetime": "a date and time as RFC 3339 (2026-11-22T10:00:00Z)",
    "object": "an object",
    "array": "a list",
}
_EXPECTED = re.compile(r"Expected `([a-z |]+)`, got `([a-z]+)`")
_LENGTH = re.compile(r"Expected `(str|array|object)` of length (<=|>=) ([0-9]+)")
_UNITS = {
    "str": ("character", "characters"),
    "array": ("item", "items"),
    "object": ("entry", "entries"),
}
# msgspec messages in plain words; none repeats the value (msgspec's enum message does)
_PLAIN_MESSAGES = {
    "Invalid RFC3339 encoded date": "expected a date as YYYY-MM-DD",
    "Invalid RFC3339 encoded datetime": "expected " + _TYPE_WORDS["datetime"],
    "Expected `datetime` with a timezone component": (
        "expected a date and time with its zone (2026-11-22T10:00:00Z)"
    ),
    "Invalid decimal string": 'expected a decimal number ("1999.90")',
    "Expected `str` matching regex '^[A-Z]{3}$'": "expected an ISO 4217 code in capitals (RUB)",
    "Expected `str` matching regex '\\\\S'": "must not be blank",  # r'\S', as msgspec quotes it
}


def plain_message(message: str) -> str:
    """A msgspec validation message in plain words: `Expected `str | null`, got `int`` is
    "expected text, got a number" (a missing value is allowed wherever null is). A message
    this does not know is kept as it is."""
    if message.startswith("Invalid enum value"):
        return "not one of the allowed values"
    length = _LENGTH.fullmatch(message)
    if length is not None:
        kind, op, n = length.groups()
        return f"{'at most' if op == '<=' else 'at least'} {n} {_UNITS[kind][n != '1']}"
    match = _EXPECTED.fullmatch(message)
    if match is None:
        return _PLAIN_MESSAGES.get(message, message)
    names = [t for t in match.group(1).split(" | ") if t != "null"] or ["null"]
    if "float" in names:  # "a number" says "a whole number" too
        names = [t for t in names if t != "int"]
    words = [_TYPE_WORDS.get(t, t) for t in names]
    expected = words[-1] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"
    got = "a number" if match.group(2) in ("int", "float") else _TYPE_WORDS.get(match.group(2))
    return f"expected {expected}, got {got or match.group(2)}"


def repeatable(name: str) -> bool:
    """Whether an error may repeat a name the caller chose (a key, a trait, a column): not one
    that is long or unprintable, or holds an '@' or 7 digits, as a customer's email address or
    phone number does (a JSON object keyed by address). Errors and the rejects file of
    `cdp import` carry no personal data."""
    return (
        len(name) <= 64
        and name.isprintable()
        and "@" not in name
        and sum(ch.isdigit() for ch in name) < 7
    )


def decoded_field_error(
    message: str, path: str | None, prefix: str = "", whole: str = "body"
) -> FieldError:
    """A msgspec validation error as a FieldError naming the field, in plain words
    (`plain_message`). `path` is where msgspec found it (`$.consents[0]`, `consents[0]`, or
    empty for the top level); an unknown or missing field is named inside its object:
    ("consents[0].purpose", "required"), unless its name is not `repeatable`: then the object
    is named. `whole` names the decoded value itself (a request's body, a batch's record)."""
    where = (path or "").strip("`").removeprefix("$").lstrip(".")
    for start, says in _OBJECT_MESSAGES:
        if message.startswith(start):
            name = message[len(start) :].partition("`")[0]
            if repeatable(name):
                where = f"{where}.{name}" if where else name
            message = says
            break
    else:
        message = plain_message(message)
    return FieldError(f"{prefix}{where}" if where else prefix.rstrip(".") or whole, message)


class InvalidInput(DomainError):
    title = "Invalid input"

    @classmethod
    def field(cls, field: str, message: str) -> InvalidInput:
        return cls(f"{field}: {message}", [FieldError(field, message)])


class NotFound(DomainError):
    status = 404
    title = "Not found"


class Gone(DomainError):
    status = 410
    title = "Gone"


class Conflict(DomainError):
    status = 409
    title = "Conflict"
