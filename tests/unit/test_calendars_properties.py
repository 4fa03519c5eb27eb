"""Properties of the business-hours arithmetic (models/calendars.py) over random
calendars: zones with DST changes of an hour, half an hour (Lord Howe) and a
skipped day (Apia, 30 December 2011), one to three intervals a day including
overnight shifts and 24:00 ends, explicit and country holidays, starts across
25 years, durations up to three weeks.

The laws the timer schedule relies on:
- the working time between a start and ``business_add(start, s)`` is ``s``;
- adding in two parts equals adding at once;
- a result (``s > 0``) is never strictly inside a closed period;
- ``business_seconds`` is never negative and is additive over adjacent ranges;
and, against an independent model that checks each local shift directly (no
compiled years, no merging, no bisection): what is open, and how much.

The default run stays within a few seconds; ``--slow`` runs the heavier profile."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import cache
from itertools import pairwise
from zoneinfo import ZoneInfo

import holidays as holiday_package
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.calendars import (
    DAYS,
    Calendar,
    business_add,
    business_seconds,
    is_open,
    next_opening,
)

# No example database: the unit tier writes no files.
PROPERTY = settings(database=None, max_examples=100, deadline=None)
HEAVY = settings(database=None, max_examples=3000, deadline=None)

ZONES = (
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "UTC",
)
REGIONS = ((None, None), ("DE", None), ("DE", "BY"), ("US", "NY"))
FIRST, LAST = datetime(2005, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)
MICRO = timedelta(microseconds=1)


def clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


@st.composite
def day_hours(draw) -> list[list[str]]:
    """0 to 3 intervals in order, the last possibly overnight (ending the next day)."""
    count = draw(st.integers(0, 3))
    if count == 0:
        return []
    marks = sorted(draw(st.sets(st.integers(0, 96), min_size=2 * count, max_size=2 * count)))
    minutes = [m * 15 for m in marks]
    intervals = [[clock(minutes[i]), clock(minutes[i + 1])] for i in range(0, 2 * count, 2)]
    intervals[-1][1] = "24:00" if minutes[-1] == 1440 else intervals[-1][1]
    if draw(st.booleans()):  # overnight: the last shift ends the next day
        start = minutes[-2]
        intervals[-1][1] = clock(draw(st.integers(0, 95).filter(lambda m: m * 15 != start)) * 15)
        if intervals[-1][1] > clock(start):  # not overnight after all: keep it a plain interval
            intervals[-1][1] = "24:00"
    return intervals


@st.composite
def calendars(draw) -> tuple[Calendar, datetime]:
    """A calendar and a start instant (whole seconds) near which its holidays fall."""
    if draw(st.booleans()):
        start = draw(st.datetimes(FIRST.replace(tzinfo=None), LAST.replace(tzinfo=None)))
        start = start.replace(microsecond=0, tzinfo=UTC)
    else:  # near a new year, where the compiled years meet
        new_year = datetime(draw(st.integers(FIRST.year, LAST.year)), 1, 1, tzinfo=UTC)
        start = new_year + timedelta(seconds=draw(st.integers(-14 * 86400, 2 * 86400)))
    week = {day: draw(day_hours()) for day in DAYS}
    if not any(week.values()):
        week[draw(st.sampled_from(DAYS))] = [["09:00", "17:00"]]
    offsets = draw(st.lists(st.integers(-3, 40), max_size=6))
    explicit = [(start.date() + timedelta(days=n)).isoformat() for n in offsets]
    country, subdivision = draw(st.sampled_from(REGIONS))
    cal = Calendar.from_json(
        {
            "timezone": draw(st.sampled_from(ZONES)),
            "weekly_hours": week,
            "holidays": explicit,
            "holiday_country": country,
            "holiday_subdivision": subdivision,
        }
    )
    return cal, start


SECONDS = st.integers(0, 21 * 86400)
OFFSETS = st.integers(-2 * 86400, 30 * 86400)  # seconds from the start, for other instants


# The independent model -----------------------------------------------------------------


@cache
def country_holidays(country: str | None, subdivision: str | None):
    if country is None:
        return {}
    return holiday_package.country_holidays(country, subdiv=subdivision)


def model_shifts(cal: Calendar, first: date, last: date) -> list[tuple[datetime, datetime]]:
    """Every shift starting on a local date from ``first`` to ``last``, as UTC
    instants, straight from the rules: skip holidays, read local times with fold=0."""
    zone = ZoneInfo(cal.timezone)
    country = country_holidays(cal.holiday_country, cal.holiday_subdivision)
    shifts = []
    day = first
    while day <= last:
        off = day.isoformat() in cal.holidays or day in country
        for start, end in [] if off else cal.weekly_hours[DAYS[day.weekday()]]:
            opens = datetime.combine(day, datetime.strptime(start, "%H:%M").time(), zone)
            end_day = day + timedelta(days=1) if end == "24:00" or end <= start else day
            end_clock = "00:00" if end == "24:00" else end
            closes = datetime.combine(end_day, datetime.strptime(end_clock, "%H:%M").time(), zone)
            shifts.append((opens.astimezone(UTC), closes.astimezone(UTC)))
        day += timedelta(days=1)
    return shifts


def local_day(cal: Calendar, at: datetime) -> date:
    return at.astimezone(ZoneInfo(cal.timezone)).date()


def model_open(cal: Calendar, at: datetime) -> bool:
    day = local_day(cal, at)
    shifts = model_shifts(cal, day - timedelta(days=2), day + timedelta(days=1))
    return any(opens <= at < closes for opens, closes in shifts)


def model_seconds(cal: Calendar, start: datetime, end: datetime) -> float:
    """The measure of the union of the shifts within [start, end), by brute force."""
    shifts = model_shifts(
        cal, local_day(cal, start) - timedelta(days=2), local_day(cal, end) + timedelta(days=1)
    )
    cuts = sorted({start, end, *(t for s in shifts for t in s if start < t < end)})
    total = timedelta(0)
    for left, right in pairwise(cuts):
        if any(opens <= left < closes for opens, closes in shifts):
            total += right - left
    return total.total_seconds()


# The laws ---------------------------------------------------------------------------------


@PROPERTY
@given(calendars(), SECONDS)
def test_the_working_time_between_start_and_result_is_the_seconds_added(drawn, seconds):
    cal, start = drawn
    assert business_seconds(cal, start, business_add(cal, start, seconds)) == seconds


@PROPERTY
@given(calendars(), SECONDS, SECONDS)
def test_adding_in_two_parts_equals_adding_at_once(drawn, first, second):
    cal, start = drawn
    at_once = business_add(cal, start, first + second)
    assert business_add(cal, business_add(cal, start, first), second) == at_once


@PROPERTY
@given(calendars(), SECONDS.filter(bool))
def test_a_result_is_never_strictly_inside_a_closed_period(drawn, seconds):
    # The result ends some open time: the instant just before it is open.
    cal, start = drawn
    result = business_add(cal, start, seconds)
    assert result > start and is_open(cal, result - MICRO)
    assert model_open(cal, result - MICRO)


@PROPERTY
@given(calendars(), OFFSETS, OFFSETS)
def test_business_seconds_is_monotone_and_additive_over_adjacent_ranges(drawn, one, two):
    cal, start = drawn
    middle, end = sorted([start + timedelta(seconds=one), start + timedelta(seconds=two)])
    if end < start:
        start, middle, end = middle, end, start
    elif middle < start:
        start, middle = middle, start
    first, second = business_seconds(cal, start, middle), business_seconds(cal, middle, end)
    assert first >= 0 and second >= 0
    assert business_seconds(cal, start, end) == first + second
    assert business_seconds(cal, end, start) == -(first + second)


@PROPERTY
@given(calendars(), OFFSETS)
def test_what_is_open_agrees_with_the_shifts_read_directly(drawn, offset):
    cal, start = drawn
    at = start + timedelta(seconds=offset)
    assert is_open(cal, at) == model_open(cal, at)
    opening = next_opening(cal, at)
    assert is_open(cal, opening) and business_seconds(cal, at, opening) == 0
    if opening > at:
        assert not model_open(cal, opening - MICRO) and model_open(cal, opening)


@PROPERTY
@given(calendars(), st.integers(0, 7 * 86400))
def test_the_working_time_agrees_with_the_shifts_read_directly(drawn, span):
    cal, start = drawn
    end = start + timedelta(seconds=span)
    assert business_seconds(cal, start, end) == model_seconds(cal, start, end)


@pytest.mark.slow
@HEAVY
@given(calendars(), SECONDS, SECONDS, st.integers(0, 3 * 86400))
def test_all_laws_on_many_more_calendars(drawn, first, second, span):
    cal, start = drawn
    once = business_add(cal, start, first + second)
    assert business_add(cal, business_add(cal, start, first), second) == once
    assert business_seconds(cal, start, once) == first + second
    assert first + second == 0 or model_open(cal, once - MICRO)
    end = start + timedelta(seconds=span)
    assert business_seconds(cal, start, end) == model_seconds(cal, start, end)
