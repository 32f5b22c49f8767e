"""The import's fast paths give exactly what the libraries give.

Emails: `normalise_email` (ASCII fast path, else email-validator) against email-validator alone,
on generated addresses: same acceptance, same normalised form. Phones: the national number
`parse_phone` hands to the placeholder guard is the one a fresh parse of the E.164 form finds.
"""

from __future__ import annotations

import phonenumbers
from email_validator import EmailNotValidError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cdp.errors import InvalidInput
from cdp.normalize import normalise_email, parse_phone, plain_email, validated_email
from cdp.profiles.guards import junk_reason
from consent.policy import IdentityGuards

ATEXT = "abcXYZ019_!#$%&'*+-/=?^`{|}~"
LOCAL_CHARS = ATEXT + '.@"<> \\é\u0301ё'
LABEL_CHARS = "abzAZ09-_é"

locals_ = st.text(LOCAL_CHARS, min_size=0, max_size=70)
labels = st.one_of(
    st.text(LABEL_CHARS, min_size=0, max_size=70),
    st.sampled_from(["xn--e1afmkfd", "ab--cd", "XN--80AKHBYKNJ4F", "123", "com", "COM", "рф"]),
)
tlds = st.sampled_from(
    ["com", "Ru", "io", "x", "123", "c0m", "local", "test", "onion", "arpa", "localhost", "-com"]
)
domains = st.builds(lambda ls, tld: ".".join([*ls, tld]), st.lists(labels, max_size=4), tlds)
# mostly valid: dot-atoms and LDH labels, with hyphens, digits, case and long labels
atoms = st.lists(st.text(ATEXT, min_size=1, max_size=12), min_size=1, max_size=4).map(".".join)
ldh = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,70}[a-zA-Z0-9])?", fullmatch=True)
plausible = st.builds(
    lambda lp, ls, tld: f"{lp}@{'.'.join([*ls, tld])}",
    atoms,
    st.lists(ldh, min_size=1, max_size=4),
    st.one_of(tlds, st.from_regex(r"[a-zA-Z0-9-]{0,5}[a-zA-Z]", fullmatch=True)),
)
addresses = st.one_of(
    plausible,
    plausible,
    st.builds(lambda lp, d: f"{lp}@{d}", locals_, domains),
    st.builds(lambda lp, d: f" {lp}@{d}\t", locals_, domains),
    st.text(LOCAL_CHARS + LABEL_CHARS, max_size=40),
)


def reference(raw: str) -> str | None:
    try:
        return validated_email(raw.strip())
    except EmailNotValidError:
        return None


def ours(raw: str) -> str | None:
    try:
        return normalise_email(raw)
    except InvalidInput:
        return None


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(addresses)
@example("Anna.Ivanova@Example.com")
@example("a.b+tag@sub-domain.example.co.uk")
@example("user@example.123")
@example("user@xn--80akhbyknj4f.xn--p1ai")
@example("user@ab--cd.com")
@example("user@host.local")
@example("user@localhost")
@example("user@a-.com")
@example("user@-a.com")
@example("user@b.-com")
@example(".user@example.com")
@example("user.@example.com")
@example("us..er@example.com")
@example("x@" + "a" * 63 + ".com")
@example("x@" + "a" * 64 + ".com")
@example("x@" + ".".join(["a" * 60] * 4) + ".com")
@example("y" * 240 + "@example.com")
@example("y" * 241 + "@example.com")
@example("y" * 242 + "@example.com")  # 254 characters: the longest address
@example("y" * 243 + "@example.com")
@example("Анна@пример.рф")
@example("INFO@Example.COM")
def test_email_fast_path_matches_email_validator(raw: str) -> None:
    assert ours(raw) == reference(raw)


def test_plain_addresses_take_the_fast_path() -> None:
    assert plain_email("Anna.Ivanova+news@Example.com") == "anna.ivanova+news@example.com"
    assert plain_email("o'brien@mail-1.example.org") == "o'brien@mail-1.example.org"
    # up to the limits: 254 characters in all, 63 in a label
    for raw in ("y" * 242 + "@example.com", "x@" + "a" * 63 + ".com"):
        assert plain_email(raw) == raw
    # left to email-validator: non-ASCII, Punycode, special-use names, numeric TLDs
    for raw in ("анна@example.com", "a@xn--80akhbyknj4f.com", "a@host.test", "a@example.123"):
        assert plain_email(raw) is None


