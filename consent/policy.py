"""Policy files (policies/*.toml) read with msgspec and validated at start-up.

Errors name the file and the key. The policy version recorded on every decision is the
declared `version` plus a digest of every policy file, so any edit changes it.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import phonenumbers

from cdp.normalize import COUNTRIES

Basis = Literal["contract", "opt_in", "opt_out"]
AddressKind = Literal["email", "phone", "profile"]
PeriodUnit = Literal["days", "working_days", "months"]
REQUIRED_PURPOSES = ("service", "marketing")
REQUIRED_CHANNELS = ("email", "sms", "phone", "push", "messenger")
BASES: tuple[Basis, ...] = ("contract", "opt_in", "opt_out")
# the deadlines a jurisdiction file sets (`[deadlines.<kind>]`); the first two are required, and
# erasure_after_withdrawal caps an erasure's due date (consent.dsr.deadlines.erasure_due)
ACCESS = "access"
ERASURE = "erasure"
AFTER_WITHDRAWAL = "erasure_after_withdrawal"
DEADLINE_KINDS = (ACCESS, ERASURE, AFTER_WITHDRAWAL)
NAME = re.compile(r"[\w-]+")  # of a purpose or a channel
NAME_LENGTH = {"purposes": 64, "channels": 16}  # what the consent tables' columns hold
GPC_PURPOSE = "sale_share"  # what a Global Privacy Control signal opts out of, where it counts


class PolicyError(Exception):
    pass


class Purpose(msgspec.Struct, forbid_unknown_fields=True):
    description: str
    advertising: bool = False
    evidence_required: bool = False
    # The advertiser whose advertising this purpose's consent allows (38-FZ art. 18: consent to
    # advertising is given per advertiser): one purpose per advertiser. A grant's evidence
    # records it, and one naming another advertiser is refused (consent_problems).
    advertiser: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    # Whether a jurisdiction's soft opt-in may cover this purpose: ePrivacy art. 13(2) lets a
    # seller advertise *its own* similar products to its customers by email, never another
    # advertiser's. Only an advertising purpose of the operator's own products may set it.
    soft_opt_in: bool = False


class Channel(msgspec.Struct, forbid_unknown_fields=True):
    address: AddressKind


class IdentityGuards(msgspec.Struct, forbid_unknown_fields=True):
    junk_values: list[str] = []
    junk_emails: list[str] = []
    junk_email_local_parts: list[str] = []
    junk_phones: list[str] = []
    max_identities_per_kind: int = 20
    max_profiles_per_merge: int = 3


class StatsPolicy(msgspec.Struct, forbid_unknown_fields=True):
    # the ISO 4217 currency of customer stats (total_spent): see cdp/stats.py
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")] = "RUB"


class PlatformFile(msgspec.Struct, forbid_unknown_fields=True):
    version: str
    purposes: dict[str, Purpose]
    channels: dict[str, Channel]
    default_jurisdiction: str = "RU"
    identity: IdentityGuards = msgspec.field(default_factory=IdentityGuards)
    stats: StatsPolicy = msgspec.field(default_factory=StatsPolicy)


class Deadline(msgspec.Struct, forbid_unknown_fields=True):
    period: Annotated[int, msgspec.Meta(ge=1)]
    unit: PeriodUnit
    extension: Annotated[int, msgspec.Meta(ge=0)] = 0
    extension_unit: PeriodUnit = "days"


MAX_INACTIVE_DAYS = 36600  # a century: beyond it a period is a typo (and overflows a date)


class Retention(msgspec.Struct, forbid_unknown_fields=True):
    # Storage limitation (GDPR art. 5(1)(e), 152-FZ art. 5(7)): a customer with no activity for
    # this many days is erased (`cdp retention run`, consent/dsr/retention.py). None: never.
    inactive_days: Annotated[int, msgspec.Meta(ge=1, le=MAX_INACTIVE_DAYS)] | None = None


class JurisdictionPurpose(msgspec.Struct, forbid_unknown_fields=True):
    # How long a grant stays in force (152-FZ art. 9(4): a written consent states the period
    # it is valid for): a grant that occurred more days ago than this no longer allows contact
    # on the purpose's opt-in channels (consent.rule.valid_from). None: until withdrawn.
    consent_valid_days: Annotated[int, msgspec.Meta(ge=1, le=MAX_INACTIVE_DAYS)] | None = None


class JurisdictionFile(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    name: str
    phone_region: str
    rules: dict[str, dict[str, Basis]]
    deadlines: dict[str, Deadline]
    laws: list[str] = []
    countries: list[str] = []
    gpc: Literal["ignore", "opt_out_sale"] = "ignore"
    soft_opt_in: bool = False
    # Channels on which advertising may not be sent by automatic dialling or mailing, without a
    # person choosing and calling each number (38-FZ art. 18(2)): a segment that declares it is
    # sent so (`automated`) holds none of this jurisdiction's customers on them.
    no_automated_advertising: list[str] = []
    # the calendar deadlines are counted in (an IANA name, e.g. "Europe/Moscow"); UTC if unset
    timezone: str | None = None
    retention: Retention = msgspec.field(default_factory=Retention)
    # settings of the platform's purposes in this jurisdiction ([purposes.marketing] ...)
    purposes: dict[str, JurisdictionPurpose] = {}


@dataclass(frozen=True, slots=True)
class Policy:
    version: str
    default_jurisdiction: str
    purposes: dict[str, Purpose]
    channels: dict[str, Channel]
    identity: IdentityGuards
    jurisdictions: dict[str, JurisdictionFile]
    stats_currency: str = "RUB"

    def basis(
        self, jurisdiction: str, purpose: str, channel: str, *, automated: bool = False
    ) -> Basis | None:
        """The legal basis, or None where the policy says nothing or forbids it (which means:
        not allowed). `automated`: the messages are sent by automatic dialling or mailing,
        which a jurisdiction may forbid for advertising on a channel."""
        j = self.jurisdictions.get(jurisdiction)
        if j is None or channel not in self.channels:
            return None
        rules = j.rules.get(purpose)
        if rules is None:
            return None
        if (
            automated
            and channel in j.no_automated_advertising
            and self.purposes[purpose].advertising
        ):
            return None
        return rules.get(channel) or rules.get("default")

    def soft_opt_in(self, jurisdiction: str, purpose: str, channel: str) -> bool:
        """Whether an existing customer (one who has bought) may get this purpose's email
        without a grant: ePrivacy art. 13(2), where the operator enables it for a jurisdiction
        (`soft_opt_in = true` in its file), for the advertising of the operator's own products
        (`soft_opt_in = true` on the purpose: never a partner's), by email only, and never
        after an opt-out."""
        j = self.jurisdictions.get(jurisdiction)
        p = self.purposes.get(purpose)
        return (
            j is not None
            and j.soft_opt_in
            and p is not None
            and p.advertising
            and p.soft_opt_in
            and channel == "email"
            and self.basis(jurisdiction, purpose, channel) == "opt_in"
        )

    def evidence_required(self, purpose: str, channel: str | None = None) -> bool:
        """Whether a grant must carry its proof (wording and method): where the purpose says
        so, and wherever a jurisdiction lets the grant decide (opt-in) on the channel, e.g.
        US federal service SMS. A grant without its proof is not a grant (POLICIES.md)."""
        p = self.purposes.get(purpose)
        if p is None or p.evidence_required:
            return True
        return channel is not None and self.opt_in_anywhere(purpose, channel)

    def opt_in_anywhere(
        self, purpose: str, channel: str, jurisdictions: Iterable[str] | None = None
    ) -> bool:
        """Whether a grant decides this purpose on this channel (opt-in) in any of these
        jurisdictions (by default, in any the policy names)."""
        codes = self.jurisdictions if jurisdictions is None else jurisdictions
        return any(self.basis(code, purpose, channel) == "opt_in" for code in codes)

    def address_kind(self, channel: str) -> AddressKind | None:
        c = self.channels.get(channel)
        return None if c is None else c.address

    def phone_region(self, jurisdiction: str | None) -> str:
        j = self.jurisdictions.get(jurisdiction or self.default_jurisdiction)
        if j is None:
            j = self.jurisdictions[self.default_jurisdiction]
        return j.phone_region

    def jurisdiction_for_country(self, country: str | None) -> str | None:
        if not country:
            return None
        for code, j in self.jurisdictions.items():
            if country in j.countries:
                return code
        return None

    def inactive_days(self, jurisdiction: str) -> int | None:
        """The days without activity after which this jurisdiction's customers are erased
        (`[retention] inactive_days`), or None: the operator set no period, never erase."""
        j = self.jurisdictions.get(jurisdiction)
        return None if j is None else j.retention.inactive_days

    def has_validity_periods(self) -> bool:
        """Whether any jurisdiction gives a purpose a validity period (`consent_valid_days`):
        without one no grant ever lapses."""
        return any(
            p.consent_valid_days is not None
            for j in self.jurisdictions.values()
            for p in j.purposes.values()
        )

    def consent_valid_days(self, jurisdiction: str, purpose: str) -> int | None:
        """For how many days a grant of this purpose stays in force in this jurisdiction
        (`[purposes.<purpose>] consent_valid_days`), or None: until it is withdrawn."""
        j = self.jurisdictions.get(jurisdiction)
        p = None if j is None else j.purposes.get(purpose)
        return None if p is None else p.consent_valid_days

    def deadline(self, jurisdiction: str, kind: str) -> Deadline | None:
        j = self.jurisdictions.get(jurisdiction)
        return None if j is None else j.deadlines.get(kind)


def _convert(raw: object, kind: type, name: str, at: str) -> msgspec.Struct:
    """msgspec's conversion, its error naming the file and the key (`deadlines.access.unit`
    rather than msgspec's `$.deadlines[...].unit`)."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        message = str(exc).replace("`$.", f"`{at}." if at else "`").replace("`$`", f"`{at}`")
        if at and " - at `" not in message:  # an unknown key of the entry itself: name it
            message = f"{message} - at `{at}`"
        raise PolicyError(f"{name}: {message}") from exc


def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory ("Europe")
        return False
    return True


def _table(raw: dict, key: str) -> dict:
    """A table of the file, or nothing to check entry by entry (msgspec names what is wrong)."""
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def _check_tables(raw: dict, name: str) -> None:
    """Each rule and deadline on its own, so that an error names its purpose, channel or kind
    (msgspec cannot name the key of a dict entry)."""
    for purpose, rules in _table(raw, "rules").items():
        if not isinstance(rules, dict):
            raise PolicyError(f"{name}: rules.{purpose} must be a table of channel = basis")
        for channel, basis in rules.items():
            if basis not in BASES:
                raise PolicyError(
                    f"{name}: rules.{purpose}.{channel} must be one of {', '.join(BASES)}"
                )
    for kind, table in _table(raw, "deadlines").items():
        if kind not in DEADLINE_KINDS:  # a misspelt one would be a limit silently not kept
            raise PolicyError(
                f"{name}: deadlines.{kind} is not a deadline (one of {', '.join(DEADLINE_KINDS)})"
            )
        _convert(table, Deadline, name, f"deadlines.{kind}")
    for purpose, table in _table(raw, "purposes").items():
        _convert(table, JurisdictionPurpose, name, f"purposes.{purpose}")


def _read(path: Path, kind: type[msgspec.Struct]) -> msgspec.Struct:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path.name}: not valid TOML: {exc}") from exc
    if kind is JurisdictionFile:
        _check_tables(raw, path.name)
    else:
        for section, entry in (("purposes", Purpose), ("channels", Channel)):
            for key, table in _table(raw, section).items():
                _convert(table, entry, path.name, f"{section}.{key}")
    return _convert(raw, kind, path.name, "")


