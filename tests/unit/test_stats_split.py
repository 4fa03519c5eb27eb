"""models.stats: how a range splits into rollup days, rollup hours and live
minutes, and how the figures are computed from the statement's rows (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from models.stats import compute, split


def t(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_range_splits_into_days_hours_and_minutes():
    assert split(t(2026, 1, 1, 0, 30), t(2026, 1, 3, 1, 30)) == {
        "hf": t(2026, 1, 1, 1),
        "ht": t(2026, 1, 3, 1),
        "df": t(2026, 1, 2),
        "dt": t(2026, 1, 3),
    }


def test_whole_days_have_no_hours_or_minutes():
    parts = split(t(2026, 1, 1), t(2026, 1, 3))
    assert parts == {
        "hf": t(2026, 1, 1),
        "ht": t(2026, 1, 3),
        "df": t(2026, 1, 1),
        "dt": t(2026, 1, 3),
    }


def test_without_a_whole_hour_everything_is_minutes():
    end = t(2026, 1, 1, 0, 45)
    assert set(split(t(2026, 1, 1, 0, 30), end).values()) == {end}


def test_without_a_whole_day_everything_is_hours_and_minutes():
    parts = split(t(2026, 1, 1, 10, 30), t(2026, 1, 1, 20, 15))
    assert parts["hf"] == t(2026, 1, 1, 11) and parts["ht"] == t(2026, 1, 1, 20)
    assert parts["df"] == parts["dt"] == parts["ht"]


def test_offsets_count_in_utc_and_the_ends_of_the_calendar_do_not_overflow():
    start = datetime(2026, 1, 1, 1, 30, tzinfo=UTC) - timedelta(hours=1)
    assert split(start, t(2026, 1, 2))["hf"] == t(2026, 1, 1, 1)
    last = split(t(9999, 12, 31, 22, 30), t(9999, 12, 31, 23, 59))
    assert set(last.values()) == {t(9999, 12, 31, 23, 59)}


def row(kind, n, key=0, outcome="", at=None):
    return {"kind": kind, "key": key, "outcome": outcome, "n": n, "at": at}


def test_compliance_is_none_until_a_timer_is_decided_and_percentiles_by_nearest_rank():
    now = t(2026, 1, 1)
    empty = compute([row("now", 0, at=now)])
    assert empty["compliance_percent"] is None
    assert empty["time_to_complete_seconds"] == {"completed": 0, "p50": None, "p90": None}
    figures = compute(
        [
            row("now", 0, at=now),
            row("completed_within", 3),
            row("completed_late", 1),
            row("open_breached", 2),
            row("ttc", 2, key=30),
            row("ttc", 1, key=45),
            row("ttc", 1, key=90),
        ]
    )
    assert figures["breached"] == 3
    assert figures["compliance_percent"] == 50.0
    assert figures["time_to_complete_seconds"] == {"completed": 4, "p50": 30, "p90": 90}
