"""Normalisation of identifiers and names, with well-kept libraries.

Emails: email-validator (syntax only, no network), trimmed and lower-cased. A plain ASCII
address (dot-atom local part, LDH domain labels) takes an exact fast path that gives what
email-validator gives; anything else goes to email-validator.
Phones: phonenumbers to E.164; a national number uses the record's country, else the region of
the default jurisdiction. Names: Unicode NFC, trimmed, inner whitespace collapsed (Cyrillic intact).
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

import phonenumbers
from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

from cdp.errors import InvalidInput

_SPACES = re.compile(r"\s+")

# The subset of addresses email-validator 2.x accepts and returns unchanged but for case
# (checked against it by tests/test_normalize.py): an RFC 5322 dot-atom local part of ASCII
# atext, an @, and two or more LDH labels (letters, digits, inner hyphens) whose last ends in a
# letter. Length limits, R-LDH labels ("ab--"), Punycode ("xn--") and special-use names are
# checked in code below; whatever falls outside goes to email-validator itself.
_ATEXT = r"[a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~]"
_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_PLAIN_EMAIL = re.compile(
    rf"{_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+(?:[a-zA-Z0-9][a-zA-Z0-9-]*)?[a-zA-Z]"
)
_SPECIAL_SUFFIXES = tuple("." + d for d in SPECIAL_USE_DOMAIN_NAMES)
_EMAIL_MAX = 254  # email_validator.rfc_constants: EMAIL_MAX_LENGTH
_DOMAIN_MAX = 253  # DOMAIN_MAX_LENGTH
_LABEL_MAX = 63  # DNS_LABEL_LENGTH_LIMIT


def clean_text(value: str | None) -> str | None:
    if value is None:
        return None
    value = _SPACES.sub(" ", unicodedata.normalize("NFC", value)).strip()
    return value or None


def plain_email(raw: str) -> str | None:
    """The normalised form of a plain ASCII address, or None when email-validator must decide
    (it may still accept it). Never rejects."""
    if len(raw) > _EMAIL_MAX or not _PLAIN_EMAIL.fullmatch(raw):
        return None
    domain = raw[raw.index("@") + 1 :].lower()
    if len(domain) > _DOMAIN_MAX or "xn--" in domain:
        return None
    for label in domain.split("."):
        if len(label) > _LABEL_MAX or label[2:4] == "--":
            return None
    if domain.endswith(_SPECIAL_SUFFIXES) or domain in SPECIAL_USE_DOMAIN_NAMES:
        return None
    return raw.lower()


def validated_email(raw: str) -> str:
    """email-validator's normalised form, lower-cased (raises EmailNotValidError)."""
    result = validate_email(raw, check_deliverability=False, allow_smtputf8=True)
    return result.normalized.lower()


def normalise_email(value: str, field: str = "email") -> str:
    raw = value.strip()
    fast = plain_email(raw)
    if fast is not None:
        return fast
    try:
        return validated_email(raw)
    except EmailNotValidError as exc:
        raise InvalidInput.field(field, "not a valid email address") from exc


class Phone(NamedTuple):
    e164: str
    national: str | None  # see parse_phone
    extension: bool  # the input named an extension ("доб. 123", "ext. 5"): a shared line


def parse_phone(value: str, region: str, field: str = "phone") -> Phone:
    """The number in E.164, its national number or None, and whether the input named an
    extension (which E.164 leaves out). The national number is the one phonenumbers finds
    when it parses the E.164 form, given only where that is certain without parsing again:
    the input was that E.164 form already, and a number starting with "+" parses the same
    whatever the default region."""
    raw = value.strip()
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidInput.field(field, "not a parsable phone number") from exc
    if not phonenumbers.is_valid_number(number):
        raise InvalidInput.field(field, "not a valid phone number")
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    national = str(number.national_number) if raw == e164 else None
    return Phone(e164, national, bool(number.extension))


def normalise_phone(value: str, region: str, field: str = "phone") -> str:
    return parse_phone(value, region, field).e164


# ISO 3166-1 alpha-2: phonenumbers' regions (which add AC, TA and XK, in use for Ascension,
# Tristan da Cunha and Kosovo) and the few territories without a telephone numbering plan.
COUNTRIES = frozenset(phonenumbers.SUPPORTED_REGIONS) | {"AQ", "BV", "GS", "HM", "PN", "TF", "UM"}


def normalise_country(value: str, field: str = "country") -> str:
    """An ISO 3166-1 alpha-2 code. One that names no country (ZZ, or UK for GB) is refused:
    it would put the customer under the default jurisdiction's law without a word."""
    code = value.strip().upper()
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        raise InvalidInput.field(field, "must be an ISO 3166-1 alpha-2 code")
    if code not in COUNTRIES:
        hint = " (the United Kingdom is GB)" if code == "UK" else ""
        raise InvalidInput.field(field, f"not an ISO 3166-1 alpha-2 country code{hint}")
    return code
