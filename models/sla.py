"""Pure SLA arithmetic: due times, escalation ladders, backoff, wake-up buckets.

Nothing here touches the database or Redis, so every rule is unit-tested
directly and the firing path stays a thin layer of batched SQL around it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

DEFAULT_LADDER = ({"step": 1, "after_seconds": 0, "action": "notify", "target": None},)


@dataclass(frozen=True, order=True)
class Step:
    """One rung of an escalation ladder: run ``action`` ``after_seconds`` after due."""

    after_seconds: int
    step: int
    action: str = field(compare=False)
    target: str | None = field(default=None, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Step:
        return cls(
            after_seconds=int(data["after_seconds"]),
            step=int(data["step"]),
            action=str(data["action"]),
            target=data.get("target"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "after_seconds": self.after_seconds,
            "action": self.action,
            "target": self.target,
        }


def ladder(steps: Iterable[Mapping[str, Any]]) -> list[Step]:
    """The steps in firing order (by offset, then step number)."""
    return sorted(Step.from_json(s) for s in steps)


def ladder_problem(steps: Sequence[Mapping[str, Any]]) -> str | None:
    """Why a ladder is unusable, or None. Step numbers are unique and their
    offsets never decrease, so step order and firing order are the same."""
    numbers = [int(s["step"]) for s in steps]
    if len(set(numbers)) != len(numbers):
        return "step numbers must be unique"
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


def step_time(due: datetime, step: Step) -> datetime:
    return due + timedelta(seconds=step.after_seconds)


@dataclass(frozen=True)
class FirePlan:
    """What processing a claimed timer at ``now`` must do."""

    became_due: bool
    steps: list[Step]
    status: str
    steps_done: int
    next_fire_at: datetime | None


def plan_fire(
    *, status: str, due: datetime, steps: Sequence[Step], steps_done: int, now: datetime
) -> FirePlan:
    """Which steps have come due, and what the timer waits for next.

    ``steps`` is the ladder in firing order and ``steps_done`` how many of them
    are already recorded. A timer that is not yet due only gets its next fire
    time back (an early or duplicate wake-up does nothing).
    """
    if status not in ("ACTIVE", "DUE"):
        return FirePlan(False, [], status, steps_done, None)
    if now < due:
        return FirePlan(False, [], status, steps_done, due)
    became_due = status == "ACTIVE"
    pending = steps[steps_done:]
    firing = [s for s in pending if step_time(due, s) <= now]
    done = steps_done + len(firing)
    if done >= len(steps):
        return FirePlan(became_due, firing, "ESCALATED", done, None)
    return FirePlan(became_due, firing, "DUE", done, step_time(due, steps[done]))


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
