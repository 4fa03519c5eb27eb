"""Repeating escalation steps: each (step, repeat) run exactly once, in
firing order, ending at max_repeats or when the timer completes (the rest
recorded SKIPPED, bounded by SLA_MAX_STEP_REPEATS)."""

from __future__ import annotations

from datetime import timedelta

from models import timers as timer_sql
from models.sla import utcnow
from tasks.firing import fire_due
from tests.support.schedules import events_of, row, runs_of, start_scheduled

PAGE_TWICE_MORE = (
    {"step": 1, "after_seconds": 0, "action": "page", "repeat_every_seconds": 60,
     "max_repeats": 2},
    {"step": 2, "after_seconds": 90, "action": "reassign", "target": "lead"},
)  # fmt: skip
PAGE_UNTIL_HANDLED = (
    {"step": 1, "after_seconds": 0, "action": "page", "repeat_every_seconds": 60},
)


def at(moment):
    return lambda: moment


def test_repeats_run_each_once_in_order_and_end_at_max_repeats(engine, settings, tenant):
    started = utcnow()
    timer = start_scheduled(
        engine, tenant[0], window_seconds=100, started_at=started, steps=PAGE_TWICE_MORE
    )
    due = started + timedelta(seconds=100)
    for seconds in (0, 0, 59, 60, 90, 90, 119):  # duplicates and early wake-ups included
        fire_due(engine, settings, now=at(due + timedelta(seconds=seconds)))
    assert runs_of(engine, timer["id"]) == [(1, 0, "SUCCESS"), (1, 1, "SUCCESS"), (2, 0, "SUCCESS")]
    assert row(engine, timer["id"])["next_fire_at"] == due + timedelta(seconds=120)

    fire_due(engine, settings, now=at(due + timedelta(seconds=120)))
    assert runs_of(engine, timer["id"])[-1] == (1, 2, "SUCCESS")
    stored = row(engine, timer["id"])
    assert (stored["status"], stored["steps_done"], stored["next_fire_at"]) == (
        "ESCALATED",
        4,
        None,
    )
    assert fire_due(engine, settings, now=at(due + timedelta(days=1))).claimed == 0

    keys = [
        e["idempotency_key"] for e in events_of(engine, timer["id"], "sla.escalation.triggered")
    ]
    tid = timer["id"]
    assert keys == [f"{tid}:step:1", f"{tid}:step:1:r1", f"{tid}:step:2", f"{tid}:step:1:r2"]
    repeats = [
        e["payload"]["repeat"] for e in events_of(engine, timer["id"], "sla.escalation.triggered")
    ]
    assert repeats == [0, 1, 0, 2]


def test_a_late_fire_runs_every_passed_repeat_once(engine, settings, tenant):
    started = utcnow()
    timer = start_scheduled(
        engine, tenant[0], window_seconds=100, started_at=started, steps=PAGE_TWICE_MORE
    )
    fire_due(engine, settings, now=at(started + timedelta(hours=1)))
    assert runs_of(engine, timer["id"]) == [
        (1, 0, "SUCCESS"),
        (1, 1, "SUCCESS"),
        (2, 0, "SUCCESS"),
        (1, 2, "SUCCESS"),
    ]


def test_open_ended_repeats_end_on_completion(engine, settings, tenant):
    started = utcnow()
    timer = start_scheduled(
        engine, tenant[0], window_seconds=100, started_at=started, steps=PAGE_UNTIL_HANDLED
    )
    due = started + timedelta(seconds=100)
    for seconds in (0, 60, 120):
        fire_due(engine, settings, now=at(due + timedelta(seconds=seconds)))
    assert runs_of(engine, timer["id"]) == [(1, r, "SUCCESS") for r in range(3)]
    with engine.begin() as conn:
        timer_sql.finish_timer(conn, tenant[0], timer["id"], "complete")

    runs = runs_of(engine, timer["id"])
    cap = settings.max_step_repeats
    assert runs[3:] == [(1, r, "SKIPPED") for r in range(3, cap + 1)]
    assert fire_due(engine, settings, now=at(due + timedelta(days=30))).claimed == 0
    assert len(runs_of(engine, timer["id"])) == cap + 1


def test_cancel_skips_the_remaining_repeats_up_to_max_repeats(engine, settings, tenant, api):
    started = utcnow()
    timer = start_scheduled(
        engine, tenant[0], window_seconds=100, started_at=started, steps=PAGE_TWICE_MORE
    )
    fire_due(engine, settings, now=at(started + timedelta(seconds=100)))
    body = api.post(f"/v1/timers/{timer['id']}/cancel").json
    # (sorted: the fire is dated in the future, by its test clock)
    assert sorted((e["step"], e["repeat"], e["outcome"]) for e in body["escalations"]) == [
        (1, 0, "SUCCESS"),
        (1, 1, "SKIPPED"),
        (1, 2, "SKIPPED"),
        (2, 0, "SKIPPED"),
    ]
