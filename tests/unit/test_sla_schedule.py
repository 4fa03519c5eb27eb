"""Properties of a timer's schedule and of ``plan_fire`` (models/sla.py),
checked with hypothesis: instants never decrease in firing order, a sequence of
fires at increasing instants emits every warning and every (step, repeat) run
exactly once and never before its instant, and a pause shifts every pending
instant by exactly the paused time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.calendars import Calendar, business_seconds
from models.sla import (
    SENT,
    SKIPPED,
    Schedule,
    Step,
    entries,
    expand,
    first_fire_at,
    ladder,
    ladder_length,
    ladder_problem,
    next_instant,
    plan_fire,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CAP = 4  # a small repeat cap keeps expanded ladders short


@st.composite
def ladders(draw) -> list[Step]:
    n = draw(st.integers(1, 4))
    steps = []
    for number in range(1, n + 1):
        every = draw(st.none() | st.integers(1, 900))
        most = None if every is None else draw(st.none() | st.integers(1, CAP))
        steps.append(
            {
                "step": number,
                "after_seconds": draw(st.integers(0, 1800)),
                "action": "notify",
                "repeat_every_seconds": every,
                "max_repeats": most,
            }
        )
    return ladder(steps)


thresholds = st.lists(st.integers(1, 99), unique=True, max_size=4).map(sorted)


WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")
BERLIN = Calendar.from_json(
    {
        "timezone": "Europe/Berlin",
        "weekly_hours": {d: [["09:00", "17:00"]] for d in WEEKDAYS},
        "holiday_country": "DE",
    }
)
NIGHTS = Calendar.from_json(
    {
        "timezone": "America/New_York",
        "weekly_hours": {d: [["22:00", "06:00"]] for d in WEEKDAYS},
        "holidays": ["2026-03-04"],
    }
)


ANY_CALENDAR = st.sampled_from([None, BERLIN, NIGHTS])


@st.composite
def schedules(draw, calendars=ANY_CALENDAR) -> Schedule:
    """Wall-clock and business-hours schedules, started around the DST changes."""
    window = draw(st.integers(1, 7200))
    started = T0 + timedelta(microseconds=draw(st.integers(0, 40 * 24 * 3600 * 10**6)))
    shift = draw(st.sampled_from([0.0, 0.5, 37.0, 3600.25]))
    calendar = draw(calendars)
    return Schedule(
        started_at=started, window_seconds=window, calendar=calendar, shift_seconds=shift
    )


@given(schedules(), thresholds, ladders())
def test_instants_never_decrease_in_firing_order(schedule, ts, steps):
    found = entries(schedule, ts, steps, CAP)
    instants = [e.at for e in found]
    assert instants == sorted(instants)
    assert [e.kind for e in found].count("due") == 1
    assert len(found) == len(ts) + 1 + ladder_length(steps, CAP)
    assert first_fire_at(schedule, ts) == found[0].at


@given(ladders())
def test_expand_is_every_run_once_in_offset_step_repeat_order(steps):
    runs = list(expand(steps, CAP))
    keys = [(r.offset, r.step.step, r.repeat) for r in runs]
    assert keys == sorted(keys)
    assert len({(r.step.step, r.repeat) for r in runs}) == len(runs) == ladder_length(steps, CAP)
    for s in steps:
        repeats = [r.repeat for r in runs if r.step.step == s.step]
        expected = 0 if not s.repeat_every_seconds else (s.max_repeats or CAP)
        assert repeats == list(range(expected + 1))


def simulate(schedule, ts, steps, created_at, gaps):
    """Fire at created_at, then after each gap (a gap of 0 is a duplicate
    wake-up; "early" and "exact" are a wake-up 1 ms before, or at, the next
    fire time), then far in the future; returns what each fire emitted."""
    state = {"status": "ACTIVE", "steps_done": 0, "warnings_done": 0}
    now, fired, waiting = created_at, [], None
    for gap in [0, *gaps, 10**7]:
        if gap in ("early", "exact"):
            if waiting is None:
                continue
            shift = timedelta(milliseconds=1 if gap == "early" else 0)
            now = max(now, waiting - shift)
        else:
            now += timedelta(seconds=gap)
        plan = plan_fire(
            schedule=schedule,
            steps=steps,
            now=now,
            thresholds=ts,
            created_at=created_at,
            repeat_cap=CAP,
            **state,
        )
        fired.append((now, plan))
        state = {
            "status": plan.status,
            "steps_done": plan.steps_done,
            "warnings_done": plan.warnings_done,
        }
        # What the timer waits for is what the schedule says comes next.
        assert plan.next_fire_at == next_instant(
            schedule=schedule, thresholds=ts, repeat_cap=CAP, **state, steps=steps
        )
        if plan.next_fire_at is not None:
            assert plan.next_fire_at > now  # a wake-up then makes progress
        waiting = plan.next_fire_at
    return fired


@settings(max_examples=200)
@given(
    schedules(),
    thresholds,
    ladders(),
    st.integers(0, 9000),
    st.lists(
        st.sampled_from([0, 0.001, 1, 30, 299.5, 600, 1800, 4000, "early", "exact"]), max_size=25
    ),
)
def test_every_entry_is_emitted_exactly_once_and_never_early(
    schedule, ts, steps, created_after, gaps
):
    created_at = schedule.started_at + timedelta(seconds=created_after)
    fired = simulate(schedule, ts, steps, created_at, gaps)
    due = schedule.due

    warned = [(now, w) for now, plan in fired for w in plan.warnings]
    assert [w.threshold for _, w in warned] == ts  # each once, in order
    for now, w in warned:
        assert w.scheduled_at == schedule.warning_at(w.threshold) <= now
        if w.outcome == SENT:
            assert w.scheduled_at > created_at and now < due
        else:
            assert w.outcome == SKIPPED
            assert w.scheduled_at <= created_at or now >= due

    dues = [now for now, plan in fired if plan.became_due]
    assert len(dues) == 1 and dues[0] >= due

    ran = [(now, run) for now, plan in fired for run in plan.steps]
    assert [(r.step.step, r.repeat) for _, r in ran] == [
        (r.step.step, r.repeat) for r in expand(steps, CAP)
    ]
    for now, run in ran:
        assert schedule.run_at(run) <= now
    assert fired[-1][1].status == "ESCALATED" and fired[-1][1].next_fire_at is None


@given(
    schedules(calendars=st.none()),
    thresholds,
    ladders(),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)
def test_a_pause_shifts_every_wall_clock_instant_by_the_paused_time(
    schedule, ts, steps, at, length
):
    paused = schedule.started_at + timedelta(seconds=at)
    resumed = paused + timedelta(seconds=length)
    moved = schedule.shifted(paused, resumed)
    assert moved.shift_seconds == schedule.shift_seconds + length
    for before, after in zip(
        entries(schedule, ts, steps, CAP), entries(moved, ts, steps, CAP), strict=True
    ):
        assert after.at - before.at == timedelta(seconds=length)


@given(
    schedules(calendars=st.sampled_from([BERLIN, NIGHTS])),
    thresholds,
    ladders(),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)
def test_a_pause_shifts_every_business_instant_by_the_working_time_paused(
    schedule, ts, steps, at, length
):
    paused = schedule.started_at + timedelta(seconds=at)
    resumed = paused + timedelta(seconds=length)
    worked = business_seconds(schedule.calendar, paused, resumed)
    moved = schedule.shifted(paused, resumed)
    assert moved.shift_seconds == pytest.approx(schedule.shift_seconds + worked, abs=1e-6)
    assert moved.due == moved.at(schedule.window_seconds)
    for before, after in zip(
        entries(schedule, ts, steps, CAP), entries(moved, ts, steps, CAP), strict=True
    ):
        assert after.at >= before.at
        assert business_seconds(schedule.calendar, before.at, after.at) == pytest.approx(
            worked, abs=1e-5
        )


@pytest.mark.parametrize("status", ["PAUSED", "ESCALATED", "CANCELLED", "COMPLETED"])
def test_a_timer_that_does_not_fire_plans_nothing(status):
    schedule = Schedule(started_at=T0, window_seconds=60)
    plan = plan_fire(
        status=status,
        schedule=schedule,
        steps=ladder([{"step": 1, "after_seconds": 0, "action": "notify"}]),
        steps_done=0,
        now=T0 + timedelta(days=1),
        thresholds=[50],
    )
    assert (plan.warnings, plan.steps, plan.next_fire_at, plan.status) == ([], [], None, status)


def test_warnings_at_their_percentage_of_the_window():
    schedule = Schedule(started_at=T0, window_seconds=1000)
    steps = ladder([{"step": 1, "after_seconds": 0, "action": "notify"}])
    early = plan_fire(
        status="ACTIVE", schedule=schedule, steps=steps, steps_done=0, now=T0, thresholds=[50, 75]
    )
    assert early.warnings == [] and early.next_fire_at == T0 + timedelta(seconds=500)
    at_half = plan_fire(
        status="ACTIVE",
        schedule=schedule,
        steps=steps,
        steps_done=0,
        now=T0 + timedelta(seconds=500),
        thresholds=[50, 75],
        created_at=T0,
    )
    assert at_half.warnings == [(50, SENT, T0 + timedelta(seconds=500))]
    assert (at_half.warnings_done, at_half.next_fire_at) == (1, T0 + timedelta(seconds=750))
    # A fire after due skips the warnings it overtook, then becomes due.
    late = plan_fire(
        status="ACTIVE",
        schedule=schedule,
        steps=steps,
        steps_done=0,
        now=T0 + timedelta(seconds=1001),
        thresholds=[50, 75],
        warnings_done=1,
        created_at=T0,
    )
    assert [(w.threshold, w.outcome) for w in late.warnings] == [(75, SKIPPED)]
    assert late.became_due and late.status == "ESCALATED"


def test_a_warning_past_at_the_start_is_skipped_not_sent():
    schedule = Schedule(started_at=T0, window_seconds=1000)
    created = T0 + timedelta(seconds=600)  # started_at 10 minutes in the past
    plan = plan_fire(
        status="ACTIVE",
        schedule=schedule,
        steps=ladder([{"step": 1, "after_seconds": 0, "action": "notify"}]),
        steps_done=0,
        now=created,
        thresholds=[50, 90],
        created_at=created,
    )
    assert [(w.threshold, w.outcome) for w in plan.warnings] == [(50, SKIPPED)]
    assert plan.next_fire_at == T0 + timedelta(seconds=900)


def test_repeats_run_every_period_up_to_max_repeats():
    steps = ladder(
        [
            {"step": 1, "after_seconds": 0, "action": "page", "repeat_every_seconds": 300,
             "max_repeats": 2},
            {"step": 2, "after_seconds": 400, "action": "reassign"},
        ]
    )  # fmt: skip
    runs = [(r.step.step, r.repeat, r.offset) for r in expand(steps)]
    assert runs == [(1, 0, 0), (1, 1, 300), (2, 0, 400), (1, 2, 600)]
    open_ended = ladder([{"step": 1, "after_seconds": 0, "action": "p", "repeat_every_seconds": 5}])
    assert ladder_length(open_ended, 100) == 101


def test_step_json_round_trips_and_plain_steps_keep_their_shape():
    plain = {"step": 1, "after_seconds": 0, "action": "notify", "target": None}
    assert Step.from_json(plain).to_json() == plain
    repeating = {**plain, "repeat_every_seconds": 60, "max_repeats": 3}
    assert Step.from_json(repeating).to_json() == repeating


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        ({"repeat_every_seconds": 0}, "greater than 0"),
        ({"repeat_every_seconds": 60, "max_repeats": 0}, "between 1 and 100"),
        ({"repeat_every_seconds": 60, "max_repeats": 101}, "between 1 and 100"),
        ({"max_repeats": 2}, "needs repeat_every_seconds"),
    ],
)
def test_ladder_problems_of_repeats(step, problem):
    found = ladder_problem([{"step": 1, "after_seconds": 0, "action": "a", **step}])
    assert found is not None and problem in found
    assert ladder_problem([{"step": 1, "after_seconds": 0, "repeat_every_seconds": 1}]) is None
