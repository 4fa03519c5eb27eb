"""Business-hours calendars: pure arithmetic on working time (no I/O).

A calendar is a time zone, weekly hours, explicit holiday dates and optionally a
country's (and subdivision's) holidays from the ``holidays`` package. Its open
time is a union of shifts: for each local date that is not a holiday, each
interval of its weekday, from local start to local end (an end at or before the
start is on the next day; "24:00" is the day's end). The rules, in full in
docs/calendars.md: intervals are ``[start, end)``; a holiday removes the shifts
that start on it; local times map to UTC with ``fold=0`` and working time is real
elapsed time; overlaps within a day are an error, shifts meeting across days merge.

``business_add(cal, t, s)`` is the instant at which ``s`` seconds of working
time have elapsed since ``t`` (counting from the next opening); ``s == 0`` gives
``t``. For ``s > 0`` the result is in an open shift or at its end, never strictly
inside a closed period. Both it and ``business_seconds`` are exact to the
microsecond, so ``add(add(t, a), b) == add(t, a + b)``: a pause is a pure shift
of the timer's schedule. ``calendar=None`` means every second counts. Datetimes
are aware; results are UTC. A calendar compiles once into per-UTC-year arrays of
open spans with cumulative working time, so a call is a few bisections; with no
open time for ``MAX_CLOSED_YEARS`` years a call raises ``CalendarError``.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache, lru_cache
from itertools import accumulate, pairwise
from typing import Any
from zoneinfo import ZoneInfo

import holidays as holiday_package
import orjson

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_CLOSED_YEARS = 2  # consecutive UTC years without open time before giving up
ROW_CACHE_SIZE = 1024  # parsed calendars kept by calendar_from_row

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d)|24:00")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_FIELDS = ("timezone", "weekly_hours", "holidays", "holiday_country", "holiday_subdivision")


class CalendarError(ValueError):
    """A calendar that cannot be used: ``field`` names the JSON member
    (``weekly_hours.mon[0]``), ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Calendar:
    """A validated calendar; build it with ``from_json``. ``weekly_hours`` has
    the seven keys of ``DAYS``, each a tuple of ``("HH:MM", "HH:MM")`` pairs."""

    timezone: str
    weekly_hours: Mapping[str, tuple[tuple[str, str], ...]]
    holidays: tuple[str, ...] = ()
    holiday_country: str | None = None
    holiday_subdivision: str | None = None
    _plan: _Plan | None = field(default=None, init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        week = tuple(self.weekly_hours.get(day, ()) for day in DAYS)
        return hash((self.timezone, week, self.holidays, self.holiday_country))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Calendar:
        """Validate and normalize; raise ``CalendarError`` naming the field."""
        if not isinstance(data, Mapping):
            raise CalendarError("calendar", "must be an object")
        for key in data:
            if key not in _FIELDS:
                raise CalendarError(str(key), f"unknown field; the fields are {', '.join(_FIELDS)}")
        country, subdivision = _holiday_region(
            data.get("holiday_country"), data.get("holiday_subdivision")
        )
        calendar = cls(
            timezone=_zone_name(data.get("timezone")),
            weekly_hours=_weekly_hours(data.get("weekly_hours")),
            holidays=_holiday_dates(data.get("holidays")),
            holiday_country=country,
            holiday_subdivision=subdivision,
        )
        if not any(calendar.weekly_hours.values()):
            raise CalendarError("weekly_hours", "has no working time: give at least one interval")
        return calendar

    def to_json(self) -> dict[str, Any]:
        return {
            "timezone": self.timezone,
            "weekly_hours": {d: [list(i) for i in self.weekly_hours.get(d, ())] for d in DAYS},
            "holidays": list(self.holidays),
            "holiday_country": self.holiday_country,
            "holiday_subdivision": self.holiday_subdivision,
        }

    def plan(self) -> _Plan:
        if self._plan is None:  # compiled once, kept on the (frozen) instance
            object.__setattr__(self, "_plan", _Plan(self))
        return self._plan


def _zone_name(value: Any) -> str:
    reason = "must be an IANA time zone name, such as Europe/Berlin"
    if not isinstance(value, str) or not value:
        raise CalendarError("timezone", reason)
    try:
        ZoneInfo(value)
    except (ValueError, KeyError, OSError) as exc:  # unknown, or not a zone file's name
        raise CalendarError("timezone", f"unknown time zone {value!r}; {reason}") from exc
    return value


def _minutes(text: str) -> int:
    hours, _, minutes = text.partition(":")
    return int(hours) * 60 + int(minutes)


def _weekly_hours(value: Any) -> dict[str, tuple[tuple[str, str], ...]]:
    if not isinstance(value, Mapping):
        raise CalendarError(
            "weekly_hours", 'must be an object such as {"mon": [["09:00", "17:00"]]}'
        )
    unknown = [day for day in value if day not in DAYS]
    if unknown:
        raise CalendarError(f"weekly_hours.{unknown[0]}", f"unknown day; use {', '.join(DAYS)}")
    week: dict[str, tuple[tuple[str, str], ...]] = {}
    for day in DAYS:
        intervals = [] if value.get(day) is None else value[day]
        if not isinstance(intervals, list | tuple):
            raise CalendarError(f"weekly_hours.{day}", 'must be a list of ["HH:MM", "HH:MM"] pairs')
        spans = []
        for n, interval in enumerate(intervals):
            where = f"weekly_hours.{day}[{n}]"
            if not (isinstance(interval, list | tuple) and len(interval) == 2):
                raise CalendarError(where, 'must be a ["HH:MM", "HH:MM"] pair')
            start, end = interval
            for text in (start, end):
                if not (isinstance(text, str) and _CLOCK.fullmatch(text)):
                    raise CalendarError(where, f"{text!r} is not a time from 00:00 to 24:00")
            if start == "24:00":
                raise CalendarError(where, "24:00 can only end an interval")
            begin, finish = _minutes(start), _minutes(end)
            if finish == begin:
                raise CalendarError(where, "start equals end; a whole day is 00:00-24:00")
            finish += 1440 if finish < begin else 0  # overnight: ends the next day
            spans.append((begin, finish, n))
        spans.sort()
        for (_, finish, n), (begin, _, m) in pairwise(spans):
            if begin < finish:
                raise CalendarError(f"weekly_hours.{day}[{m}]", f"overlaps weekly_hours.{day}[{n}]")
        week[day] = tuple((str(i[0]), str(i[1])) for i in intervals)
    return week


def _holiday_dates(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise CalendarError("holidays", 'must be a list of dates such as "2026-12-25"')
    for n, text in enumerate(value):
        try:
            if not (isinstance(text, str) and _ISO_DATE.fullmatch(text)):
                raise ValueError(text)
            date.fromisoformat(text)
        except ValueError:
            raise CalendarError(f"holidays[{n}]", f"{text!r} is not a date YYYY-MM-DD") from None
    return tuple(sorted(set(value)))


@cache
def _supported() -> dict[str, tuple[str, dict[str, str]]]:
    """Upper-cased country code -> (the package's code, {upper-cased subdivision: its code})."""
    return {
        code.upper(): (code, {s.upper(): s for s in subdivisions})
        for code, subdivisions in holiday_package.list_supported_countries().items()
    }


def _holiday_region(country: Any, subdivision: Any) -> tuple[str | None, str | None]:
    if country is None:
        if subdivision is not None:
            raise CalendarError("holiday_subdivision", "needs holiday_country")
        return None, None
    known = _supported().get(country.upper()) if isinstance(country, str) else None
    if known is None:
        raise CalendarError("holiday_country", f"{country!r} is not a supported country code")
    code, subdivisions = known
    if subdivision is None:
        return code, None
    sub = subdivisions.get(subdivision.upper()) if isinstance(subdivision, str) else None
    if sub is None:
        choices = ", ".join(sorted(subdivisions.values())) or "none"
        raise CalendarError(
            "holiday_subdivision",
            f"{subdivision!r} is not a subdivision of {code}; they are: {choices}",
        )
    return code, sub


@lru_cache(maxsize=4096)
def _country_holidays(country: str, subdivision: str | None, year: int) -> frozenset[date]:
    return frozenset(holiday_package.country_holidays(country, subdiv=subdivision, years=year))


def _us(at: datetime) -> int:
    """Microseconds since the epoch; naive datetimes are refused."""
    if at.tzinfo is None:
        raise ValueError("calendar arithmetic needs timezone-aware datetimes")
    return (at - _EPOCH) // _US


def _instant(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class _Year:
    """The open spans ``[starts[i], ends[i])`` inside one UTC year (µs since the
    epoch), with the working time elapsed in the year at each span's end."""

    __slots__ = ("cum_end", "ends", "starts", "total")

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        self.starts = [s for s, _ in spans]
        self.ends = [e for _, e in spans]
        self.cum_end = list(accumulate(e - s for s, e in spans))
        self.total = self.cum_end[-1] if spans else 0

    def position(self, t: int) -> int:
        """Working time in the year up to instant ``t``."""
        i = bisect_right(self.starts, t) - 1
        if i < 0:
            return 0
        return self.cum_end[i] - max(self.ends[i] - t, 0)

    def instant(self, worked: int) -> int:
        """The instant at which ``worked`` (0 < worked <= total) is reached."""
        i = bisect_left(self.cum_end, worked)
        return self.ends[i] - (self.cum_end[i] - worked)


class _Plan:
    """A calendar compiled for arithmetic; ``year(y)`` is built once per UTC year."""

    def __init__(self, calendar: Calendar) -> None:
        self.zone = ZoneInfo(calendar.timezone)
        self.shifts = tuple(
            tuple(_shift_minutes(i) for i in calendar.weekly_hours.get(day, ())) for day in DAYS
        )
        self.explicit = frozenset(date.fromisoformat(d) for d in calendar.holidays)
        self.country = calendar.holiday_country
        self.subdivision = calendar.holiday_subdivision
        self.years: dict[int, _Year] = {}

    def is_holiday(self, day: date) -> bool:
        if day in self.explicit:
            return True
        return self.country is not None and day in _country_holidays(
            self.country, self.subdivision, day.year
        )

    def year(self, year: int) -> _Year:
        found = self.years.get(year)
        if found is None:
            found = self.years[year] = _Year(self._spans(year))
        return found

    def _local(self, day: date, minutes: int) -> int:
        day += timedelta(days=minutes // 1440)
        minutes %= 1440
        wall = datetime(day.year, day.month, day.day, minutes // 60, minutes % 60, tzinfo=self.zone)
        return _us(wall)

    def _spans(self, year: int) -> list[tuple[int, int]]:
        low = _us(datetime(year, 1, 1, tzinfo=UTC))
        high = _us(datetime(year + 1, 1, 1, tzinfo=UTC))
        # Local dates whose shifts can reach into the UTC year: offsets stay within
        # -12 h..+14 h and a shift ends before the second midnight after its date.
        day, last = date(year - 1, 12, 30), date(year + 1, 1, 1)
        raw = []
        while day <= last:
            if self.shifts[day.weekday()] and not self.is_holiday(day):
                for begin, finish in self.shifts[day.weekday()]:
                    start, end = self._local(day, begin), self._local(day, finish)
                    if end > start:  # a shift inside a DST gap can come out empty
                        raw.append((start, end))
            day += timedelta(days=1)
        raw.sort()
        merged: list[list[int]] = []
        for start, end in raw:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        return [(max(s, low), min(e, high)) for s, e in merged if min(e, high) > max(s, low)]


def _shift_minutes(interval: tuple[str, str]) -> tuple[int, int]:
    begin, finish = _minutes(interval[0]), _minutes(interval[1])
    return begin, finish + (1440 if finish <= begin else 0)


def _no_open_time(at: int) -> CalendarError:
    return CalendarError(
        "weekly_hours",
        f"no working time within {MAX_CLOSED_YEARS} years after {_instant(at).isoformat()}",
    )


def business_add(calendar: Calendar | None, start: datetime, seconds: float) -> datetime:
    """The instant at which ``seconds`` (>= 0) of working time have elapsed since ``start``."""
    if seconds < 0:
        raise ValueError("seconds must not be negative")
    t = _us(start)  # refuses a naive start, with or without a calendar
    if calendar is None:
        return (start + timedelta(seconds=seconds)).astimezone(UTC)
    need = round(seconds * 1_000_000)
    if need == 0:
        return start.astimezone(UTC)
    plan, year = calendar.plan(), start.astimezone(UTC).year
    chunk = plan.year(year)
    need += chunk.position(t)
    closed = 0
    while need > chunk.total:
        need -= chunk.total
        closed = closed + 1 if chunk.total == 0 else 0
        if closed >= MAX_CLOSED_YEARS:
            raise _no_open_time(t)
        year += 1
        chunk = plan.year(year)
    return _instant(chunk.instant(need))


def business_seconds(calendar: Calendar | None, start: datetime, end: datetime) -> float:
    """Working seconds between ``start`` and ``end`` (negative if ``end`` is earlier)."""
    if calendar is None:
        return (end - start).total_seconds()
    if end < start:
        return -business_seconds(calendar, end, start)
    plan = calendar.plan()
    first, last = start.astimezone(UTC).year, end.astimezone(UTC).year
    worked = plan.year(last).position(_us(end)) - plan.year(first).position(_us(start))
    for year in range(first, last):
        worked += plan.year(year).total
    return worked / 1_000_000


def is_open(calendar: Calendar | None, at: datetime) -> bool:
    """Whether ``at`` lies in an open shift (``[start, end)``)."""
    if calendar is None:
        return True
    chunk, t = calendar.plan().year(at.astimezone(UTC).year), _us(at)
    i = bisect_right(chunk.starts, t) - 1
    return i >= 0 and t < chunk.ends[i]


def next_opening(calendar: Calendar | None, at: datetime) -> datetime:
    """``at`` if it is open, else the start of the next open shift."""
    if is_open(calendar, at):
        return at.astimezone(UTC)
    assert calendar is not None
    plan, year, t = calendar.plan(), at.astimezone(UTC).year, _us(at)
    chunk = plan.year(year)
    i = bisect_right(chunk.starts, t)
    for _ in range(MAX_CLOSED_YEARS + 1):
        if i < len(chunk.starts):
            return _instant(chunk.starts[i])
        year, i = year + 1, 0
        chunk = plan.year(year)
    raise _no_open_time(t)


_rows: dict[bytes, Calendar] = {}


def calendar_from_row(data: Mapping[str, Any] | str | bytes | None) -> Calendar | None:
    """The calendar of a stored JSON value (a mapping or its text), parsed once
    per distinct JSON; None stays None (every second counts)."""
    if data is None or isinstance(data, Calendar):
        return data
    if isinstance(data, str | bytes):
        data = orjson.loads(data)
    key = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    found = _rows.get(key)
    if found is None:
        if len(_rows) >= ROW_CACHE_SIZE:
            _rows.clear()
        found = _rows[key] = Calendar.from_json(data)
    return found
