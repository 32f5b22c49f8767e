"""When a data subject request is due: pure functions over the policy's deadlines.

Units (policies/jurisdictions/*.toml, `deadlines.<kind>`):
- `days`: calendar days;
- `working_days`: days that are neither weekend nor public holiday in the jurisdiction's
  country (the `holidays` package: Russian holidays, transferred days off, and the Saturdays
  the government makes working days); counting starts the day after receipt. Where a country's
  government decrees its working weekend days year by year (Russia: a Saturday made working
  for a day off moved), a year past the last decree the package knows is counted on the safe
  side: a weekend day other than Sunday counts as working, since any of them may be decreed
  so, and only the holidays fixed by law are off. A due date is then never later than the
  decrees will make it, only up to a few days earlier; update the `holidays` package each year
  (0.109 knows Russia's decrees through 2027) to count such a year exactly;
- `months`: calendar months, clamped to the month's end (31 January + 1 month = end of
  February).
Days are the jurisdiction's local days: the receipt, and every date above, are taken in its
`timezone` (policies/jurisdictions/*.toml; RU: Europe/Moscow), in UTC where it names none. The
due instant keeps the local time of day of receipt, on the last local day, so it is never later
than the end of that day there. (Counting on UTC dates, a request received on Friday at 22:30
UTC, 01:30 on Saturday in Moscow, was counted from a working Friday and came due at 01:30 on the
day after the last Moscow day.)

An extension counts from the receipt as one longer period when its unit matches (EU: 1 + 2
months = 3 months from receipt, so 31 January extends to 30 April, not 28 April), otherwise
from the current due date. An erasure request is never due later than the policy's limit after
a withdrawal of consent (`erasure_due`).
"""

from __future__ import annotations

import calendar
from datetime import date, datetime, timedelta, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

from consent.policy import AFTER_WITHDRAWAL, ERASURE, Deadline, Policy

_MAX_WORKING_DAYS = 3660
SUNDAY = 6


@lru_cache(maxsize=32)
def _calendar(jurisdiction: str) -> holidays.HolidayBase | None:
    """Public holidays of the jurisdiction's country ("US-CA": the US, subdivision CA)."""
    country, _, subdiv = jurisdiction.partition("-")
    try:
        return holidays.country_holidays(country, subdiv=subdiv or None)
    except NotImplementedError:
        return None  # no calendar (e.g. "EU"): weekends only


@lru_cache(maxsize=32)
def decreed_until(jurisdiction: str) -> int | None:
    """The last year whose working weekend days the `holidays` package knows, for a country
    whose government decrees them year by year (Russia); None for a country that decrees none
    (its weekends are always off) or that has no calendar."""
    cal = _calendar(jurisdiction)
    years = sorted(getattr(cal, "special_public_holidays", None) or ())
    if cal is None or not years:
        return None
    country, _, subdiv = jurisdiction.partition("-")
    decreed = holidays.country_holidays(country, subdiv=subdiv or None, years=years)
    return years[-1] if getattr(decreed, "weekend_workdays", None) else None


def is_working_day(day: date, jurisdiction: str) -> bool:
    cal = _calendar(jurisdiction)
    if cal is None:
        return day.weekday() < 5
    if day in cal:  # also fills the year's weekend_workdays
        return False
    if day.weekday() in cal.weekend:
        last = decreed_until(jurisdiction)
        if last is not None and day.year > last:  # not decreed yet: may be made working
            return day.weekday() != SUNDAY
        return day in getattr(cal, "weekend_workdays", ())
    return True


def add_working_days(day: date, n: int, jurisdiction: str) -> date:
    """The n-th working day after `day` (n = 0: `day` itself)."""
    if n < 0 or n > _MAX_WORKING_DAYS:
        raise ValueError("working days out of range")
    current = day
    while n:
        current += timedelta(days=1)
        if is_working_day(current, jurisdiction):
            n -= 1
    return current


def add_months(day: date, n: int) -> date:
    """Calendar months, clamped to the end of the target month."""
    index = day.year * 12 + day.month - 1 + n
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


@lru_cache(maxsize=32)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def zone_of(policy: Policy, jurisdiction: str) -> tzinfo | None:
    """The time zone the jurisdiction's days are counted in (None: UTC)."""
    j = policy.jurisdictions.get(jurisdiction)
    return None if j is None or j.timezone is None else _zone(j.timezone)


def add_period(
    start: datetime, amount: int, unit: str, jurisdiction: str, tz: tzinfo | None = None
) -> datetime:
    """`start` plus the period, on the calendar of `tz` (None: UTC dates, and `days` as
    24-hour days). The result is in `start`'s zone."""
    local = start if tz is None else start.astimezone(tz)
    if unit == "days":
        if tz is None:
            return start + timedelta(days=amount)
        day = local.date() + timedelta(days=amount)
    elif unit == "working_days":
        day = add_working_days(local.date(), amount, jurisdiction)
    elif unit == "months":
        day = add_months(local.date(), amount)
    else:
        raise ValueError(f"unknown period unit {unit!r}")
    due = datetime.combine(day, local.timetz())  # the same local time, on the last local day
    return due if tz is None else due.astimezone(start.tzinfo)


def due_at(
    received_at: datetime, deadline: Deadline, jurisdiction: str, tz: tzinfo | None = None
) -> datetime:
    return add_period(received_at, deadline.period, deadline.unit, jurisdiction, tz)


def extended_due_at(
    received_at: datetime, deadline: Deadline, jurisdiction: str, tz: tzinfo | None = None
) -> datetime:
    """The due date after the policy's one extension."""
    if deadline.extension_unit == deadline.unit:
        return add_period(
            received_at, deadline.period + deadline.extension, deadline.unit, jurisdiction, tz
        )
    base = due_at(received_at, deadline, jurisdiction, tz)
    return add_period(base, deadline.extension, deadline.extension_unit, jurisdiction, tz)


def erasure_due(
    policy: Policy, jurisdiction: str, received_at: datetime, *, extended: bool = False
) -> datetime:
    """When an erasure request is due: by `deadlines.erasure` (after its extension, where one
    was taken), and never later than `deadlines.erasure_after_withdrawal` where the policy
    sets one (RU: 30 days, 152-FZ art. 21(5)), since a request to erase withdraws consent to
    the processing. 10 + 5 working days from mid-December run past 30 days."""
    deadline = policy.deadline(jurisdiction, ERASURE)
    if deadline is None:
        raise ValueError("the jurisdiction has no erasure deadline")
    tz = zone_of(policy, jurisdiction)
    if extended:
        due = extended_due_at(received_at, deadline, jurisdiction, tz)
    else:
        due = due_at(received_at, deadline, jurisdiction, tz)
    limit = policy.deadline(jurisdiction, AFTER_WITHDRAWAL)
    return due if limit is None else min(due, due_at(received_at, limit, jurisdiction, tz))


def binding_jurisdiction(policy: Policy, named: str, own: str, received_at: datetime) -> str:
    """Of the jurisdiction an erasure request names and the customer's own, the one whose
    deadline comes first: naming a laxer law (a Russian customer's request under US-CA, 45
    days) does not release the operator from the customer's own (10 working days). The due
    date and the extension follow it. On a tie, the one named."""
    if named == own:
        return named
    return min((named, own), key=lambda j: erasure_due(policy, j, received_at))
