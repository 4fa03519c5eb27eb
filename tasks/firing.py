"""The firing routine, shared by the wake-up actor and the sweeper.

Per batch:

1. claim up to ``batch_size`` due PENDING timers (one statement, SKIP LOCKED),
   marking them PROCESSING under a fresh claim token with a lease; commit.
   The database's clock decides what is due and when the lease ends, and its
   time of the claim is the batch's "now" (what has come due, ``executed_at``,
   the events' ``created_at``);
2. plan each timer (pure, models/sla.py: its warnings, whether it became due,
   its (step, repeat) runs; calendars count business time);
3. in one transaction:
   - timers with a registered in-process action among their due steps
     ("action timers") are locked first and their token checked, before any
     action runs; a timer that lost its claim runs nothing;
   - the other timers are written in one statement (warning rows, due events,
     step rows, the rows' events, new states) that only touches rows still carrying our
     token: the fast path of a burst, one round trip for the whole batch;
   - then each action timer, under its own savepoint: its actions (each given
     the transaction's connection and the step's idempotency key), then its
     writes. A step that succeeded is recorded even if a later one raises; the
     failure counts an attempt and the retry resumes at the failed step.
   commit.

Exactly-once warnings and steps rest on the database: a warning row is unique
per (timer, threshold), a step row per (timer, step, repeat), and the event of
either is written only when its row is. Duplicate wake-ups,
concurrent sweepers and re-claims after a lease expiry can at worst do
nothing. An action runs again only if the transaction that records its step
is lost after it ran (the process or its connection dies inside the step).

Failures:

- a statement that fails in SQL (a poisoned row) is retried timer by timer
  inside the same transaction, under savepoints, so the other rows are written
  once and no action runs twice; the row that fails counts an attempt;
- a transient error (deadlock, serialization failure, lock or statement
  timeout) is retried in place a few times; if it persists the claim is given
  back PENDING without counting an attempt;
- losing the database (a connection invalidated) leaves the rows PROCESSING:
  the sweeper's rescue returns them once their lease has expired, counting an
  attempt. While the transaction holds the rows' locks the rescue cannot take
  them, which is what renews a long batch's lease; a hung action is bounded by
  ``idle_in_transaction_session_timeout`` (the lease) and by Dramatiq's time
  limit, whose ``TimeLimitExceeded`` (a ``BaseException``) is recorded as the
  timer's failure and ends the routine after the batch is written.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

from dramatiq.middleware.time_limit import TimeLimitExceeded
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from models import events, logs, metrics
from models import firing as firing_sql
from models.config import Settings
from models.errors import connection_lost
from models.sla import (
    SENT,
    FirePlan,
    StepRun,
    backoff_seconds,
    ladder,
    plan_fire,
    schedule_of,
)

from .escalation import StepContext, has_action, run_step

log = logging.getLogger(__name__)

# SQLSTATEs that say "try again", not "this row is bad": deadlock_detected,
# serialization_failure, lock_not_available (lock_timeout), query_canceled
# (statement_timeout). They never count as a timer's attempt.
TRANSIENT_SQLSTATES = frozenset({"40P01", "40001", "55P03", "57014"})
# In-place retries of a statement that failed transiently, with these pauses.
TRANSIENT_PAUSES_S = (0.05, 0.2, 0.5)
# A timer given back after a persistent transient error is fired again this soon.
RELEASED_RETRY = timedelta(seconds=1)

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    return (
        isinstance(exc, DBAPIError)
        and not connection_lost(exc)
        and getattr(exc.orig, "sqlstate", None) in TRANSIENT_SQLSTATES
    )


@dataclass
class FireReport:
    batches: int = 0
    claimed: int = 0
    became_due: int = 0
    steps: int = 0
    # Warning rows written (sent or skipped).
    warnings: int = 0
    failures: int = 0
    dead_lettered: int = 0
    # Claims given back without an attempt (transient errors, an interrupted batch).
    released: int = 0
    # Calls of registered in-process actions.
    actions: int = 0
    # Batches whose statement failed in SQL and were written timer by timer.
    fallbacks: int = 0
    # A time limit (or shutdown) interrupted the routine after writing its batch.
    interrupted: bool = False
    # Instants at which processed timers need firing again (later steps, retries).
    next_fire_times: set[datetime] = field(default_factory=set)
    # What the metrics count (models/metrics.py ``record_fire``): ("fire", outcome),
    # ("step", step, outcome) and ("warning", outcome), added once committed.
    tally: Counter = field(default_factory=Counter)


@dataclass
class _BatchWrites:
    warnings: list[dict[str, Any]] = field(default_factory=list)
    warning_events: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    step_events: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    # The claimed rows, by id: what the one-by-one fallback needs to record a
    # failure (not written).
    timers: dict[UUID, Mapping[str, Any]] = field(default_factory=dict)

    def add(self, other: _BatchWrites) -> None:
        self.warnings += other.warnings
        self.warning_events += other.warning_events
        self.events += other.events
        self.steps += other.steps
        self.step_events += other.step_events
        self.updates += other.updates
        self.timers |= other.timers

    def of(self, timer_id: UUID) -> _BatchWrites:
        """This batch's writes for one timer."""
        return _BatchWrites(
            warnings=[w for w in self.warnings if w["timer_id"] == timer_id],
            warning_events=[e for e in self.warning_events if e["timer_id"] == timer_id],
            events=[e for e in self.events if e["timer_id"] == timer_id],
            steps=[s for s in self.steps if s["timer_id"] == timer_id],
            step_events=[e for e in self.step_events if e["timer_id"] == timer_id],
            updates=[u for u in self.updates if u["id"] == timer_id],
            timers={timer_id: self.timers[timer_id]},
        )


