"""Operator changes to policies/ are checked at load: a mistake stops start-up with an error
that names the file and the key, instead of a silent "no" (or a 500) later. Plain Python."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from cdp.settings import DEFAULT_POLICY_DIR
from consent.policy import PolicyError, load_policy


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(DEFAULT_POLICY_DIR, target)
    return target


def edit(path: Path, pattern: str, replacement: str) -> None:
    text = path.read_text(encoding="utf-8")
    changed, n = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert n == 1, pattern
    path.write_text(changed, encoding="utf-8")


def refused(directory: Path) -> str:
    with pytest.raises(PolicyError) as err:
        load_policy(directory)
    return str(err.value)


def test_the_shipped_policies_load(policies):
    policy = load_policy(policies)
    assert set(policy.jurisdictions) == {"RU", "EU", "US-CA", "US"}


def test_a_misspelt_basis_names_the_file_and_the_rule(policies):
    edit(policies / "jurisdictions/RU.toml", r'^default = "opt_in"', 'default = "optin"')
    message = refused(policies)
    assert "RU.toml" in message and "rules.marketing.default" in message


def test_a_misspelt_basis_for_one_channel_names_it(policies):
    edit(policies / "jurisdictions/US.toml", r'^sms = "opt_in"', 'sms = "consent"')
    message = refused(policies)
    assert "US.toml" in message and "rules.service.sms" in message


def test_a_bad_deadline_unit_names_the_file_and_the_deadline(policies):
    edit(policies / "jurisdictions/EU.toml", r'^unit = "months"', 'unit = "weeks"')
    message = refused(policies)
    assert "EU.toml" in message and "deadlines.access.unit" in message


@pytest.mark.parametrize("period", ["0", "-3"])
def test_a_deadline_of_no_time_is_refused(policies, period):
    # before: loaded, and an erasure request in RU answered 500 ("working days out of range")
    edit(policies / "jurisdictions/RU.toml", r"^period = 10", f"period = {period}")
    message = refused(policies)
    assert "RU.toml" in message and "deadlines.access.period" in message


def test_a_negative_extension_is_refused(policies):
    edit(policies / "jurisdictions/US-CA.toml", r"^extension = 45", "extension = -45")
    message = refused(policies)
    assert "US-CA.toml" in message and "deadlines.access.extension" in message


def test_a_country_claimed_by_two_jurisdictions_is_refused(policies):
    # before: loaded, and a record from that country silently took whichever file sorted first
    edit(policies / "jurisdictions/US.toml", r'^countries = \["US"\]', 'countries = ["US", "RU"]')
    message = refused(policies)
    assert "US.toml" in message and "RU.toml" in message and "countries" in message


@pytest.mark.parametrize("country", ["de", "UK", "XX", "DEU"])
def test_a_country_that_no_record_can_name_is_refused(policies, country):
    # Records' countries are ISO 3166-1 alpha-2 codes, upper case (cdp.normalize): a file
    # listing "de" or "UK" loaded, and those customers fell under the default jurisdiction's
    # law without a word.
    edit(policies / "jurisdictions/EU.toml", r'"AT", ', f'"{country}", ')
    message = refused(policies)
    assert "EU.toml" in message and "countries" in message and country in message


@pytest.mark.parametrize("region", ["de", "EU", "XX"])
def test_a_phone_region_that_parses_no_number_is_refused(policies, region):
    # before: loaded, and every national number of the jurisdiction was refused as invalid
    edit(policies / "jurisdictions/EU.toml", r'^phone_region = "DE"', f'phone_region = "{region}"')
    message = refused(policies)
    assert "EU.toml" in message and "phone_region" in message


def test_a_channel_closed_to_automated_advertising_must_be_a_channel(policies):
    # a misspelt one ("calls") would leave robocalls allowed without a word
    edit(
        policies / "jurisdictions/RU.toml",
        r'^no_automated_advertising = \["phone", "sms"\]',
        'no_automated_advertising = ["calls", "sms"]',
    )
    message = refused(policies)
    assert "RU.toml" in message and "no_automated_advertising" in message and "calls" in message


def test_gpc_as_an_opt_out_of_sale_needs_the_sale_share_purpose(policies):
    # before: loaded, and the browser's GPC signal was silently never honoured
    edit(policies / "policy.toml", r"^\[purposes\.sale_share\]", "[purposes.resale]")
    for code in ("RU", "EU", "US-CA"):
        edit(policies / f"jurisdictions/{code}.toml", r"^\[rules\.sale_share\]", "[rules.resale]")
    message = refused(policies)
    assert "US-CA.toml" in message and "gpc" in message and "sale_share" in message


def test_soft_opt_in_covers_only_a_purpose_advertising_the_operators_own_products(policies):
    # ePrivacy art. 13(2): the seller's own similar products. A jurisdiction enabling it while
    # no purpose allows it would do nothing without a word; a purpose that is not advertising
    # cannot allow it.
    edit(policies / "jurisdictions/EU.toml", r"^soft_opt_in = false", "soft_opt_in = true")
    assert load_policy(policies).soft_opt_in("EU", "marketing", "email")
    edit(policies / "policy.toml", r"^soft_opt_in = true", "soft_opt_in = false")
    message = refused(policies)
    assert "EU.toml" in message and "soft_opt_in" in message and "policy.toml" in message
    edit(policies / "policy.toml", r"^soft_opt_in = false", "soft_opt_in = true")
    edit(policies / "policy.toml", r"^advertising = true", "advertising = false")
    message = refused(policies)
    assert "purposes.marketing.soft_opt_in" in message


def test_an_unknown_key_is_named(policies):
    edit(policies / "jurisdictions/EU.toml", r"^soft_opt_in = false", "soft_optin = true")
    message = refused(policies)
    assert "EU.toml" in message and "soft_optin" in message


def test_a_bad_purpose_or_channel_entry_names_it(policies):
    edit(policies / "policy.toml", r"^advertising = true", 'advertising = "yes"')
    message = refused(policies)
    assert "policy.toml" in message and "purposes.marketing.advertising" in message
    edit(policies / "policy.toml", r'^advertising = "yes"', "advertising = true")
    edit(policies / "policy.toml", r'^address = "phone"', 'address = "fax"')
    message = refused(policies)
    assert "policy.toml" in message and "channels.sms.address" in message


@pytest.mark.parametrize("zone", ["Moscow", "Europe", "europe/moscow", "../etc/passwd", ""])
def test_a_timezone_that_is_not_a_known_zone_names_the_file(policies, zone):
    edit(policies / "jurisdictions/RU.toml", r'^timezone = ".*"', f'timezone = "{zone}"')
    message = refused(policies)
    assert "RU.toml" in message and "timezone" in message


def test_deadlines_are_counted_in_the_timezone_the_policy_names(policies):
    assert load_policy(policies).jurisdictions["RU"].timezone == "Europe/Moscow"
    edit(policies / "jurisdictions/RU.toml", r'^timezone = ".*"', 'timezone = "Asia/Vladivostok"')
    assert load_policy(policies).jurisdictions["RU"].timezone == "Asia/Vladivostok"


def test_the_default_jurisdiction_of_policy_toml_holds_unless_the_setting_names_one(policies):
    """`default_jurisdiction` in policy.toml had no effect: CDP_DEFAULT_JURISDICTION, when
    unset, stood for RU, and an operator's EU there was never used."""
    from cdp.settings import Settings

    edit(policies / "policy.toml", r'^default_jurisdiction = "RU"', 'default_jurisdiction = "EU"')
    unset = Settings.from_env({"CDP_POLICY_DIR": str(policies)})
    assert load_policy(unset.policy_dir, unset.default_jurisdiction).default_jurisdiction == "EU"
    named = Settings.from_env({"CDP_POLICY_DIR": str(policies), "CDP_DEFAULT_JURISDICTION": "US"})
    assert load_policy(named.policy_dir, named.default_jurisdiction).default_jurisdiction == "US"