def _check_validity(name: str, j: JurisdictionFile, platform: PlatformFile) -> None:
    """A validity period is for a purpose the platform has, where a grant is what allows
    contact (opt-in) on some channel: on the contract (service messages) or opt-out alone a
    grant decides nothing, and a period there would be a setting that does nothing."""
    for purpose, settings in j.purposes.items():
        if purpose not in platform.purposes:
            raise PolicyError(f"{name}: purposes.{purpose} names an unknown purpose")
        if settings.consent_valid_days is None:
            continue
        rules = j.rules.get(purpose, {})
        at = f"{name}: purposes.{purpose}.consent_valid_days"
        if rules.get("default") == "contract":
            raise PolicyError(
                f"{at} is not allowed: {purpose} rests on the contract here (rules.{purpose}"
                '.default = "contract"), not on consent: a validity period is for a purpose '
                "that needs a grant"
            )
        bases = {rules.get(c) or rules.get("default") for c in platform.channels}
        if "opt_in" not in bases:
            raise PolicyError(
                f"{at} is not allowed: no channel of {purpose} here is opt-in, so a grant "
                "decides nothing and there is no grant to lapse"
            )


def _check_names(platform: PlatformFile) -> None:
    """A purpose or channel is named in import columns (`consent.<purpose>.<channel>.method`,
    split on dots) and in a jurisdiction's rules, where `default` is every other channel: a
    name with a dot or a space, an empty one, or a channel called `default` loaded, and then
    could not be named there (or was read as another). A channel longer than the consent
    tables hold loaded too, and PostgreSQL refused its first consent."""
    for section, names in (("purposes", platform.purposes), ("channels", platform.channels)):
        for name in names:
            if not NAME.fullmatch(name):
                raise PolicyError(
                    f"policy.toml: {section}.{name!r} is not a name: letters, digits, '_' and "
                    "'-' only (import columns are consent.<purpose>.<channel>, split on dots)"
                )
            if len(name) > NAME_LENGTH[section]:
                raise PolicyError(
                    f"policy.toml: {section}.{name} is longer than "
                    f"{NAME_LENGTH[section]} characters"
                )
    if "default" in platform.channels:
        raise PolicyError(
            "policy.toml: channels.default is reserved: in a jurisdiction's rules, default is "
            "the basis of every channel not named"
        )