@dataclass
class _Planned:
    """One claimed timer: its plan, or why it could not be planned."""

    timer: Mapping[str, Any]
    plan: FirePlan | None = None
    error: Exception | None = None
    # A registered in-process action among its due steps: locked before it runs.
    runs_actions: bool = False


def fire_due(
    engine: Engine,
    settings: Settings,
    *,
    now: Callable[[], datetime] | None = None,
    max_batches: int | None = None,
    report: FireReport | None = None,
    on_full_batch: Callable[[], object] | None = None,
) -> FireReport:
    """Fire every due timer, batch after batch, until none is left (or for
    ``max_batches``), adding to ``report`` when given. The database's clock
    decides what is due; ``now`` overrides it (tests only).

    ``on_full_batch`` is called once, as soon as a claim comes back full (a
    burst) and before that batch is planned and written: what it starts (other
    workers joining) overlaps the batch instead of following it."""
    report = report or FireReport()
    # An interrupted routine (a time limit) does not start another batch.
    while not report.interrupted and (max_batches is None or report.batches < max_batches):
        token = uuid4()
        instant = None if now is None else now()
        with _collector_paused():
            timers = _retrying(
                engine,
                lambda conn, instant=instant, token=token: firing_sql.claim_due(
                    conn, token, instant, settings.batch_size, settings.lease_seconds
                ),
            )
            if not timers:
                break
            report.batches += 1
            report.claimed += len(timers)
            if on_full_batch is not None and len(timers) == settings.batch_size:
                _ask(on_full_batch)
                on_full_batch = None
            metrics.observe_lateness(timers[0]["claimed_at"], (t["next_fire_at"] for t in timers))
            released = report.released
            before = (report.steps, report.failures, report.dead_lettered)
            # Bound per batch, not per timer: the burst's cost stays the same.
            with logs.binding(batch_id=token):
                fire_claimed(engine, settings, timers, token, timers[0]["claimed_at"], report)
                _log_batch(len(timers), before, report)
        # Given back rows are due again at once: leave them to the wake-up below.
        if report.interrupted or report.released > released:
            break
        if len(timers) < settings.batch_size:
            break
    return report


def _ask(on_full_batch: Callable[[], object]) -> None:
    try:
        on_full_batch()
    except Exception as exc:  # asking for help must not cost the batch its claim
        log.warning("on_full_batch failed: %s", exc)


