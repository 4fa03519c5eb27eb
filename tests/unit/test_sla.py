from datetime import UTC, datetime, timedelta

import pytest

from models.sla import (
    Schedule,
    Step,
    backoff_seconds,
    due_at,
    ladder,
    ladder_problem,
    plan_fire,
    wakeup_instant,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LADDER = ladder(
    [
        {"step": 1, "after_seconds": 0, "action": "notify"},
        {"step": 2, "after_seconds": 600, "action": "reassign", "target": "team-lead"},
        {"step": 3, "after_seconds": 3600, "action": "page"},
    ]
)


def plan(status="ACTIVE", done=0, at=T0):
    schedule = Schedule(started_at=T0 - timedelta(hours=1), window_seconds=3600, due_at=T0)
    return plan_fire(status=status, schedule=schedule, steps=LADDER, steps_done=done, now=at)


def test_due_at_adds_the_window():
    assert due_at(T0, 1800) == T0 + timedelta(minutes=30)


def test_not_yet_due_does_nothing_and_waits_for_due():
    p = plan(at=T0 - timedelta(seconds=1))
    assert (p.became_due, p.steps, p.status, p.next_fire_at) == (False, [], "ACTIVE", T0)


def test_due_fires_the_steps_whose_time_has_come_and_waits_for_the_next():
    p = plan(at=T0)
    assert p.became_due and [r.step.step for r in p.steps] == [1]
    assert (p.status, p.steps_done, p.next_fire_at) == ("DUE", 1, T0 + timedelta(seconds=600))


def test_a_late_fire_catches_up_on_every_passed_step():
    p = plan(at=T0 + timedelta(hours=2))
    assert [r.step.step for r in p.steps] == [1, 2, 3]
    assert (p.status, p.steps_done, p.next_fire_at) == ("ESCALATED", 3, None)


def test_a_due_timer_fires_only_the_steps_not_yet_done():
    p = plan(status="DUE", done=1, at=T0 + timedelta(seconds=601))
    assert not p.became_due and [r.step.step for r in p.steps] == [2]
    assert p.next_fire_at == T0 + timedelta(seconds=3600)


def test_an_early_wake_up_for_a_later_step_fires_nothing():
    p = plan(status="DUE", done=1, at=T0 + timedelta(seconds=599))
    assert p.steps == [] and p.status == "DUE" and p.next_fire_at == T0 + timedelta(seconds=600)


@pytest.mark.parametrize("status", ["ESCALATED", "CANCELLED", "COMPLETED"])
def test_closed_timers_never_fire(status):
    p = plan(status=status, at=T0 + timedelta(days=1))
    assert p.steps == [] and p.next_fire_at is None and p.status == status


def test_ladder_orders_by_offset_then_step():
    steps = ladder(
        [
            {"step": 2, "after_seconds": 0, "action": "b"},
            {"step": 1, "after_seconds": 0, "action": "a"},
            {"step": 3, "after_seconds": -0 + 5, "action": "c"},
        ]
    )
    assert [s.step for s in steps] == [1, 2, 3]
    assert Step.from_json(steps[0].to_json()) == steps[0]


def test_ladder_problems():
    assert ladder_problem([{"step": 1, "after_seconds": 0}, {"step": 1, "after_seconds": 5}])
    assert "fires before" in ladder_problem(
        [{"step": 1, "after_seconds": 60}, {"step": 2, "after_seconds": 0}]
    )
    assert (
        ladder_problem([{"step": 2, "after_seconds": 60}, {"step": 1, "after_seconds": 0}]) is None
    )


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_seconds(n, base=5, cap=60) for n in range(0, 7)] == [0, 5, 10, 20, 40, 60, 60]
    assert backoff_seconds(10_000, base=5, cap=60) == 60


def test_wakeup_instant_rounds_up_to_the_bucket_and_never_earlier():
    at = datetime(2026, 1, 1, 12, 0, 0, 120_000, tzinfo=UTC)
    assert wakeup_instant(at, 100) == datetime(2026, 1, 1, 12, 0, 0, 200_000, tzinfo=UTC)
    assert wakeup_instant(T0, 100) == T0
    assert wakeup_instant(at, 1000) >= at
