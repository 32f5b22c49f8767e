"""Validation and normalisation of one customer record (pure: no database).

A record becomes a `Record` with normalised identifiers and cleaned fields, or raises
`InvalidInput` naming each bad field. Consents carried by the record are checked against the
policy separately so that a bulk import can keep the profile and report only the bad grant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from itertools import pairwise
from typing import Any

import msgspec

from cdp.errors import FieldError, InvalidInput, repeatable
from cdp.ids import time_problem
from cdp.labels import TRAIT_NAME_RULE, trait_name, trait_value
from cdp.normalize import clean_text, normalise_country, normalise_email, parse_phone
from cdp.nul_text import refuse_nul
from cdp.profiles.guards import junk_reason
from cdp.profiles.schemas import ProfileIn
from cdp.validation import invalid
from consent.policy import Policy
from consent.schemas import ConsentItemIn, EvidenceIn

TEXT_FIELDS = ("first_name", "last_name", "postal_address", "postcode")
# How a consent carried by a record (POST /v1/profiles, cdp import) was given, unless it says.
RECORD_METHOD = "import"


@dataclass(slots=True)
class ConsentClaim:
    purpose: str
    channel: str
    status: str
    source: str
    occurred_at: datetime | None
    evidence: EvidenceIn | None


@dataclass(slots=True)
class Record:
    source: str
    external_id: str | None = None
    email: str | None = None
    phone: str | None = None
    fields: dict[str, str] = field(default_factory=dict)  # encrypted profile fields
    city: str | None = None
    country: str | None = None
    jurisdiction: str | None = None  # explicit, or inferred from country
    jurisdiction_given: bool = False  # explicit (cdp.profiles.ingest keeps it over a country's)
    traits: dict[str, Any] = field(default_factory=dict)
    consents: list[ConsentClaim] = field(default_factory=list)
    ignored: list[FieldError] = field(default_factory=list)  # identifiers never used to link


def parse_profile(raw: Any, whole: str = "body") -> ProfileIn:
    """`raw` as a profile record; `whole` names it in an error about the record itself (not an
    object): the body of POST /v1/profiles, a `record` of a batch."""
    refuse_nul(raw)
    if isinstance(raw, ProfileIn):
        return raw
    try:
        return msgspec.convert(raw, ProfileIn)
    except msgspec.ValidationError:
        raise invalid(raw, ProfileIn, whole=whole) from None


TRAIT_NAMED_TWICE = "the same trait as another name of the record (in another Unicode form)"
_PLAINTEXT_REFUSAL = "holds an email address, which would be stored unencrypted here"


def holds_email_address(text: str) -> bool:
    """Whether an email address is anywhere in `text`: something@something.tld, each part a
    run of characters that are neither whitespace nor '@'. In time linear in the text: the
    regular expression this was (`[^\\s@]+@[^\\s@]+\\.[^\\s@]+`, searched) backtracked
    quadratically on a long run without a dot, and a trait of 60,000 characters (`a@bbb...`)
    held the server's only event loop for 9 s, one of 8 MiB for days."""
    for word in text.split():  # the same whitespace as the regex's \s
        parts = word.split("@")
        for before, after in pairwise(parts):
            # a character before the '@'; after it, a dot with a character on each side
            if before and "." in after[1:-1]:
                return True
    return False


def _addresses_in_plaintext(city: str | None, traits: dict[str, Any]) -> list[FieldError]:
    """City and traits are stored unencrypted (segments filter on them in SQL), so an email
    address put there, by a column mix-up or a trait such as `traits.work_email`, would be
    personal data in plaintext at rest (DESIGN.md §1.3). Such a value is refused."""
    values = [("city", city), *((f"traits.{key}", v) for key, v in traits.items())]
    return [
        FieldError(name, _PLAINTEXT_REFUSAL)
        for name, value in values
        if isinstance(value, str) and "@" in value and holds_email_address(value)
    ]


def trait_field(name: str) -> str:
    """How an error names a trait: `traits.<name>` where the name may be repeated
    (cdp.errors.repeatable), else `traits`."""
    return f"traits.{name}" if repeatable(name) else "traits"