GUARDS = IdentityGuards()

phones = st.one_of(
    st.builds(lambda d: "+" + d, st.text("0123456789", min_size=6, max_size=16)),
    st.builds(lambda d: "8" + d, st.text("0123456789", min_size=9, max_size=11)),
    st.text("0123456789 +-()", min_size=6, max_size=20),
)


@settings(max_examples=3000, deadline=None)
@given(phones, st.sampled_from(["RU", "US", "DE", "GB", "IT", "AR", "MX", "KZ", "BR"]))
@example("+79999999999", "RU")
@example("+71234567890", "RU")
@example("+79161234567", "RU")
@example("+390612345678", "IT")
@example("+5491123456789", "AR")
@example("+4915112345678", "DE")
def test_phone_national_number_is_the_one_a_fresh_parse_finds(raw: str, region: str) -> None:
    try:
        e164, national, _ = parse_phone(raw, region)
    except InvalidInput:
        return
    if national is not None:
        assert national == str(phonenumbers.parse(e164, None).national_number)
    assert junk_reason("phone", e164, GUARDS, national=national) == junk_reason(
        "phone", e164, GUARDS
    )


def test_placeholder_numbers_are_caught_on_the_fast_path() -> None:
    for raw in ("+79999999999", "+79876543210"):
        e164, national, _ = parse_phone(raw, "RU")
        assert national is not None
        assert junk_reason("phone", e164, GUARDS, national=national) is not None
    # the shortest national numbers caught: six digits (Andorra's numbers are six long)
    for raw in ("+376111111", "+376123456"):
        e164, national, _ = parse_phone(raw, "AD")
        assert national is not None and len(national) == 6
        assert junk_reason("phone", e164, GUARDS, national=national) is not None
        assert junk_reason("phone", e164, GUARDS) is not None
    assert junk_reason("phone", parse_phone("+376312345", "AD").e164, GUARDS) is None
    # a number the operator lists (the shop's own line, typed for customers without one)
    shop = "+74951234567"
    assert junk_reason("phone", shop, GUARDS) is None
    listed = IdentityGuards(junk_phones=[f" {shop} "])
    assert junk_reason("phone", shop, listed) == "placeholder number, not used to link profiles"


def test_a_country_code_must_name_a_country() -> None:
    from cdp.errors import InvalidInput
    from cdp.normalize import normalise_country

    assert normalise_country(" gb ") == "GB"
    assert normalise_country("XK") == "XK"  # Kosovo, in use though user-assigned
    assert normalise_country("AQ") == "AQ"  # no numbering plan, still a territory
    for bad, says in (("ZZ", "not an ISO"), ("UK", "the United Kingdom is GB"), ("R1", "alpha-2")):
        try:
            normalise_country(bad)
        except InvalidInput as exc:
            assert exc.errors[0].field == "country" and says in exc.errors[0].message
        else:
            raise AssertionError(f"{bad} was accepted")


def test_what_the_slow_paths_accept_and_refuse() -> None:
    """The libraries' answers themselves, which the fast-path tests compare with and so do not
    pin: an internationalised address is taken, a bad address or number is a field error."""
    from cdp.normalize import normalise_phone

    assert normalise_email(" Анна@Пример.рф ") == "анна@пример.рф"
    for raw in ("anna", "anna@", "an na@example.com"):
        try:
            normalise_email(raw, "contact_email")
        except InvalidInput as exc:
            assert exc.errors[0].field == "contact_email"
        else:
            raise AssertionError(f"{raw!r} was accepted")
    assert normalise_phone("8 (916) 123-45-67", "RU") == "+79161234567"
    for raw in ("+7 000 000", "call me"):
        try:
            parse_phone(raw, "RU")
        except InvalidInput as exc:
            assert exc.errors[0].field == "phone"
        else:
            raise AssertionError(f"{raw!r} was accepted")
