"""Pure SLA arithmetic: a timer's schedule (warnings, due, escalation steps and
their repeats), what a fire does, backoff, wake-up buckets.

Nothing here touches the database or Redis, so every rule is unit-tested
directly (tests/unit/test_sla*.py, with hypothesis) and the firing path stays a
thin layer of batched SQL around it.

The schedule. Every instant of a timer is "offset seconds of working time after
``started_at``", moved by ``shift_seconds`` (the working time it was paused):

    instant(offset) = business_add(calendar, started_at, offset + shift_seconds)

with no calendar meaning plain wall-clock addition. The offsets:

- warning at threshold t (a percentage): ``window_seconds * t / 100``;
- due: ``window_seconds``;
- step s, repeat r: ``window_seconds + after_seconds + r * repeat_every_seconds``.

A ladder expands to (step, repeat) runs in firing order, by (offset, step,
repeat); ``steps_done`` counts the runs recorded, ``warnings_done`` the
thresholds recorded (sent or skipped), so a timer's progress is two counters
and what comes next is always computed, never stored beside them.

The start path stores ``next_fire_at = first_fire_at(...)`` (the earliest of
the first warning and due) and ``due_at = Schedule(...).due``; a threshold
already past at the start makes that first fire immediate, and the fire
records it SKIPPED.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from typing import Any, NamedTuple

from . import calendars
from .config import DEFAULT_MAX_STEP_REPEATS

DEFAULT_LADDER = ({"step": 1, "after_seconds": 0, "action": "notify", "target": None},)

# What firing may do: the statuses a fire plans for.
FIRING_STATUSES = ("ACTIVE", "DUE")
SENT, SKIPPED = "SENT", "SKIPPED"


@dataclass(frozen=True, order=True)
class Step:
    """One rung of an escalation ladder: run ``action`` ``after_seconds`` after
    due, then every ``repeat_every_seconds`` again, ``max_repeats`` times (or,
    without it, until the timer closes, up to the repeat cap)."""

    after_seconds: int
    step: int
    action: str = field(compare=False)
    target: str | None = field(default=None, compare=False)
    repeat_every_seconds: int | None = field(default=None, compare=False)
    max_repeats: int | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Step:
        every, most = data.get("repeat_every_seconds"), data.get("max_repeats")
        return cls(
            after_seconds=int(data["after_seconds"]),
            step=int(data["step"]),
            action=str(data["action"]),
            target=data.get("target"),
            repeat_every_seconds=None if every is None else int(every),
            max_repeats=None if most is None else int(most),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "step": self.step,
            "after_seconds": self.after_seconds,
            "action": self.action,
            "target": self.target,
        }
        # Only repeating steps carry the repeat fields: a plain step's stored
        # config stays what it always was.
        if self.repeat_every_seconds is not None:
            out["repeat_every_seconds"] = self.repeat_every_seconds
            if self.max_repeats is not None:
                out["max_repeats"] = self.max_repeats
        return out

    def repeats(self, repeat_cap: int) -> int:
        """How many times the step runs again after its first run."""
        if not self.repeat_every_seconds:
            return 0
        return self.max_repeats if self.max_repeats is not None else repeat_cap


class StepRun(NamedTuple):
    """One (step, repeat) entry of an expanded ladder; ``offset`` is seconds
    (of working time, with a calendar) after due."""

    step: Step
    repeat: int
    offset: int


def ladder(steps: Iterable[Mapping[str, Any]]) -> list[Step]:
    """The steps in firing order of their first runs (by offset, then step number)."""
    return sorted(Step.from_json(s) for s in steps)


def _runs_of(step: Step, repeat_cap: int) -> Iterator[StepRun]:
    every = step.repeat_every_seconds or 0
    for r in range(step.repeats(repeat_cap) + 1):
        yield StepRun(step, r, step.after_seconds + r * every)


def expand(steps: Sequence[Step], repeat_cap: int = DEFAULT_MAX_STEP_REPEATS) -> Iterator[StepRun]:
    """The (step, repeat) runs of a ladder (``ladder()``'s order) in firing
    order: by offset, then step number, then repeat. Lazy: a fire reads only
    as far as the runs that have come due.

    An open-ended repeat (no ``max_repeats``) runs up to ``repeat_cap`` times:
    pass the same cap over a timer's life (``Settings.max_step_repeats``), as
    ``steps_done`` counts positions in this order."""
    if not any(s.repeat_every_seconds for s in steps):
        return (StepRun(s, 0, s.after_seconds) for s in steps)
    return heapq.merge(
        *(_runs_of(s, repeat_cap) for s in steps),
        key=lambda run: (run.offset, run.step.step, run.repeat),
    )


def ladder_length(steps: Sequence[Step], repeat_cap: int = DEFAULT_MAX_STEP_REPEATS) -> int:
    """How many (step, repeat) runs the ladder has."""
    return sum(1 + s.repeats(repeat_cap) for s in steps)


def ladder_problem(
    steps: Sequence[Mapping[str, Any]], max_repeats: int = DEFAULT_MAX_STEP_REPEATS
) -> str | None:
    """Why a ladder is unusable, or None. Step numbers are unique and the
    offsets of first runs never decrease as step numbers increase; a repeating
    step repeats every ``repeat_every_seconds`` > 0 seconds, at most
    ``max_repeats`` (1 to the cap) times."""
    numbers = [int(s["step"]) for s in steps]
    if len(set(numbers)) != len(numbers):
        return "step numbers must be unique"
    for s in steps:
        every, most = s.get("repeat_every_seconds"), s.get("max_repeats")
        if every is not None and int(every) <= 0:
            return f"step {s['step']}: repeat_every_seconds must be greater than 0"
        if most is not None:
            if every is None:
                return f"step {s['step']}: max_repeats needs repeat_every_seconds"
            if not 1 <= int(most) <= max_repeats:
                return f"step {s['step']}: max_repeats must be between 1 and {max_repeats}"
    by_number = sorted(steps, key=lambda s: int(s["step"]))
    for before, after in pairwise(by_number):
        if int(after["after_seconds"]) < int(before["after_seconds"]):
            return (
                f"step {after['step']} fires before step {before['step']}: "
                "after_seconds must not decrease as step numbers increase"
            )
    return None


def due_at(started_at: datetime, window_seconds: int) -> datetime:
    return started_at + timedelta(seconds=window_seconds)


@dataclass(frozen=True)
class Schedule:
    """Where a timer's offsets fall in time.

    Without a calendar the stored ``due_at`` anchors every instant (it already
    holds the shift), so a wall-clock timer's instants are exactly those the
    firing path always computed; with one, instants are counted in working
    time from ``started_at``."""

    started_at: datetime
    window_seconds: int
    calendar: calendars.Calendar | None = None  # None: every hour counts
    shift_seconds: float = 0.0
    due_at: datetime | None = None  # the stored due instant; computed when None

    def at(self, offset: float) -> datetime:
        """The instant ``offset`` seconds (of working time) after the start."""
        if self.calendar is None:
            due = self.due_at or self.started_at + timedelta(
                seconds=self.window_seconds + self.shift_seconds
            )
            return due + timedelta(seconds=offset - self.window_seconds)
        return calendars.business_add(self.calendar, self.started_at, offset + self.shift_seconds)

    @property
    def due(self) -> datetime:
        if self.calendar is None and self.due_at is not None:
            return self.due_at
        return self.at(self.window_seconds)

    def warning_at(self, threshold: int) -> datetime:
        return self.at(self.window_seconds * threshold / 100)

    def run_at(self, run: StepRun) -> datetime:
        if self.calendar is None:
            return self.due + timedelta(seconds=run.offset)
        return self.at(self.window_seconds + run.offset)

    def shifted(self, paused_from: datetime, resumed_at: datetime) -> Schedule:
        """The schedule after a pause from ``paused_from`` to ``resumed_at``:
        every instant moves by the working time in between."""
        if self.calendar is None:
            wall = resumed_at - paused_from
            return replace(
                self,
                shift_seconds=self.shift_seconds + wall.total_seconds(),
                due_at=self.due + wall,
            )
        worked = calendars.business_seconds(self.calendar, paused_from, resumed_at)
        moved = replace(self, shift_seconds=self.shift_seconds + worked, due_at=None)
        return replace(moved, due_at=moved.due)


def schedule_of(timer: Mapping[str, Any]) -> Schedule:
    """A stored timer's schedule (a mapping with the sla_timers columns)."""
    calendar = timer.get("calendar")
    if calendar is not None:
        calendar = calendars.calendar_from_row(calendar)
    return Schedule(
        started_at=timer["started_at"],
        window_seconds=timer["window_seconds"],
        calendar=calendar,
        shift_seconds=timer.get("shift_seconds") or 0.0,
        due_at=timer["due_at"],
    )


def first_fire_offset(window_seconds: int, thresholds: Sequence[int] = ()) -> float:
    """Seconds of working time from the start to a new timer's first fire:
    its first warning, else due."""
    return window_seconds * min(thresholds) / 100 if thresholds else window_seconds


def first_fire_at(schedule: Schedule, thresholds: Sequence[int] = ()) -> datetime:
    """A new timer's ``next_fire_at``: its first warning, else due. A warning
    already past (a ``started_at`` in the past) makes it immediate, and the
    fire records the warning SKIPPED."""
    return schedule.at(first_fire_offset(schedule.window_seconds, thresholds))


class Entry(NamedTuple):
    """One instant of a timer's schedule: ("warning", threshold, 0, at),
    ("due", 0, 0, at) or ("step", step, repeat, at)."""

    kind: str
    key: int
    repeat: int
    at: datetime


def entries(
    schedule: Schedule,
    thresholds: Sequence[int],
    steps: Sequence[Step],
    repeat_cap: int = DEFAULT_MAX_STEP_REPEATS,
) -> list[Entry]:
    """The whole schedule in firing order: warnings, due, then every (step,
    repeat) run. Instants never decrease along it."""
    out = [Entry("warning", t, 0, schedule.warning_at(t)) for t in sorted(thresholds)]
    out.append(Entry("due", 0, 0, schedule.due))
    out += [
        Entry("step", run.step.step, run.repeat, schedule.run_at(run))
        for run in expand(steps, repeat_cap)
    ]
    return out


class WarningRun(NamedTuple):
    """A warning a fire records: SENT (its event is written) or SKIPPED."""

    threshold: int
    outcome: str
    scheduled_at: datetime


@dataclass(frozen=True)
class FirePlan:
    """What processing a claimed timer at ``now`` must do."""

    became_due: bool
    steps: list[StepRun]
    status: str
    steps_done: int
    next_fire_at: datetime | None
    warnings: list[WarningRun] = field(default_factory=list)
    warnings_done: int = 0


def next_instant(
    *,
    status: str,
    schedule: Schedule,
    steps: Sequence[Step],
    steps_done: int,
    thresholds: Sequence[int] = (),
    warnings_done: int = 0,
    repeat_cap: int = DEFAULT_MAX_STEP_REPEATS,
) -> datetime | None:
    """When a timer in ``status`` with this progress needs firing next: its
    next warning or due while ACTIVE, its next (step, repeat) run while DUE,
    never otherwise."""
    if status == "ACTIVE":
        if warnings_done < len(thresholds):
            return schedule.warning_at(thresholds[warnings_done])
        return schedule.due
    if status == "DUE":
        run = next(islice(expand(steps, repeat_cap), steps_done, None), None)
        return None if run is None else schedule.run_at(run)
    return None


def plan_fire(
    *,
    status: str,
    schedule: Schedule,
    steps: Sequence[Step],
    steps_done: int,
    now: datetime,
    thresholds: Sequence[int] = (),
    warnings_done: int = 0,
    created_at: datetime | None = None,
    repeat_cap: int = DEFAULT_MAX_STEP_REPEATS,
) -> FirePlan:
    """What comes due by ``now``, and what the timer waits for next.

    ``steps`` is the ladder (``ladder()``), ``thresholds`` ascending, and the
    ``*_done`` counters what is already recorded. Warnings: one whose instant
    is at or before ``created_at`` (already past at the start) is SKIPPED; one
    whose instant has come is SENT while due has not, else SKIPPED (overtaken:
    a late fire never warns of a breach that has happened). Then, once due,
    every (step, repeat) run whose instant has come. A timer not firing
    (PAUSED, closed) gets nothing back; an early or duplicate wake-up only its
    next fire time.
    """
    if status not in FIRING_STATUSES:
        return FirePlan(False, [], status, steps_done, None, [], warnings_done)
    warnings: list[WarningRun] = []
    done_w = warnings_done
    if done_w < len(thresholds):
        due = schedule.due
        for threshold in thresholds[done_w:]:
            at = schedule.warning_at(threshold)
            if created_at is not None and at <= created_at:
                warnings.append(WarningRun(threshold, SKIPPED, at))
            elif at <= now:
                warnings.append(WarningRun(threshold, SENT if now < due else SKIPPED, at))
            else:
                break
        done_w += len(warnings)
    if status == "ACTIVE" and now < schedule.due:
        pending = done_w < len(thresholds)
        nxt = schedule.warning_at(thresholds[done_w]) if pending else schedule.due
        return FirePlan(False, [], "ACTIVE", steps_done, nxt, warnings, done_w)
    firing: list[StepRun] = []
    waiting: StepRun | None = None
    for run in islice(expand(steps, repeat_cap), steps_done, None):
        if schedule.run_at(run) <= now:
            firing.append(run)
        else:
            waiting = run
            break
    done = steps_done + len(firing)
    became_due = status == "ACTIVE"
    if waiting is None:
        return FirePlan(became_due, firing, "ESCALATED", done, None, warnings, done_w)
    return FirePlan(became_due, firing, "DUE", done, schedule.run_at(waiting), warnings, done_w)


def backoff_seconds(attempts: int, *, base: int, cap: int) -> int:
    """Exponential backoff after the ``attempts``-th failure: base, 2*base, 4*base... capped."""
    if attempts < 1:
        return 0
    return min(cap, base * 2 ** min(attempts - 1, 30))


def wakeup_instant(at: datetime, bucket_ms: int) -> datetime:
    """Round up to the wake-up bucket, so every timer due within one bucket
    shares one wake-up and none is woken before it is due."""
    epoch_ms = at.timestamp() * 1000
    return datetime.fromtimestamp(math.ceil(epoch_ms / bucket_ms) * bucket_ms / 1000, tz=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)