# Batches in progress in this process: while any is, the cyclic garbage
# collector is paused (``_collector_paused``).
_collector = threading.Lock()
_batches_in_progress = 0
_collector_was_enabled = False


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while batches are in progress (in
    any thread of the process), then restore it as it was. A batch allocates
    tens of thousands of short-lived objects, all freed by reference counting,
    which made the collector run dozens of times per batch for nothing: about
    a fifth of the worker's CPU per fire. Garbage in cycles waits for the end
    of the batches (of a burst, at worst)."""
    global _batches_in_progress, _collector_was_enabled
    with _collector:
        if _batches_in_progress == 0:
            _collector_was_enabled = gc.isenabled()
            gc.disable()
        _batches_in_progress += 1
    try:
        yield
    finally:
        with _collector:
            _batches_in_progress -= 1
            if _batches_in_progress == 0 and _collector_was_enabled:
                gc.enable()


def _log_batch(claimed: int, before: tuple[int, int, int], report: FireReport) -> None:
    """One line per batch: at INFO only when some of its timers failed."""
    steps, failures, dead = (
        report.steps - before[0],
        report.failures - before[1],
        report.dead_lettered - before[2],
    )
    log.log(
        logging.INFO if failures else logging.DEBUG,
        "fired a batch: claimed=%d steps=%d failures=%d dead_lettered=%d",
        claimed,
        steps,
        failures,
        dead,
    )


def fire_claimed(
    engine: Engine,
    settings: Settings,
    timers: list[dict[str, Any]],
    token: UUID,
    at: datetime,
    report: FireReport,
) -> None:
    """Plan and write timers claimed under ``token`` (as ``claim_due`` returned
    them) at ``at``, the database's time of the claim."""
    planned = [_plan(timer, at, settings) for timer in timers]
    interrupt: BaseException | None = None
    counted, released_before = report.tally.copy(), report.released
    try:
        with engine.begin() as conn:
            interrupt = _fire_in(conn, token, at, planned, settings, report)
    except DBAPIError as exc:
        if not is_transient(exc):
            raise  # an outage (or a bug): the lease rescue returns these rows later
        # Retried in place already: give the claim back, no attempt counted.
        log.warning("batch of %d gave up on a transient error (%s): released", len(timers), exc)
        released = _retrying(
            engine, lambda conn: firing_sql.release_claimed(conn, token, [t["id"] for t in timers])
        )
        report.released += released
        report.next_fire_times.add(at + RELEASED_RETRY)
        report.tally = counted  # what the rolled back transaction tallied never happened
        report.tally["fire", "released"] += released
        metrics.record_fire({("fire", "released"): released})
        return
    # Committed: counted now, so a batch lost with its connection counts nothing.
    report.tally["fire", "released"] += report.released - released_before
    metrics.record_fire(report.tally - counted)
    if interrupt is not None:
        report.interrupted = True
        if not isinstance(interrupt, TimeLimitExceeded):
            raise interrupt  # shutdown, KeyboardInterrupt: recorded, now let it end the process


def _fire_in(
    conn: Connection,
    token: UUID,
    at: datetime,
    planned: list[_Planned],
    settings: Settings,
    report: FireReport,
) -> BaseException | None:
    """The apply transaction; returns a BaseException an action raised (after
    recording it) for the caller to raise once the batch is committed."""
    acting = [p for p in planned if p.runs_actions]
    ours: set[UUID] = set()
    if acting:
        # Bound an action that hangs: the database ends a transaction idle for
        # a lease, the rows' locks go, and the rescue counts the attempt.
        conn.exec_driver_sql(
            f"SET LOCAL idle_in_transaction_session_timeout = {settings.lease_seconds * 1000}"
        )
        ours = _in_place(
            conn, lambda: firing_sql.lock_claimed(conn, token, [p.timer["id"] for p in acting])
        )

    plain = _BatchWrites()
    for p in planned:
        if not p.runs_actions:
            plain.add(_writes_for(p, [], None, at, settings))
    _apply(conn, token, at, plain, settings, report)

    interrupt: BaseException | None = None
    released: list[UUID] = []
    for p in acting:
        timer = p.timer
        if timer["id"] not in ours:
            continue  # cancelled, completed or rescued since the claim: run nothing
        if interrupt is not None:
            released.append(timer["id"])  # not tried: give it back, no attempt counted
            continue
        # Actions may log: their lines name the timer.
        with logs.binding(**logs.timer_fields(timer)):
            interrupt = _fire_acting(conn, token, at, p, settings, report)
    if released:
        report.released += _in_place(
            conn, lambda: firing_sql.release_claimed(conn, token, released)
        )
        report.next_fire_times.add(at + RELEASED_RETRY)
    return interrupt