def _named_traits(traits: dict[str, Any]) -> tuple[dict[str, Any], list[FieldError]]:
    """The traits under their stored names and values (cdp.labels), and an error for each name
    that segment rules could not select, or that another name stands for too (`й` written as
    one character and as `и` with a combining breve: one trait in NFC, and one of the two values
    was lost without a word). The error names the trait as `trait_field` does."""
    named: dict[str, Any] = {}
    errors: list[FieldError] = []
    for key, value in traits.items():
        name = trait_name(key)
        field = trait_field(key)
        if name is None:
            errors.append(FieldError(field, TRAIT_NAME_RULE))
        elif name in named:
            errors.append(FieldError(field, TRAIT_NAMED_TWICE))
        else:
            named[name] = trait_value(value)
    return named, errors


def validate_record(data: ProfileIn, policy: Policy) -> Record:
    """Normalise a record. Raises InvalidInput listing every bad field."""
    errors: list[FieldError] = []
    rec = Record(source=data.source.strip())
    if not rec.source:
        errors.append(FieldError("source", "required"))

    if data.country:
        try:
            rec.country = normalise_country(data.country)
        except InvalidInput as exc:
            errors.extend(exc.errors)
    if data.jurisdiction:
        code = data.jurisdiction.strip().upper()
        if code not in policy.jurisdictions:
            errors.append(FieldError("jurisdiction", "unknown jurisdiction"))
        rec.jurisdiction = code
        rec.jurisdiction_given = True
    elif rec.country:
        rec.jurisdiction = policy.jurisdiction_for_country(rec.country)

    if data.email is not None and data.email.strip():
        try:
            email = normalise_email(data.email)
            reason = junk_reason("email", email, policy.identity)
            if reason:
                rec.ignored.append(FieldError("email", reason))
            else:
                rec.email = email
        except InvalidInput as exc:
            errors.extend(exc.errors)
    if data.phone is not None and data.phone.strip():
        # API.md: the record's country, else the default jurisdiction's region, as every other
        # path that reads a phone (cdp.profiles.identifiers); not the record's jurisdiction's
        region = rec.country or policy.phone_region(None)
        try:
            phone = parse_phone(data.phone, region)
            reason = junk_reason(
                "phone",
                phone.e164,
                policy.identity,
                national=phone.national,
                extension=phone.extension,
            )
            if reason:
                rec.ignored.append(FieldError("phone", reason))
            else:
                rec.phone = phone.e164
        except InvalidInput as exc:
            errors.extend(exc.errors)
    if data.external_id is not None:
        ext = clean_text(data.external_id)
        if ext is not None:
            reason = junk_reason("external_id", ext, policy.identity)
            if reason:
                rec.ignored.append(FieldError("external_id", reason))
            else:
                rec.external_id = ext

    for name in TEXT_FIELDS:
        value = clean_text(getattr(data, name))
        if value is not None:
            rec.fields[name] = value
    if data.birth_date is not None:
        # a day counted from its start in UTC: born tomorrow, or before 1900, is no customer
        problem = time_problem(datetime.combine(data.birth_date, time(), UTC))
        if problem:
            errors.append(FieldError("birth_date", problem))
        rec.fields["birth_date"] = data.birth_date.isoformat()
    rec.city = clean_text(data.city)
    rec.traits, bad_names = _named_traits(data.traits)
    errors.extend(bad_names)
    errors.extend(_addresses_in_plaintext(rec.city, rec.traits))

    if not errors and not (rec.email or rec.phone or rec.external_id):
        if rec.ignored:
            errors.extend(FieldError(e.field, e.message) for e in rec.ignored)
        else:
            errors.append(
                FieldError("email", "at least one of email, phone, external_id is required")
            )
    if errors:
        raise InvalidInput("the record has invalid fields", errors)
    return rec


def validate_consents(
    items: list[ConsentItemIn], rec: Record, policy: Policy, prefix: str = "consents"
) -> tuple[list[ConsentClaim], list[FieldError]]:
    """The record's consent claims that pass the policy, and the errors of those that don't."""
    good: list[ConsentClaim] = []
    errors: list[FieldError] = []
    for i, item in enumerate(items):
        problems = consent_problems(
            policy,
            item.purpose,
            item.channel,
            item.status,
            item.evidence,
            f"{prefix}[{i}].",
            item.occurred_at,
            default_method=RECORD_METHOD,
        )
        if not problems and item.status == "granted":
            problems = _address_problems(policy, item.channel, rec, f"{prefix}[{i}].channel")
        if problems:
            errors.extend(problems)
            continue
        good.append(
            ConsentClaim(
                purpose=item.purpose,
                channel=item.channel,
                status=item.status,
                source=item.source or rec.source,
                occurred_at=item.occurred_at,
                evidence=item.evidence,
            )
        )
    return good, errors


