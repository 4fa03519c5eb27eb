"""Escalation actions that run inside the worker while a step fires.

A step's action is, by default, delivered to the tenant as an
``sla.escalation.triggered`` outbox event, which is how tenants act on it.
Actions registered here also run in-process, within the step's transaction:

- raising :class:`StepCannotRun` records the step FAILED and the ladder goes
  on (the step can never succeed, e.g. its target no longer exists);
- raising anything else fails the whole timer's processing, which is retried
  with backoff and dead-lettered after the maximum number of attempts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from models.sla import Step

Action = Callable[[Mapping[str, Any], Step], None]

_actions: dict[str, Action] = {}


class StepCannotRun(Exception):
    """The step is recorded FAILED with this message; later steps still run."""


def register_action(name: str, action: Action) -> None:
    _actions[name] = action


def unregister_action(name: str) -> None:
    _actions.pop(name, None)


def run_step(timer: Mapping[str, Any], step: Step) -> tuple[str, str | None]:
    """(outcome, error) of running ``step`` for ``timer``."""
    action = _actions.get(step.action)
    if action is None:
        return "SUCCESS", None
    try:
        action(timer, step)
    except StepCannotRun as exc:
        return "FAILED", str(exc) or type(exc).__name__
    return "SUCCESS", None
