"""Due dates of erasure requests from the policies, and the request state machine (pure)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cdp.errors import Conflict
from cdp.settings import DEFAULT_POLICY_DIR
from consent.dsr import deadlines, states
from consent.policy import Deadline, load_policy

POLICY = load_policy(Path(DEFAULT_POLICY_DIR))


def at(y: int, m: int, d: int, hour: int = 10) -> datetime:
    return datetime(y, m, d, hour, 30, tzinfo=UTC)


def erasure_due(j: str, received: datetime) -> datetime:
    return deadlines.erasure_due(POLICY, j, received)


def erasure_extended(j: str, received: datetime) -> datetime:
    return deadlines.erasure_due(POLICY, j, received, extended=True)


def test_ru_request_received_on_a_friday_counts_ten_working_days():
    friday = at(2026, 11, 20)
    assert friday.strftime("%A") == "Friday"
    # Mon 23 .. Fri 27 (5), Mon 30 .. Fri 4 December (10); weekends skipped
    assert erasure_due("RU", friday) == at(2026, 12, 4)


def test_ru_working_days_skip_public_holidays():
    # Friday 30 October 2026; 4 November (Unity Day) is a public holiday
    assert erasure_due("RU", at(2026, 10, 30)) == at(2026, 11, 16)
    # Friday 25 December 2026: 31 December and 1-8 January are days off (the holidays package)
    assert not deadlines.is_working_day(date(2026, 12, 31), "RU")
    assert not deadlines.is_working_day(date(2027, 1, 8), "RU")
    # Mon 28 .. Wed 30 (3), Mon 11 .. Fri 15 January (8), Mon 18, Tue 19 (10)
    assert erasure_due("RU", at(2026, 12, 25)) == at(2027, 1, 19)


def test_ru_working_days_count_a_saturday_the_government_made_a_working_day():
    # Saturday 1 November 2025 was a working day (its day off moved to Monday 3 November)
    assert deadlines.is_working_day(date(2025, 11, 1), "RU")
    assert not deadlines.is_working_day(date(2025, 11, 3), "RU")
    # Friday 31 October 2025: Sat 1 (1), Wed 5 .. Fri 7 (4), Mon 10 .. Fri 14 (9), Mon 17 (10)
    assert erasure_due("RU", at(2025, 10, 31)) == at(2025, 11, 17)


def test_ru_days_past_the_last_decreed_year_are_counted_on_the_safe_side():
    """A year whose decree (which Saturdays are made working) the holidays package does not
    know yet: a Saturday may be decreed working, so it counts, and a due date comes no later
    than the decree will make it. The year after the last known one, whatever its version."""
    last = deadlines.decreed_until("RU")
    assert last is not None and last >= 2027
    year = last + 1
    saturday = next(
        d for d in (date(year, 3, 16) + timedelta(n) for n in range(7)) if d.weekday() == 5
    )
    assert deadlines.is_working_day(saturday, "RU")
    assert not deadlines.is_working_day(saturday + timedelta(1), "RU")  # Sundays stay off
    assert not deadlines.is_working_day(date(year, 1, 2), "RU")  # fixed by law, decree or not
    known = next(
        d
        for d in (date(last, 3, 16) + timedelta(n) for n in range(14))
        if d.weekday() == 5 and not deadlines.is_working_day(d, "RU")
    )  # a Saturday of the last decreed year stays as decreed
    assert known.year == last
    # Friday before it: Sat (1), Mon .. Fri (6), Sat (7), Mon, Tue, Wed (10): 12 days on, not 14
    friday = saturday - timedelta(1)
    received = at(friday.year, friday.month, friday.day)
    assert erasure_due("RU", received) == received + timedelta(days=12)
    # a country whose government decrees no working weekend days keeps its weekends off
    assert deadlines.decreed_until("US") is None
    assert not deadlines.is_working_day(saturday, "US")


def test_ru_request_received_at_a_weekend_starts_counting_on_monday():
    saturday = at(2026, 11, 21)
    assert erasure_due("RU", saturday) == erasure_due("RU", at(2026, 11, 20)) == at(2026, 12, 4)


def test_eu_request_received_on_31_january_is_due_at_the_end_of_february():
    assert erasure_due("EU", at(2027, 1, 31)) == at(2027, 2, 28)
    assert erasure_due("EU", at(2028, 1, 31)) == at(2028, 2, 29)  # leap year
    assert erasure_due("EU", at(2026, 3, 15)) == at(2026, 4, 15)


def test_us_ca_request_is_due_in_45_calendar_days():
    assert erasure_due("US-CA", at(2026, 11, 20)) == at(2027, 1, 4)


def test_extension_adds_the_policy_extension():
    # RU: +5 working days
    assert erasure_extended("RU", at(2026, 11, 20)) == at(2026, 12, 11)
    # EU: 1 + 2 months from receipt (31 January -> 30 April, not 28 February + 2 months)
    assert erasure_extended("EU", at(2027, 1, 31)) == at(2027, 4, 30)
    # US-CA: 45 + 45 days
    assert erasure_extended("US-CA", at(2026, 11, 20)) == at(2027, 2, 18)


def test_every_jurisdiction_in_the_policy_has_a_computable_erasure_deadline():
    received = at(2026, 11, 20)
    for code in POLICY.jurisdictions:
        due = erasure_due(code, received)
        assert due > received
        assert erasure_extended(code, received) >= due


def test_add_months_clamps_to_the_end_of_the_month():
    assert deadlines.add_months(date(2026, 8, 31), 1) == date(2026, 9, 30)
    assert deadlines.add_months(date(2026, 12, 31), 2) == date(2027, 2, 28)
    assert deadlines.add_months(date(2026, 11, 30), 3) == date(2027, 2, 28)


def test_state_machine_allows_only_forward_transitions():
    states.check_transition("received", "in_progress")
    states.check_transition("in_progress", "completed")
    states.check_transition("received", "rejected")
    for current, target in [
        ("received", "completed"),  # an erasure is never completed without running
        ("completed", "in_progress"),
        ("rejected", "in_progress"),
        ("completed", "rejected"),
        ("in_progress", "received"),
    ]:
        with pytest.raises(Conflict):
            states.check_transition(current, target)


def test_one_extension_of_an_open_request_only():
    due, now = at(2026, 12, 2), at(2026, 12, 1)
    states.check_extension("received", 0, due, now)
    states.check_extension("in_progress", 0, due, now)
    with pytest.raises(Conflict):
        states.check_extension("in_progress", 1, due, now)
    with pytest.raises(Conflict):
        states.check_extension("completed", 0, due, now)


def test_an_extension_is_taken_before_the_due_date_not_after():
    """GDPR art. 12(3) and 152-FZ art. 20: the customer is told of the extension within the
    period; extending a request already overdue would make a missed deadline look kept."""
    states.check_extension("received", 0, at(2026, 12, 1), at(2026, 12, 1))
    with pytest.raises(Conflict, match="past its due date"):
        states.check_extension("received", 0, at(2026, 11, 30), at(2026, 12, 1))


def test_only_open_requests_past_their_due_date_are_overdue():
    now = at(2026, 12, 1)
    assert states.is_overdue("received", at(2026, 11, 30), now)
    assert states.is_overdue("in_progress", at(2026, 11, 30), now)
    assert not states.is_overdue("completed", at(2026, 11, 30), now)
    assert not states.is_overdue("received", at(2026, 12, 2), now)


def test_ru_erasure_is_never_due_later_than_30_days_after_the_request():
    # 152-FZ art. 21(5): destroyed within 30 days of a withdrawal of consent, which a request to
    # erase is. 10 + 5 working days from mid-December run past the New Year holidays: the
    # extension used to make 25 December 2026 due on 26 January 2027, 32 days later.
    received = at(2026, 12, 25)
    assert erasure_extended("RU", received) == received + timedelta(days=30)
    assert erasure_due("RU", received) == at(2027, 1, 19)  # 10 working days come sooner
    assert erasure_extended("RU", at(2026, 11, 20)) == at(2026, 12, 11)  # no cap needed
    for day in range(730):
        r = at(2026, 1, 1) + timedelta(days=day)
        assert erasure_extended("RU", r) <= r + timedelta(days=30)


MOSCOW = ZoneInfo("Europe/Moscow")


def test_ru_erasure_due_date_counts_moscow_working_days():
    """Friday 4 December 2026 22:30 UTC is Saturday 5 December 01:30 in Moscow: the request
    was received on a day off. Counted on UTC dates it was due 18 December 22:30 UTC, 01:30 on
    Saturday in Moscow, after the legal end (the end of Friday 18 December, Moscow time)."""
    received = datetime(2026, 12, 4, 22, 30, tzinfo=UTC)
    # 10 working days counted from Monday 7 December (Moscow) end on Friday 18 December
    legal_end = datetime(2026, 12, 18, 21, 0, tzinfo=UTC)  # 24:00 Moscow
    due = erasure_due("RU", received)
    assert due <= legal_end
    assert due == datetime(2026, 12, 17, 22, 30, tzinfo=UTC)  # Friday 18 December, 01:30 Moscow
    assert due.astimezone(MOSCOW).date() == date(2026, 12, 18)
    # a minute before Moscow's midnight it is still Friday there: counted from Friday
    friday_late = datetime(2026, 12, 4, 20, 59, tzinfo=UTC)
    assert erasure_due("RU", friday_late) == datetime(2026, 12, 18, 20, 59, tzinfo=UTC)


def test_ru_due_dates_are_the_last_moscow_working_day_at_any_hour_of_receipt():
    """Every hour of two years: the due instant falls on the 10th Moscow working day after the
    Moscow day of receipt (or sooner, at the 30-day limit), never after it ends."""
    start = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    for hour in range(0, 2 * 365 * 24, 5):
        received = start + timedelta(hours=hour)
        local_day = received.astimezone(MOSCOW).date()
        last_day = deadlines.add_working_days(local_day, 10, "RU")
        due = erasure_due("RU", received)
        assert due.astimezone(MOSCOW).date() <= last_day, received
        assert due <= received + timedelta(days=30)
        if due < received + timedelta(days=30):
            assert due.astimezone(MOSCOW).date() == last_day, received


def test_jurisdictions_without_a_timezone_keep_counting_on_utc_dates():
    assert deadlines.zone_of(POLICY, "RU") == MOSCOW
    for code in ("EU", "US-CA", "US"):
        assert deadlines.zone_of(POLICY, code) is None
    late = datetime(2027, 1, 31, 23, 30, tzinfo=UTC)  # 1 February in Berlin, 31 January in UTC
    assert erasure_due("EU", late) == datetime(2027, 2, 28, 23, 30, tzinfo=UTC)
    assert erasure_due("US-CA", late) == late + timedelta(days=45)


def test_working_days_follow_the_calendar_of_the_jurisdiction_named():
    """A policy may count working days anywhere: "US-CA" uses the US calendar with California's
    holidays, and a code the holidays package has no country for ("EU") skips weekends only."""
    cesar_chavez_day = date(2026, 3, 31)  # a Tuesday: a California holiday, not a federal one
    assert not deadlines.is_working_day(cesar_chavez_day, "US-CA")
    assert deadlines.is_working_day(cesar_chavez_day, "US")
    assert deadlines.add_working_days(date(2026, 3, 30), 1, "US-CA") == date(2026, 4, 1)
    # EU: Monday 14 .. Friday 18 December 2026 work, the weekend does not; 25 December (no
    # calendar: no holidays) does
    assert [deadlines.is_working_day(date(2026, 12, d), "EU") for d in range(14, 21)] == [
        True,
        True,
        True,
        True,
        True,
        False,
        False,
    ]
    assert deadlines.is_working_day(date(2026, 12, 25), "EU")
    assert deadlines.add_working_days(date(2026, 12, 18), 1, "EU") == date(2026, 12, 21)


def test_working_days_out_of_range_are_refused():
    """A negative count would never end, a huge one would count for minutes: both are refused,
    the bounds themselves are counted (0: the day itself)."""
    friday = date(2026, 11, 20)
    assert deadlines.add_working_days(friday, 0, "RU") == friday
    assert deadlines.add_working_days(friday, 3660, "EU") > friday + timedelta(days=5000)
    for n in (-1, 3661):
        with pytest.raises(ValueError, match="out of range"):
            deadlines.add_working_days(friday, n, "RU")


def test_calendar_days_in_a_time_zone_keep_the_local_time_across_a_clock_change():
    """`days` counted in a zone with daylight saving time: 30 local days from 10:30 in Berlin
    before the clock goes forward end at 10:30 in Berlin (an hour less than 30 × 24 hours), in
    the receipt's zone."""
    berlin = ZoneInfo("Europe/Berlin")
    received = datetime(2026, 3, 15, 9, 30, tzinfo=UTC)  # 10:30 CET
    due = deadlines.add_period(received, 30, "days", "EU", berlin)
    assert due == datetime(2026, 4, 14, 8, 30, tzinfo=UTC)  # 10:30 CEST
    assert due.astimezone(berlin).hour == 10
    assert due.utcoffset() == timedelta(0)
    assert deadlines.add_period(received, 30, "days", "EU") == received + timedelta(days=30)


def test_an_extension_in_another_unit_counts_from_the_first_due_date():
    """1 month, extended by 10 days: from the end of February (31 January + 1 month, clamped),
    not from 31 January + 10 days."""
    deadline = Deadline(period=1, unit="months", extension=10, extension_unit="days")
    received = at(2027, 1, 31)
    assert deadlines.due_at(received, deadline, "EU") == at(2027, 2, 28)
    assert deadlines.extended_due_at(received, deadline, "EU") == at(2027, 3, 10)


def test_the_binding_jurisdiction_is_the_one_whose_deadline_comes_first():
    """An erasure request naming a laxer law than the customer's own stays due by their own."""
    at = datetime(2026, 12, 7, 10, tzinfo=UTC)
    assert deadlines.binding_jurisdiction(POLICY, "US-CA", "RU", at) == "RU"
    assert deadlines.binding_jurisdiction(POLICY, "RU", "US-CA", at) == "RU"
    assert deadlines.binding_jurisdiction(POLICY, "EU", "US-CA", at) == "EU"
    assert deadlines.binding_jurisdiction(POLICY, "US", "US-CA", at) == "US"  # a tie: as named