def _fire_acting(
    conn: Connection,
    token: UUID,
    at: datetime,
    p: _Planned,
    settings: Settings,
    report: FireReport,
) -> BaseException | None:
    """Run one locked timer's actions and write it, under one savepoint: what
    its actions wrote through the connection commits with its step rows or not
    at all."""
    timer, plan = p.timer, p.plan
    assert plan is not None
    outcomes: list[tuple[StepRun, str, str | None]] = []
    failure: BaseException | None = None
    savepoint = conn.begin_nested()
    try:
        for run in plan.steps:
            key = events.event_key(
                timer["id"], events.ESCALATION_TRIGGERED, run.step.step, repeat=run.repeat
            )
            ctx = StepContext(
                conn=conn, timer=timer, step=run.step, idempotency_key=key, repeat=run.repeat
            )
            try:
                report.actions += has_action(run.step.action)
                outcome = run_step(ctx)
            except BaseException as exc:  # time limits and shutdowns included
                if isinstance(exc, DBAPIError) and (connection_lost(exc) or is_transient(exc)):
                    raise  # an outage, or a transient error: not this timer's attempt
                log.warning(
                    "timer %s step %d (repeat %d) failed: %r",
                    timer["id"],
                    run.step.step,
                    run.repeat,
                    exc,
                )
                failure = exc
                break
            outcomes.append((run, *outcome))
        _apply_one(conn, token, at, _writes_for(p, outcomes, failure, at, settings), report)
    except DBAPIError as exc:
        if connection_lost(exc):
            raise
        savepoint.rollback()
        if is_transient(exc):
            # Persisted through the in-place retries: give this timer back.
            log.warning("timer %s gave up on a transient error (%s): released", timer["id"], exc)
            report.released += _in_place(
                conn, lambda: firing_sql.release_claimed(conn, token, [timer["id"]])
            )
            report.next_fire_times.add(at + RELEASED_RETRY)
            return None
        # Its writes fail in SQL: record the failure (an attempt) without them.
        log.warning("timer %s could not be written (%s); recording the failure", timer["id"], exc)
        failed = _BatchWrites(timers={timer["id"]: timer})
        _plan_failure(timer, exc, at, settings, failed)
        try:
            _apply_one(conn, token, at, failed, report)
        except DBAPIError as again:
            if connection_lost(again) or is_transient(again):
                raise
            # Not even its failure can be written: the lease rescue counts it.
            log.error("timer %s: its failure could not be written either: %s", timer["id"], again)
        return None
    savepoint.commit()
    if failure is not None and not isinstance(failure, Exception):
        return failure
    return None


def _retrying(engine: Engine, work: Callable[[Connection], T]) -> T:
    """``work`` in a transaction of its own, retried after transient errors."""
    for pause in (*TRANSIENT_PAUSES_S, None):
        try:
            with engine.begin() as conn:
                return work(conn)
        except DBAPIError as exc:
            if pause is None or not is_transient(exc):
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")


def _in_place(conn: Connection, statement: Callable[[], T]) -> T:
    """``statement`` under a savepoint, retried in place after transient errors
    (the rest of the transaction, and its locks, stay)."""
    for pause in (*TRANSIENT_PAUSES_S, None):
        try:
            with conn.begin_nested():
                return statement()
        except DBAPIError as exc:
            if pause is None or not is_transient(exc):
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")


