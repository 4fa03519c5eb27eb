"""The firing path under faults, with a counting action: leases that end,
actions run once, poisoned rows, transient errors, time limits, skewed clocks."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta
from uuid import uuid4

import pytest
from dramatiq.middleware.time_limit import TimeLimitExceeded
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

import models.sla
from models import firing as firing_sql
from models import timers as timer_sql
from models.sla import utcnow
from tasks.firing import FireReport, fire_claimed, fire_due
from tests.support.factories import overdue, start_timer

COUNT = ({"step": 1, "after_seconds": 0, "action": "count", "target": "crm"},)
COUNT_TWICE = (
    {"step": 1, "after_seconds": 0, "action": "count", "target": "crm"},
    {"step": 2, "after_seconds": 0, "action": "count", "target": "pager"},
)


def row(engine, timer_id):
    with engine.connect() as conn:
        return (
            conn.execute(text("SELECT * FROM sla_timers WHERE id = :id"), {"id": timer_id})
            .mappings()
            .one()
        )


def steps(engine, timer_id):
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT escalation_step, outcome FROM sla_escalation_events "
                "WHERE timer_id = :id ORDER BY escalation_step"
            ),
            {"id": timer_id},
        ).all()


def event_keys(engine, timer_id):
    with engine.connect() as conn:
        return (
            conn.execute(
                text("SELECT idempotency_key FROM outbox_events WHERE timer_id = :id ORDER BY id"),
                {"id": timer_id},
            )
            .scalars()
            .all()
        )


def key(timer, n):
    return f"{timer['id']}:step:{n}"


def claim(engine, token, *, lease=60, limit=100):
    with engine.begin() as conn:
        return firing_sql.claim_due(conn, token, None, limit, lease)


def rescue(engine, settings, now):
    with engine.begin() as conn:
        return firing_sql.rescue_expired_leases(conn, settings.max_attempts, now=now)


# -- defect 1: leases that end ---------------------------------------------------------


def test_a_rescue_counts_an_attempt_and_dead_letters_with_lease_expired(engine, settings, tenant):
    """A worker that dies after every claim (1 s lease): three rescues, then a
    dead letter with its failed event, instead of a loop that never ends."""
    timer = start_timer(engine, tenant[0], started_at=overdue())
    for attempt in range(1, settings.max_attempts + 1):
        claimed = claim(engine, uuid4(), lease=1)
        assert [t["id"] for t in claimed] == [timer["id"]]
        # Before the lease ends (by the database's clock) nothing is rescued.
        assert rescue(engine, settings, None) == 0
        assert rescue(engine, settings, claimed[0]["claimed_at"] + timedelta(seconds=2)) == 1
        r = row(engine, timer["id"])
        assert r["attempts"] == attempt
        assert r["last_error"].startswith("lease expired")
        assert r["claim_token"] is None
    r = row(engine, timer["id"])
    assert (r["processing_status"], r["next_fire_at"]) == ("FAILED", None)
    assert event_keys(engine, timer["id"]) == [f"{timer['id']}:started", f"{timer['id']}:failed:0"]
    assert claim(engine, uuid4()) == []  # not claimed ever again


def test_a_batch_at_work_keeps_its_rows_past_its_lease(engine, settings, tenant, counting):
    """The apply transaction locks its rows before any action: a rescue that
    runs while an action works (past the lease) skips them instead of handing
    them to another claimer."""
    timer = start_timer(engine, tenant[0], started_at=overdue(), steps=COUNT)
    rescued_meanwhile = []

    def rescue_while_working(ctx):
        rescued_meanwhile.append(rescue(engine, settings, utcnow() + timedelta(hours=1)))

    counting.during = rescue_while_working
    report = fire_due(engine, dataclasses.replace(settings, lease_seconds=1))
    assert rescued_meanwhile == [0]
    assert report.steps == 1
    assert counting.calls == {key(timer, 1): 1}
    r = row(engine, timer["id"])
    assert (r["status"], r["attempts"]) == ("ESCALATED", 0)


def test_a_hung_action_loses_its_transaction_after_a_lease_and_the_rescue_counts_it(
    engine, settings, tenant, counting
):
    """The transaction's idle timeout is the lease: an action that hangs past it
    loses the transaction (and the rows' locks), so the rescue can count it."""
    timer = start_timer(engine, tenant[0], started_at=overdue(), steps=COUNT)
    counting.during = lambda ctx: time.sleep(1.5)  # the hang itself, past a 1 s lease
    with pytest.raises(DBAPIError) as lost:
        fire_due(engine, dataclasses.replace(settings, lease_seconds=1))
    assert lost.value.connection_invalidated
    assert steps(engine, timer["id"]) == []
    assert row(engine, timer["id"])["processing_status"] == "PROCESSING"
    assert rescue(engine, settings, None) == 1
    r = row(engine, timer["id"])
    assert (r["processing_status"], r["attempts"]) == ("PENDING", 1)


@pytest.mark.parametrize("interrupt", [TimeLimitExceeded, SystemExit])
def test_a_time_limit_in_an_action_is_recorded_and_the_batch_is_not_lost(
    engine, settings, tenant, counting, interrupt
):
    slow = start_timer(engine, tenant[0], started_at=overdue(seconds=30), steps=COUNT)
    later = start_timer(engine, tenant[0], started_at=overdue(seconds=20), steps=COUNT)
    plain = start_timer(engine, tenant[0], started_at=overdue(seconds=10))
    counting.raise_for[key(slow, 1)] = interrupt()

    if interrupt is SystemExit:
        # Ends the process, but only after the batch is written.
        with pytest.raises(SystemExit):
            fire_due(engine, settings)
    else:
        report = fire_due(engine, settings)
        assert report.interrupted and report.released == 1

    r = row(engine, slow["id"])
    assert (r["attempts"], r["processing_status"], r["claim_token"]) == (1, "PENDING", None)
    assert r["last_error"].startswith(interrupt.__name__)
    assert row(engine, plain["id"])["status"] == "ESCALATED"
    # Not tried after the interrupt: given back as it was, no attempt counted.
    r = row(engine, later["id"])
    assert (r["attempts"], r["processing_status"], r["claim_token"]) == (0, "PENDING", None)
    assert counting.calls == {key(slow, 1): 1}
    fire_due(engine, settings)
    assert counting.calls == {key(slow, 1): 1, key(later, 1): 1}
    assert row(engine, later["id"])["status"] == "ESCALATED"


# -- defect 2: actions after the claim is checked, once --------------------------------


def test_a_timer_cancelled_between_claim_and_apply_runs_no_action(
    engine, settings, tenant, counting
):
    timer = start_timer(engine, tenant[0], started_at=overdue(), steps=COUNT)
    token = uuid4()
    claimed = claim(engine, token)
    with engine.begin() as conn:
        timer_sql.finish_timer(conn, tenant[0], timer["id"], "cancel", utcnow(), reason="lead lost")
    report = FireReport()
    fire_claimed(engine, settings, claimed, token, claimed[0]["claimed_at"], report)
    assert counting.total == 0
    assert report.steps == 0
    assert steps(engine, timer["id"]) == [(1, "SKIPPED")]


def test_each_action_gets_the_transaction_and_its_step_key(engine, settings, tenant, counting):
    timer = start_timer(engine, tenant[0], started_at=overdue(), steps=COUNT)
    seen = []

    def look(ctx):
        # The transaction that records the step: it holds the timer's row lock and claim.
        seen.append(
            ctx.conn.execute(
                text("SELECT claim_token IS NOT NULL FROM sla_timers WHERE id = :id"),
                {"id": ctx.timer["id"]},
            ).scalar_one()
        )
        ctx.conn.execute(
            text("SELECT set_config('test.written_by_action', 'yes', true)"),
        )

    counting.during = look
    fire_due(engine, settings)
    assert seen == [True]
    assert counting.calls == {key(timer, 1): 1}


def test_a_retry_resumes_at_the_failed_step_without_rerunning_the_earlier_one(
    engine, settings, tenant, counting
):
    """Step 1 succeeds, step 2 raises: step 1 is recorded, the attempt counts,
    and the retry runs step 2 only."""
    timer = start_timer(engine, tenant[0], started_at=overdue(), steps=COUNT_TWICE)
    counting.raise_for[key(timer, 2)] = RuntimeError("pager down")
    t = timer["due_at"] + timedelta(seconds=10)

    fire_due(engine, settings, now=lambda: t)
    r = row(engine, timer["id"])
    assert (r["status"], r["steps_done"], r["attempts"]) == ("DUE", 1, 1)
    assert r["last_error"] == "RuntimeError: pager down"
    assert steps(engine, timer["id"]) == [(1, "SUCCESS")]

    fire_due(engine, settings, now=lambda: t + timedelta(seconds=1))
    assert counting.calls == {key(timer, 1): 1, key(timer, 2): 2}
    r = row(engine, timer["id"])
    assert (r["status"], r["steps_done"], r["attempts"]) == ("ESCALATED", 2, 0)
    assert steps(engine, timer["id"]) == [(1, "SUCCESS"), (2, "SUCCESS")]
    assert event_keys(engine, timer["id"]) == [
        f"{timer['id']}:started",
        f"{timer['id']}:due",
        key(timer, 1),
        key(timer, 2),
    ]


def test_a_lease_expiry_and_rescue_run_the_action_once(engine, settings, tenant, counting):
    """A worker claims and dies before acting: after the rescue the action runs once."""
    timer = start_timer(engine, tenant[0], started_at=overdue(), steps=COUNT)
    claimed = claim(engine, uuid4(), lease=1)
    assert rescue(engine, settings, claimed[0]["claimed_at"] + timedelta(seconds=2)) == 1
    assert row(engine, timer["id"])["attempts"] == 1
    fire_due(engine, settings)
    assert counting.calls == {key(timer, 1): 1}
    assert steps(engine, timer["id"]) == [(1, "SUCCESS")]


def test_a_claimer_that_wakes_up_after_its_timer_was_rescued_and_fired_does_nothing(
    engine, settings, tenant, counting
):
    timer = start_timer(engine, tenant[0], started_at=overdue(), steps=COUNT)
    stale = uuid4()
    claimed = claim(engine, stale, lease=1)
    assert rescue(engine, settings, claimed[0]["claimed_at"] + timedelta(seconds=2)) == 1
    fire_due(engine, settings)  # another worker
    assert counting.total == 1
    before = (row(engine, timer["id"]), steps(engine, timer["id"]), event_keys(engine, timer["id"]))

    report = FireReport()
    fire_claimed(engine, settings, claimed, stale, claimed[0]["claimed_at"], report)
    assert counting.total == 1
    assert (report.steps, report.became_due, report.failures) == (0, 0, 0)
    after = (row(engine, timer["id"]), steps(engine, timer["id"]), event_keys(engine, timer["id"]))
    assert after == before


def test_one_row_failing_in_sql_falls_back_and_the_others_fire_once(
    engine, settings, tenant, poison
):
    timers = [start_timer(engine, tenant[0], started_at=overdue()) for _ in range(5)]
    bad = timers[2]
    poison(bad["id"])
    report = fire_due(engine, settings)
    assert report.fallbacks == 1  # the batch's statement failed and was split
    assert (report.claimed, report.steps, report.failures) == (5, 4, 1)
    for t in timers:
        if t is bad:
            r = row(engine, t["id"])
            assert (r["status"], r["attempts"], r["processing_status"]) == ("ACTIVE", 1, "PENDING")
            assert "poisoned row" in r["last_error"]
            assert steps(engine, t["id"]) == []
        else:
            assert row(engine, t["id"])["status"] == "ESCALATED"
            assert steps(engine, t["id"]) == [(1, "SUCCESS")]
            assert len(event_keys(engine, t["id"])) == 3


def test_a_poisoned_timer_alone_in_its_batch_counts_an_attempt(engine, settings, tenant, poison):
    timer = start_timer(engine, tenant[0], started_at=overdue())
    poison(timer["id"])
    report = fire_due(engine, settings)
    assert (report.claimed, report.failures) == (1, 1)
    r = row(engine, timer["id"])
    assert (r["attempts"], r["processing_status"], r["claim_token"]) == (1, "PENDING", None)


def test_a_batch_that_falls_back_runs_no_action_twice(engine, settings, tenant, counting, poison):
    acting = [start_timer(engine, tenant[0], started_at=overdue(), steps=COUNT) for _ in range(3)]
    plain = [start_timer(engine, tenant[0], started_at=overdue()) for _ in range(3)]
    poison(plain[1]["id"])  # breaks the batch statement
    poison(acting[1]["id"])  # breaks one acting timer's own writes
    report = fire_due(engine, settings)
    assert report.fallbacks == 1
    assert counting.calls == {key(t, 1): 1 for t in acting}
    for t in (acting[0], acting[2], plain[0], plain[2]):
        assert steps(engine, t["id"]) == [(1, "SUCCESS")]
    for t in (acting[1], plain[1]):
        r = row(engine, t["id"])
        assert (steps(engine, t["id"]), r["attempts"]) == ([], 1)


# -- defect 8: transient errors are not attempts ---------------------------------------


@pytest.mark.parametrize("sqlstate", ["40P01", "40001", "55P03", "57014"])
def test_a_transient_error_is_retried_without_counting_an_attempt(
    engine, settings, tenant, poison, sqlstate
):
    timer = start_timer(engine, tenant[0], started_at=overdue())
    poison(timer["id"], sqlstate, times=1)
    report = fire_due(engine, settings)
    assert (report.steps, report.failures, report.released) == (1, 0, 0)
    r = row(engine, timer["id"])
    assert (r["status"], r["attempts"], r["last_error"]) == ("ESCALATED", 0, None)


def test_a_persistent_transient_error_gives_the_claim_back_without_an_attempt(
    engine, settings, tenant, poison, counting
):
    plain = start_timer(engine, tenant[0], started_at=overdue())
    acting = start_timer(engine, tenant[0], started_at=overdue(), steps=COUNT)
    poison(plain["id"], "40P01")
    report = fire_due(engine, settings)
    assert report.released == 2
    for t in (plain, acting):
        r = row(engine, t["id"])
        assert (r["processing_status"], r["attempts"], r["claim_token"]) == ("PENDING", 0, None)
        assert r["next_fire_at"] is not None
    assert counting.total == 0  # given back before any action ran


# -- defect 9: the database's clock decides --------------------------------------------


class _HourAhead(datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime.now(tz) + timedelta(hours=1)


def test_a_worker_whose_clock_runs_an_hour_ahead_fires_nothing_early(
    engine, settings, tenant, monkeypatch
):
    from tasks import sweeper

    soon = start_timer(engine, tenant[0], window_seconds=1800)  # due in 30 minutes
    claimed_by_dead_worker = start_timer(engine, tenant[0], started_at=overdue())
    assert claim(engine, uuid4(), lease=60)[0]["id"] == claimed_by_dead_worker["id"]

    monkeypatch.setattr(models.sla, "datetime", _HourAhead)
    assert models.sla.utcnow() > soon["due_at"]  # the worker thinks it is due

    assert fire_due(engine, settings).claimed == 0
    assert row(engine, soon["id"])["status"] == "ACTIVE"
    # Nor does the sweeper rescue a lease that has 60 s left by the database's clock.
    assert sweeper.rescue_lost_work(engine) == 0
    assert row(engine, claimed_by_dead_worker["id"])["processing_status"] == "PROCESSING"
