"""A business-hours timer on the firing path: due at the instant its calendar
gives (the window's worth of working time), and fired then, not a moment
before; its warnings and steps count business time too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tasks.firing import fire_due
from tests.support.schedules import BERLIN_OFFICE, row, runs_of, start_scheduled, warnings_of

STEPS = (
    {"step": 1, "after_seconds": 0, "action": "notify"},
    {"step": 2, "after_seconds": 8 * 3600, "action": "reassign", "target": "lead"},
)


def at(moment):
    return lambda: moment


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_a_business_hours_timer_is_due_at_the_computed_instant_and_fires_then(
    engine, settings, tenant
):
    # Mon-Fri 09:00-17:00 Berlin (UTC+1 in December). A 2 h timer started
    # Friday 16:30 is due Monday 10:30; its 50 % warning is Monday 09:30.
    timer = start_scheduled(
        engine, tenant[0], window_seconds=7200, started_at=utc(2026, 12, 4, 15, 30),
        thresholds=[50], steps=STEPS, calendar=BERLIN_OFFICE,
    )  # fmt: skip
    due = utc(2026, 12, 7, 9, 30)
    assert timer["due_at"] == due
    assert timer["next_fire_at"] == utc(2026, 12, 7, 8, 30)

    # Friday evening and the weekend: nothing.
    assert fire_due(engine, settings, now=at(utc(2026, 12, 6, 12, 0))).claimed == 0
    fire_due(engine, settings, now=at(utc(2026, 12, 7, 8, 30)))
    assert warnings_of(engine, timer["id"]) == [(50, "SENT")]

    assert fire_due(engine, settings, now=at(due - timedelta(milliseconds=1))).claimed == 0
    report = fire_due(engine, settings, now=at(due))
    assert (report.became_due, report.steps) == (1, 1)
    # Step 2, 8 working hours after due: Tuesday 10:30 Berlin.
    stored = row(engine, timer["id"])
    assert (stored["status"], stored["next_fire_at"]) == ("DUE", utc(2026, 12, 8, 9, 30))
    assert fire_due(engine, settings, now=at(utc(2026, 12, 8, 9, 29, 59))).claimed == 0
    fire_due(engine, settings, now=at(utc(2026, 12, 8, 9, 30)))
    assert runs_of(engine, timer["id"]) == [(1, 0, "SUCCESS"), (2, 0, "SUCCESS")]
    assert row(engine, timer["id"])["status"] == "ESCALATED"


def test_business_hours_across_the_change_to_summer_time(engine, settings, tenant):
    # Friday 26 March 2027 16:30 CET (UTC+1); Berlin moves to CEST (UTC+2) on
    # Sunday 28 March. Due Monday 10:30 CEST = 08:30 UTC.
    timer = start_scheduled(
        engine, tenant[0], window_seconds=7200, started_at=utc(2027, 3, 26, 15, 30),
        calendar=BERLIN_OFFICE,
    )  # fmt: skip
    due = utc(2027, 3, 29, 8, 30)
    assert timer["due_at"] == timer["next_fire_at"] == due
    assert fire_due(engine, settings, now=at(due - timedelta(milliseconds=1))).claimed == 0
    assert fire_due(engine, settings, now=at(due)).became_due == 1