def _apply(
    conn: Connection,
    token: UUID,
    at: datetime,
    writes: _BatchWrites,
    settings: Settings,
    report: FireReport,
) -> None:
    """Write timers in one statement; if it fails in SQL, timer by timer, so the
    row that breaks the batch fails alone (and the others are written once)."""
    if not writes.updates:
        return
    try:
        _apply_one(conn, token, at, writes, report)
        return
    except DBAPIError as exc:
        if connection_lost(exc) or is_transient(exc):
            raise
        log.warning(
            "batch of %d failed (%s); writing its timers one by one", len(writes.updates), exc
        )
        report.fallbacks += 1
    for timer_id, timer in writes.timers.items():
        try:
            _apply_one(conn, token, at, writes.of(timer_id), report)
        except DBAPIError as exc:
            if connection_lost(exc) or is_transient(exc):
                raise
            log.warning(
                "timer %s could not be written (%s); recording the failure",
                timer_id,
                exc,
                extra=logs.timer_fields(timer),
            )
            failed = _BatchWrites()
            _plan_failure(timer, exc, at, settings, failed)
            try:
                _apply_one(conn, token, at, failed, report)
            except DBAPIError as again:
                if connection_lost(again) or is_transient(again):
                    raise
                # Not even its failure can be written: the lease rescue counts it.
                log.error(
                    "timer %s: its failure could not be written either: %s",
                    timer_id,
                    again,
                    extra=logs.timer_fields(timer),
                )


def _apply_one(
    conn: Connection, token: UUID, at: datetime, writes: _BatchWrites, report: FireReport
) -> set[UUID]:
    applied = _in_place(
        conn,
        lambda: firing_sql.apply_fired(
            conn,
            token,
            events=writes.events,
            steps=writes.steps,
            step_events=writes.step_events,
            updates=writes.updates,
            now=at,
            warnings=writes.warnings,
            warning_events=writes.warning_events,
        ),
    )
    _count(writes, applied, report)
    return applied


def _count(writes: _BatchWrites, applied: set[UUID], report: FireReport) -> None:
    # Count only what was written: a timer cancelled since its claim was not.
    report.became_due += sum(
        e["event_type"] == events.DUE and e["timer_id"] in applied for e in writes.events
    )
    report.steps += sum(s["timer_id"] in applied for s in writes.steps)
    report.warnings += sum(w["timer_id"] in applied for w in writes.warnings)
    report.failures += sum(u["attempts"] > 0 and u["id"] in applied for u in writes.updates)
    report.dead_lettered += sum(
        u["processing_status"] == "FAILED" and u["id"] in applied for u in writes.updates
    )
    report.next_fire_times.update(
        u["next_fire_at"] for u in writes.updates if u["id"] in applied and u["next_fire_at"]
    )
    _tally(writes, applied, report.tally)


def _tally(writes: _BatchWrites, applied: set[UUID], tally: Counter) -> None:
    """The metrics' view of what was written: each timer's fire by outcome, each
    step run by step and outcome, each warning by outcome."""
    due = {e["timer_id"] for e in writes.events if e["event_type"] == events.DUE}
    stepped = set()
    for s in writes.steps:
        if s["timer_id"] in applied:
            stepped.add(s["timer_id"])
            tally["step", s["escalation_step"], s["outcome"]] += 1
    warned = set()
    for w in writes.warnings:
        if w["timer_id"] in applied:
            warned.add(w["timer_id"])
            tally["warning", w["outcome"]] += 1
    for u in writes.updates:
        timer_id = u["id"]
        if timer_id not in applied:
            continue
        if u["processing_status"] == "FAILED":
            outcome = "dead_letter"
        elif u["attempts"] > 0:
            outcome = "retry"
        elif timer_id in due:
            outcome = "due"
        elif timer_id in stepped:
            outcome = "step"
        elif timer_id in warned:
            outcome = "warning"
        else:
            outcome = "none"
        tally["fire", outcome] += 1


def _plan(timer: Mapping[str, Any], at: datetime, settings: Settings) -> _Planned:
    try:
        plan = plan_fire(
            status=timer["status"],
            schedule=schedule_of(timer),
            steps=ladder(timer["escalation_steps"]),
            steps_done=timer["steps_done"],
            now=at,
            thresholds=timer.get("warning_thresholds") or (),
            warnings_done=timer.get("warnings_done") or 0,
            created_at=timer.get("created_at"),
            repeat_cap=settings.max_step_repeats,
        )
    except Exception as exc:  # a malformed snapshot: retried, then dead-lettered
        log.warning(
            "timer %s cannot be planned: %s", timer["id"], exc, extra=logs.timer_fields(timer)
        )
        return _Planned(timer, error=exc)
    return _Planned(timer, plan, runs_actions=any(has_action(r.step.action) for r in plan.steps))


