"""The firing routine, shared by the wake-up actor and the sweeper.

Per batch:

1. claim up to ``batch_size`` due PENDING timers (one statement, SKIP LOCKED),
   marking them PROCESSING under a fresh claim token with a lease; commit;
2. plan each timer (pure) and run in-process actions, then write the whole
   batch in one statement (due events, step rows with their events, the
   timers' new state) that only touches rows still carrying our token; commit.

Exactly-once steps rest on the database: a step row is unique per (timer,
step) and its event is written only when the row is. Duplicate wake-ups,
concurrent sweepers and re-claims after a lease expiry can at worst do
nothing. A worker killed between 1 and 2 leaves rows PROCESSING; the sweeper
returns them to PENDING once their lease expires.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from models import events
from models import repository as repo
from models.config import Settings
from models.sla import backoff_seconds, ladder, plan_fire, utcnow

from .escalation import run_step

log = logging.getLogger(__name__)


@dataclass
class FireReport:
    batches: int = 0
    claimed: int = 0
    became_due: int = 0
    steps: int = 0
    failures: int = 0
    dead_lettered: int = 0
    # Instants at which processed timers need firing again (later steps, retries).
    next_fire_times: set[datetime] = field(default_factory=set)


@dataclass
class _BatchWrites:
    events: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    step_events: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0
    dead_lettered: int = 0


def fire_due(
    engine: Engine,
    settings: Settings,
    *,
    now: Callable[[], datetime] = utcnow,
    max_batches: int | None = None,
    report: FireReport | None = None,
) -> FireReport:
    """Fire every due timer, batch after batch, until none is left (or for
    ``max_batches``), adding to ``report`` when given."""
    report = report or FireReport()
    while max_batches is None or report.batches < max_batches:
        at = now()
        token = uuid4()
        with engine.begin() as conn:
            timers = repo.claim_due(conn, token, at, settings.batch_size, settings.lease_seconds)
        if not timers:
            break
        report.batches += 1
        report.claimed += len(timers)
        fire_claimed(engine, settings, timers, token, at, report)
        if len(timers) < settings.batch_size:
            break
    return report


def fire_claimed(
    engine: Engine,
    settings: Settings,
    timers: list[dict[str, Any]],
    token: UUID,
    at: datetime,
    report: FireReport,
) -> None:
    """Plan and write timers claimed under ``token`` (as ``claim_due`` returned them)."""
    try:
        with engine.begin() as conn:
            _write(conn, token, at, plan_batch(timers, at, settings), report)
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise  # The database is gone: the lease rescue returns these rows later.
        if len(timers) == 1:
            with engine.begin() as conn:
                writes = _BatchWrites()
                _plan_failure(timers[0], exc, at, settings, writes)
                _write(conn, token, at, writes, report)
            return
        # Isolate the row that breaks the batch instead of failing all of them.
        log.warning("batch of %d failed (%s); retrying timers one by one", len(timers), exc)
        for timer in timers:
            fire_claimed(engine, settings, [timer], token, at, report)


def plan_batch(
    timers: Iterable[Mapping[str, Any]], at: datetime, settings: Settings
) -> _BatchWrites:
    """Everything a batch must write, computed without I/O (actions aside)."""
    writes = _BatchWrites()
    for timer in timers:
        try:
            _plan_timer(timer, at, writes)
        except Exception as exc:  # any failure is retried, then dead-lettered
            log.warning("timer %s failed: %s", timer["id"], exc)
            _plan_failure(timer, exc, at, settings, writes)
    return writes


def _plan_timer(timer: Mapping[str, Any], at: datetime, writes: _BatchWrites) -> None:
    steps = ladder(timer["escalation_steps"])
    plan = plan_fire(
        status=timer["status"],
        due=timer["due_at"],
        steps=steps,
        steps_done=timer["steps_done"],
        now=at,
    )
    # Run every action first: an exception leaves nothing of this timer in ``writes``.
    outcomes = [(step, *run_step(timer, step)) for step in plan.steps]
    if plan.became_due:
        writes.events.append(events.timer_event(timer, events.DUE, at))
    for step, outcome, error in outcomes:
        writes.steps.append(
            {
                "tenant_id": timer["tenant_id"],
                "lead_id": timer["lead_id"],
                "timer_id": timer["id"],
                "escalation_step": step.step,
                "outcome": outcome,
                "escalation_config": step.to_json(),
                "correlation_id": timer["correlation_id"],
                "error_message": error,
            }
        )
        event = events.timer_event(
            timer,
            events.ESCALATION_TRIGGERED,
            at,
            step=step.step,
            escalation_step=step.step,
            action=step.action,
            target=step.target,
            after_seconds=step.after_seconds,
            outcome=outcome,
            error=error,
        )
        event["step"] = step.step
        writes.step_events.append(event)
    writes.updates.append(
        {
            "id": timer["id"],
            "status": plan.status,
            "steps_done": plan.steps_done,
            "next_fire_at": plan.next_fire_at,
            "processing_status": "PENDING" if plan.next_fire_at else "COMPLETED",
            "attempts": 0,
            "last_error": timer.get("last_error"),
            "next_attempt_at": None,
        }
    )


def _plan_failure(
    timer: Mapping[str, Any],
    exc: BaseException,
    at: datetime,
    settings: Settings,
    writes: _BatchWrites,
) -> None:
    attempts = timer["attempts"] + 1
    writes.failures += 1
    error = f"{type(exc).__name__}: {exc}"[:2000]
    update = {
        "id": timer["id"],
        "status": timer["status"],
        "steps_done": timer["steps_done"],
        "attempts": attempts,
        "last_error": error,
    }
    if attempts >= settings.max_attempts:
        # Dead letter: stop trying, say so, keep the row for inspection.
        update |= {"processing_status": "FAILED", "next_fire_at": None, "next_attempt_at": None}
        writes.dead_lettered += 1
        writes.events.append(
            events.timer_event(timer, events.FAILED, at, attempts=attempts, error=error)
        )
    else:
        retry_at = at + timedelta(
            seconds=backoff_seconds(
                attempts, base=settings.backoff_base_seconds, cap=settings.backoff_max_seconds
            )
        )
        update |= {
            "processing_status": "PENDING",
            "next_fire_at": retry_at,
            "next_attempt_at": retry_at,
        }
    writes.updates.append(update)


def _write(
    conn: Connection, token: UUID, at: datetime, writes: _BatchWrites, report: FireReport
) -> None:
    applied = repo.apply_fired(
        conn,
        token,
        events=writes.events,
        steps=writes.steps,
        step_events=writes.step_events,
        updates=writes.updates,
        now=at,
    )
    # Count only what was written: a timer cancelled since its claim was not.
    report.became_due += sum(
        e["event_type"] == events.DUE and e["timer_id"] in applied for e in writes.events
    )
    report.steps += sum(s["timer_id"] in applied for s in writes.steps)
    report.failures += writes.failures
    report.dead_lettered += writes.dead_lettered
    report.next_fire_times.update(
        u["next_fire_at"] for u in writes.updates if u["id"] in applied and u["next_fire_at"]
    )
