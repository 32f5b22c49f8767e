"""Domain errors. Messages never carry personal data: they name fields, not values."""

from __future__ import annotations

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


def decoded_field_error(message: str, path: str | None, prefix: str = "") -> FieldError:
    """A msgspec validation error as a FieldError naming the field. `path` is where msgspec
    found it (`$.consents[0]`, `consents[0]`, or empty for the top level); an unknown or
    missing field is named inside its object: ("consents[0].purpose", "required")."""
    where = (path or "").strip("`").removeprefix("$").lstrip(".")
    for start, says in _OBJECT_MESSAGES:
        if message.startswith(start):
            name = message[len(start) :].partition("`")[0]
            where, message = (f"{where}.{name}" if where else name), says
            break
    return FieldError(f"{prefix}{where}" if where else prefix.rstrip(".") or "body", message)


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
