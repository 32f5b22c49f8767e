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
