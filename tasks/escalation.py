"""Escalation actions that run inside the worker while a step fires.

A step's action is, by default, delivered to the tenant as an
``sla.escalation.triggered`` outbox event, which is how tenants act on it.
Actions registered here also run in-process, and only once the firing routine
holds the timer's row lock and has checked that its claim is still valid (a
timer cancelled or rescued since its claim runs nothing). Each call gets a
:class:`StepContext`: the transaction's connection (what the action writes
through it commits with the step row, or not at all), the timer, the step and
the step's idempotency key ``<timer>:step:<n>`` (``<timer>:step:<n>:r<k>`` for
its k-th repeat), which stays the same on every attempt so that external side
effects can be deduplicated by the receiver.

- returning records the step SUCCESS;
- raising :class:`StepCannotRun` records the step FAILED and the ladder goes
  on (the step can never succeed, e.g. its target no longer exists);
- raising anything else fails the timer's processing at this step: the steps
  before it stay recorded, the attempt counts, and the retry (with backoff)
  resumes at this step; after the maximum number of attempts the timer is
  dead-lettered. ``BaseException`` s (Dramatiq's time limit, shutdown) are
  recorded the same way before the firing routine lets them through.

Exactly once holds for the step rows and their events. An action's side
effects outside the database repeat only when the transaction that records
its step is lost after the action ran (the process or its connection dies
inside the step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from models.errors import StepCannotRun
from models.sla import Step


@dataclass(frozen=True)
class StepContext:
    """What an action gets: it runs inside the transaction that records the step."""

    conn: Connection
    timer: Mapping[str, Any]
    step: Step
    # "<timer>:step:<n>" (":r<k>" added for a repeat), the same on every attempt of this run.
    idempotency_key: str
    # 0 for the step's first run, k for its k-th repeat.
    repeat: int = 0


Action = Callable[[StepContext], None]

_actions: dict[str, Action] = {}


def register_action(name: str, action: Action) -> None:
    _actions[name] = action


def unregister_action(name: str) -> None:
    _actions.pop(name, None)


def has_action(name: str) -> bool:
    """Whether steps with this action run code in-process (and need the row lock first)."""
    return name in _actions


def run_step(ctx: StepContext) -> tuple[str, str | None]:
    """(outcome, error) of running ``ctx.step``; any exception but
    :class:`StepCannotRun` propagates (the caller records it). The action runs
    under a savepoint: if it raises, what it wrote is undone and the
    transaction stays usable for recording the outcome."""
    action = _actions.get(ctx.step.action)
    if action is None:
        return "SUCCESS", None
    try:
        with ctx.conn.begin_nested():
            action(ctx)
    except StepCannotRun as exc:
        return "FAILED", str(exc) or type(exc).__name__
    return "SUCCESS", None