def test_a_default_jurisdiction_without_a_file_names_where_it_was_set(policies):
    with pytest.raises(PolicyError, match="CDP_DEFAULT_JURISDICTION: 'XX' has no file"):
        load_policy(policies, "XX")
    edit(policies / "policy.toml", r'^default_jurisdiction = "RU"', 'default_jurisdiction = "XX"')
    assert "policy.toml: default_jurisdiction 'XX' has no file" in refused(policies)


def test_a_misspelt_deadline_kind_is_refused(policies):
    # before: loaded, and RU's 30-day limit on erasure after a withdrawal (152-FZ art. 21(5))
    # was silently dropped: an erasure request came due after the law's limit
    edit(
        policies / "jurisdictions/RU.toml",
        r"^\[deadlines\.erasure_after_withdrawal\]",
        "[deadlines.erasure_after_withdrawl]",
    )
    message = refused(policies)
    assert "RU.toml" in message and "deadlines.erasure_after_withdrawl" in message


@pytest.mark.parametrize(
    ("file", "pattern", "replacement", "key"),
    [
        ("policy.toml", r"^advertising = true", "advertsing = true", "purposes.marketing"),
        ("policy.toml", r'^address = "phone"', 'adress = "phone"', "channels.sms"),
        ("jurisdictions/US.toml", r"^extension_unit =", "extention_unit =", "deadlines.access"),
        (
            "jurisdictions/US.toml",
            r"^# \[purposes\.marketing\]\n# consent_valid_days",
            "[purposes.marketing]\nconsent_valid_day",
            "purposes.marketing",
        ),
    ],
)
def test_a_misspelt_key_in_an_entry_names_the_entry(policies, file, pattern, replacement, key):
    # before: "policy.toml: Object contains unknown field `advertsing`", and the operator
    # searched every purpose (or deadline) of the file for it
    edit(policies / file, pattern, replacement)
    message = refused(policies)
    assert file.split("/")[-1] in message and f"`{key}`" in message


@pytest.mark.parametrize(
    ("table", "name"),
    [
        ("purposes", '"marketing.partner"'),
        ("purposes", '""'),
        ("purposes", '"sale share"'),
        ("channels", '"tele.gram"'),
        ("channels", "default"),
        ("channels", "whatsapp_business"),  # 17 characters: the consent tables hold 16
    ],
)
def test_a_purpose_or_channel_that_import_columns_and_rules_cannot_name_is_refused(
    policies, table, name
):
    # before: loaded, and `consent.marketing.partner.email` was read as purpose "marketing",
    # channel "partner"; a channel called "default" could not be given a rule of its own
    # (rules.<purpose>.default is every other channel's); a channel of 17 characters loaded,
    # and PostgreSQL refused its first consent ("value too long")
    entry = 'description = "x"' if table == "purposes" else 'address = "profile"'
    edit(policies / "policy.toml", r"^\[stats\]", f"[{table}.{name}]\n{entry}\n\n[stats]")
    message = refused(policies)
    assert "policy.toml" in message and f"{table}." in message