def _address_problems(policy: Policy, channel: str, rec: Record, field: str) -> list[FieldError]:
    """A grant a record carries is for the record's own address on that channel: with none
    (absent, or not kept: a placeholder, a shared line) it grants nothing, rather than
    reaching the customer's other addresses, which never agreed."""
    kind = policy.channels[channel].address
    if kind not in ("email", "phone") or getattr(rec, kind):
        return []
    if any(e.field == kind for e in rec.ignored):
        return [FieldError(field, f"the record's {kind} was not kept, so there is none to grant")]
    return [FieldError(field, f"the record has no {kind} for this grant")]


def consent_problems(
    policy: Policy,
    purpose: str,
    channel: str,
    status: str,
    evidence: EvidenceIn | None,
    prefix: str = "",
    occurred_at: datetime | None = None,
    default_method: str | None = None,
) -> list[FieldError]:
    """The one place that decides whether a consent event is acceptable under the policy.
    One dated in the future or before 1900 (`cdp.ids.time_problem`) is not. A grant that needs
    proof (`Policy.evidence_required`) names its wording and how it was given (method), unless
    the path it came by is its method (`default_method`: a record's consent is an import).
    A grant of a purpose that names its advertiser (38-FZ art. 18) may not name another."""
    errors: list[FieldError] = []
    if (problem := time_problem(occurred_at)) is not None:
        errors.append(FieldError(f"{prefix}occurred_at", problem))
    if purpose not in policy.purposes:
        errors.append(FieldError(f"{prefix}purpose", "unknown purpose"))
    if channel == "*":
        if status != "withdrawn":
            errors.append(FieldError(f"{prefix}channel", "'*' is only allowed with withdrawn"))
    elif channel not in policy.channels:
        errors.append(FieldError(f"{prefix}channel", "unknown channel"))
    if status not in ("granted", "withdrawn"):
        errors.append(FieldError(f"{prefix}status", "must be granted or withdrawn"))
    if (
        status == "granted"
        and purpose in policy.purposes
        and policy.evidence_required(purpose, channel)
    ):
        if evidence is None or not (evidence.wording_id or "").strip():
            errors.append(
                FieldError(
                    f"{prefix}evidence.wording_id", "a grant of this purpose needs its wording"
                )
            )
        if not default_method and (evidence is None or not (evidence.method or "").strip()):
            errors.append(
                FieldError(f"{prefix}evidence.method", "a grant of this purpose needs its method")
            )
    named = evidence.advertiser if evidence is not None else None
    problem = None
    if status == "granted" and named is not None:
        problem = advertiser_problem(policy, purpose, named)
    if problem is not None:
        errors.append(FieldError(f"{prefix}evidence.advertiser", problem))
    return errors


def advertiser_problem(policy: Policy, purpose: str, named: str) -> str | None:
    """Why a grant of `purpose` naming the advertiser `named` is refused, or None: it names
    another advertiser than the purpose's own, or (a purpose naming none) the advertiser of
    another purpose, whose consent would otherwise make the customer reachable for this one."""
    own = policy.purposes[purpose].advertiser if purpose in policy.purposes else None
    if own is not None:
        if same_advertiser(named, own):
            return None
        return (
            "names another advertiser than this purpose's (policy): record consent to "
            "another advertiser's advertising under that advertiser's purpose"
        )
    theirs = sorted(
        name
        for name, p in policy.purposes.items()
        if name != purpose and p.advertiser is not None and same_advertiser(named, p.advertiser)
    )
    if theirs:
        return (
            f"names the advertiser of the purpose {theirs[0]} (policy): record consent to "
            "that advertiser's advertising under that purpose"
        )
    return None


def same_advertiser(a: str, b: str) -> bool:
    """Advertiser names compared as people read them: case and spacing aside."""
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()