def load_policy(directory: Path, default_jurisdiction: str | None = None) -> Policy:
    platform_path = directory / "policy.toml"
    if not platform_path.exists():
        raise PolicyError(f"{platform_path}: policy file missing")
    platform = _read(platform_path, PlatformFile)
    assert isinstance(platform, PlatformFile)
    digest = hashlib.sha256(platform_path.read_bytes())
    for name in REQUIRED_PURPOSES:
        if name not in platform.purposes:
            raise PolicyError(f"policy.toml: purposes.{name} is required")
    for name in REQUIRED_CHANNELS:
        if name not in platform.channels:
            raise PolicyError(f"policy.toml: channels.{name} is required")
    if "*" in platform.channels or "*" in platform.purposes:
        raise PolicyError("policy.toml: '*' is reserved and cannot name a purpose or channel")
    _check_names(platform)
    for name, purpose in platform.purposes.items():
        if purpose.advertiser is not None and not purpose.advertising:
            raise PolicyError(
                f"policy.toml: purposes.{name}.advertiser is only for an advertising purpose"
            )
        if purpose.advertiser is not None and not purpose.advertiser.strip():
            raise PolicyError(f"policy.toml: purposes.{name}.advertiser must not be blank")
        if purpose.soft_opt_in and not purpose.advertising:
            raise PolicyError(
                f"policy.toml: purposes.{name}.soft_opt_in is only for an advertising purpose"
            )

    jurisdictions: dict[str, JurisdictionFile] = {}
    country_file: dict[str, str] = {}
    for path in sorted((directory / "jurisdictions").glob("*.toml")):
        j = _read(path, JurisdictionFile)
        assert isinstance(j, JurisdictionFile)
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
        if j.code in jurisdictions:
            raise PolicyError(f"{path.name}: code {j.code!r} is defined twice")
        for purpose, rules in j.rules.items():
            if purpose not in platform.purposes:
                raise PolicyError(f"{path.name}: rules.{purpose} names an unknown purpose")
            for channel in rules:
                if channel != "default" and channel not in platform.channels:
                    raise PolicyError(
                        f"{path.name}: rules.{purpose}.{channel} names an unknown channel"
                    )
        _check_validity(path.name, j, platform)
        for channel in j.no_automated_advertising:
            if channel not in platform.channels:
                raise PolicyError(
                    f"{path.name}: no_automated_advertising names an unknown channel {channel!r}"
                )
        if j.timezone is not None and not _known_zone(j.timezone):
            raise PolicyError(
                f"{path.name}: timezone {j.timezone!r} is not a known time zone (an IANA name "
                "such as 'Europe/Moscow'; the tzdata package has them where the system has none)"
            )
        for country in j.countries:
            if country not in COUNTRIES:
                hint = " (the United Kingdom is GB)" if country.upper() == "UK" else ""
                raise PolicyError(
                    f"{path.name}: countries lists {country!r}, which is not an ISO 3166-1 "
                    f"alpha-2 code in capitals{hint}: no record's country would ever match it"
                )
        if j.phone_region not in phonenumbers.SUPPORTED_REGIONS:
            raise PolicyError(
                f"{path.name}: phone_region {j.phone_region!r} is not a region whose national "
                "numbers can be read (an ISO 3166-1 alpha-2 code in capitals, such as 'DE')"
            )
        for kind in (ACCESS, ERASURE):
            if kind not in j.deadlines:
                raise PolicyError(f"{path.name}: deadlines.{kind} is required")
        for country in j.countries:
            if country in country_file:
                raise PolicyError(
                    f"{path.name}: countries lists {country!r}, which "
                    f"{country_file[country]} lists too: a country has one jurisdiction"
                )
            country_file[country] = path.name
        if j.soft_opt_in and not any(p.soft_opt_in for p in platform.purposes.values()):
            raise PolicyError(
                f"{path.name}: soft_opt_in = true, but no purpose in policy.toml allows it: set "
                "soft_opt_in = true on the purpose advertising your own products (never a "
                "partner's)"
            )
        if j.gpc == "opt_out_sale" and GPC_PURPOSE not in platform.purposes:
            raise PolicyError(
                f"{path.name}: gpc = 'opt_out_sale' needs purposes.{GPC_PURPOSE} in policy.toml"
            )
        jurisdictions[j.code] = j

    default = default_jurisdiction or platform.default_jurisdiction
    if default not in jurisdictions:
        said = (
            "CDP_DEFAULT_JURISDICTION:"
            if default_jurisdiction
            else "policy.toml: default_jurisdiction"
        )
        raise PolicyError(f"{said} {default!r} has no file in {directory / 'jurisdictions'}/")
    return Policy(
        version=f"{platform.version}+{digest.hexdigest()[:12]}",
        default_jurisdiction=default,
        purposes=platform.purposes,
        channels=platform.channels,
        identity=platform.identity,
        jurisdictions=jurisdictions,
        stats_currency=platform.stats.currency,
    )
