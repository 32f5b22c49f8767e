"""When each value of a profile was given, so that the latest non-empty value wins field by
field, also when two profiles merge (plain Python: no database).

A profile's values are its encrypted fields, `country`, `city` and each trait
(`traits.<name>`). The time of a value is `profiles.field_times[name]` where that holds one, else
the profile's `updated_at`: a record that gives values sets `updated_at` and pins the time of the
values it leaves as they were (`pinned`), so most profiles, whose values all came at once,
store no times. A merge takes each value from the profile that was given it last (`newer`).

Before, a merge took every value from the profile updated last as a whole: a record that gave one
profile only a new city made its year-old name win over the name the other profile had been
given since, and a batch (which merges before it applies its records) and single requests (which
apply a record before a later one merges) gave different names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from cdp.db.tables import ENCRYPTED_PROFILE_FIELDS

PLAIN_FIELDS = ("country", "city")


def trait_key(name: str) -> str:
    return f"traits.{name}"


def present(values: Mapping[str, Any], traits: Mapping[str, Any]) -> list[str]:
    """The names of the values a profile holds (`values`: its fields by name)."""
    names = [n for n in (*ENCRYPTED_PROFILE_FIELDS, *PLAIN_FIELDS) if values.get(n) is not None]
    return [*names, *(trait_key(k) for k in traits)]


def time_of(times: Mapping[str, str] | None, updated_at: datetime, name: str) -> datetime:
    at = (times or {}).get(name)
    return updated_at if at is None else datetime.fromisoformat(at)


def pinned(
    times: Mapping[str, str] | None, updated_at: datetime, names: Iterable[str]
) -> dict[str, str]:
    """The times of `names`, each written out (for a profile whose `updated_at` moves on while
    these values stay as they were)."""
    return {n: time_of(times, updated_at, n).isoformat() for n in names}


def newer(
    a_times: Mapping[str, str] | None,
    a_updated: datetime,
    s_times: Mapping[str, str] | None,
    s_updated: datetime,
    name: str,
) -> bool:
    """Whether the absorbed profile's value of `name` was given after the survivor's."""
    return time_of(a_times, a_updated, name) > time_of(s_times, s_updated, name)
