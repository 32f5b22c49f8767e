"""Normalisation of identifiers and names, with well-kept libraries.

Emails: email-validator (syntax only, no network), trimmed and lower-cased.
Phones: phonenumbers to E.164; a national number uses the record's country, else the region of
the default jurisdiction. Names: Unicode NFC, trimmed, inner whitespace collapsed (Cyrillic intact).
"""

from __future__ import annotations

import re
import unicodedata

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from cdp.errors import InvalidInput

_SPACES = re.compile(r"\s+")


def clean_text(value: str | None) -> str | None:
    if value is None:
        return None
    value = _SPACES.sub(" ", unicodedata.normalize("NFC", value)).strip()
    return value or None


def normalise_email(value: str, field: str = "email") -> str:
    raw = value.strip()
    try:
        result = validate_email(raw, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        raise InvalidInput.field(field, "not a valid email address") from exc
    return result.normalized.lower()


def normalise_phone(value: str, region: str, field: str = "phone") -> str:
    raw = value.strip()
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidInput.field(field, "not a parsable phone number") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidInput.field(field, "not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_country(value: str, field: str = "country") -> str:
    code = value.strip().upper()
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        raise InvalidInput.field(field, "must be an ISO 3166-1 alpha-2 code")
    return code