def _writes_for(
    p: _Planned,
    outcomes: Sequence[tuple[StepRun, str, str | None]],
    failure: BaseException | None,
    at: datetime,
    settings: Settings,
) -> _BatchWrites:
    """What one timer's fire writes. ``outcomes`` are its runs' outcomes (for
    a timer without actions: none, and every due run is a SUCCESS);
    ``failure`` what stopped its runs, if anything."""
    timer, plan = p.timer, p.plan
    writes = _BatchWrites(timers={timer["id"]: timer})
    if plan is None:
        _plan_failure(timer, p.error or RuntimeError("no plan"), at, settings, writes)
        return writes
    if not outcomes and failure is None:
        outcomes = [(run, "SUCCESS", None) for run in plan.steps]
    if plan.warnings:
        _warning_writes(timer, plan, at, writes)
    if plan.became_due:
        writes.events.append(events.timer_event(timer, events.DUE, at))
    for seq, (run, outcome, error) in enumerate(outcomes, start=1):
        step = run.step
        writes.steps.append(
            {
                "tenant_id": timer["tenant_id"],
                "lead_id": timer["lead_id"],
                "timer_id": timer["id"],
                "escalation_step": step.step,
                "repeat": run.repeat,
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
            repeat=run.repeat,
            escalation_step=step.step,
            action=step.action,
            target=step.target,
            after_seconds=step.after_seconds,
            outcome=outcome,
            error=error,
        )
        event["payload"]["repeat"] = run.repeat
        # For the statement: which row the event belongs to, and its outbox order.
        event |= {"step": step.step, "repeat": run.repeat, "seq": seq}
        writes.step_events.append(event)
    if failure is None:
        writes.updates.append(
            {
                "id": timer["id"],
                "status": plan.status,
                "steps_done": plan.steps_done,
                "warnings_done": plan.warnings_done,
                "next_fire_at": plan.next_fire_at,
                "processing_status": "PENDING" if plan.next_fire_at else "COMPLETED",
                "attempts": 0,
                "last_error": timer.get("last_error"),
                "next_attempt_at": None,
            }
        )
    else:
        # The runs before the failure are recorded; the retry resumes at it.
        progressed = {
            **timer,
            "status": "DUE",
            "steps_done": timer["steps_done"] + len(outcomes),
            "warnings_done": plan.warnings_done,
        }
        _plan_failure(progressed, failure, at, settings, writes)
    return writes


def _warning_writes(
    timer: Mapping[str, Any], plan: FirePlan, at: datetime, writes: _BatchWrites
) -> None:
    """A row per recorded warning and, for each one SENT, its event (written
    only with its row)."""
    due = timer["due_at"]
    for warning in plan.warnings:
        writes.warnings.append(
            {
                "tenant_id": timer["tenant_id"],
                "timer_id": timer["id"],
                "threshold": warning.threshold,
                "outcome": warning.outcome,
                "scheduled_at": warning.scheduled_at,
                "correlation_id": timer["correlation_id"],
            }
        )
        if warning.outcome != SENT:
            continue
        event = events.timer_event(
            timer,
            events.WARNING,
            at,
            step=warning.threshold,
            threshold=warning.threshold,
            # Wall-clock seconds from the warning to due_at (given beside it).
            remaining_seconds=max(0.0, (due - at).total_seconds()),
            scheduled_at=warning.scheduled_at,
        )
        # Before the due event and the steps in the outbox (seq 0 and up).
        event |= {"threshold": warning.threshold, "seq": warning.threshold - 100}
        writes.warning_events.append(event)


def _plan_failure(
    timer: Mapping[str, Any],
    exc: BaseException,
    at: datetime,
    settings: Settings,
    writes: _BatchWrites,
) -> None:
    attempts = timer["attempts"] + 1
    error = f"{type(exc).__name__}: {exc}"[:2000]
    update = {
        "id": timer["id"],
        "status": timer["status"],
        "steps_done": timer["steps_done"],
        "warnings_done": timer.get("warnings_done") or 0,
        "attempts": attempts,
        "last_error": error,
    }
    if attempts >= settings.max_attempts:
        # Dead letter: stop trying, say so, keep the row for inspection.
        update |= {"processing_status": "FAILED", "next_fire_at": None, "next_attempt_at": None}
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
