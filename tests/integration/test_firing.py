"""The firing path against a real PostgreSQL: claims, steps, outbox, failures."""

from __future__ import annotations

import dataclasses
import threading
from datetime import timedelta
from uuid import uuid4

import pytest
from sqlalchemy import text

from models import firing as firing_sql
from models import timers as timer_sql
from models.sla import utcnow
from tasks import escalation
from tasks.firing import FireReport, fire_claimed, fire_due
from tests.support import attempt_log
from tests.support.factories import overdue, start_timer

TWO_STEPS = (
    {"step": 1, "after_seconds": 0, "action": "notify", "target": "owner"},
    {"step": 2, "after_seconds": 600, "action": "reassign", "target": "team-lead"},
)


def timer_row(engine, timer_id):
    with engine.connect() as conn:
        return (
            conn.execute(text("SELECT * FROM sla_timers WHERE id = :id"), {"id": timer_id})
            .mappings()
            .one()
        )


def steps_of(engine, timer_id):
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT escalation_step, outcome, error_message FROM sla_escalation_events "
                "WHERE timer_id = :id ORDER BY escalation_step"
            ),
            {"id": timer_id},
        ).all()


def event_types(engine, timer_id):
    with engine.connect() as conn:
        return (
            conn.execute(
                text("SELECT event_type FROM outbox_events WHERE timer_id = :id ORDER BY id"),
                {"id": timer_id},
            )
            .scalars()
            .all()
        )


def at(moment):
    return lambda: moment


def test_a_due_timer_fires_its_step_once_with_its_events(engine, settings, tenant):
    timer = start_timer(engine, tenant[0], started_at=overdue())
    report = fire_due(engine, settings)
    assert (report.claimed, report.became_due, report.steps) == (1, 1, 1)
    row = timer_row(engine, timer["id"])
    assert (row["status"], row["processing_status"], row["next_fire_at"]) == (
        "ESCALATED",
        "COMPLETED",
        None,
    )
    assert steps_of(engine, timer["id"]) == [(1, "SUCCESS", None)]
    assert event_types(engine, timer["id"]) == [
        "sla.timer.started",
        "sla.timer.due",
        "sla.escalation.triggered",
    ]
    # A second (duplicate, late) run finds nothing to do.
    assert fire_due(engine, settings).claimed == 0


def test_a_timer_not_yet_due_is_left_alone(engine, settings, tenant):
    timer = start_timer(engine, tenant[0], window_seconds=3600)
    assert fire_due(engine, settings).claimed == 0
    assert timer_row(engine, timer["id"])["status"] == "ACTIVE"


def test_later_steps_wait_for_their_time(engine, settings, tenant):
    timer = start_timer(engine, tenant[0], window_seconds=60, steps=TWO_STEPS)
    due = timer["due_at"]
    fire_due(engine, settings, now=at(due))
    row = timer_row(engine, timer["id"])
    assert (row["status"], row["steps_done"]) == ("DUE", 1)
    assert row["next_fire_at"] == due + timedelta(seconds=600)
    assert fire_due(engine, settings, now=at(due + timedelta(seconds=599))).claimed == 0
    fire_due(engine, settings, now=at(due + timedelta(seconds=600)))
    assert timer_row(engine, timer["id"])["status"] == "ESCALATED"
    assert [s[0] for s in steps_of(engine, timer["id"])] == [1, 2]


def test_two_claimers_get_disjoint_rows(engine, settings, tenant):
    for _ in range(40):
        start_timer(engine, tenant[0], started_at=overdue())
    now = utcnow()
    with engine.connect() as a, engine.connect() as b:
        first = {t["id"] for t in firing_sql.claim_due(a, uuid4(), now, 25, 60)}
        # ``a`` has not committed: ``b`` must skip its rows, not wait for or take them.
        second = {t["id"] for t in firing_sql.claim_due(b, uuid4(), now, 25, 60)}
        assert len(first) == 25 and len(second) == 15
        assert not first & second
        a.rollback()
        b.rollback()


def test_concurrent_firing_routines_write_each_step_and_event_exactly_once(
    engine, settings, tenant
):
    timers = [start_timer(engine, tenant[0], steps=TWO_STEPS) for _ in range(300)]
    later = max(t["due_at"] for t in timers) + timedelta(seconds=601)
    small_batches = dataclasses.replace(settings, batch_size=7)
    reports: list[FireReport] = []
    barrier = threading.Barrier(6)

    def run():
        barrier.wait()
        reports.append(fire_due(engine, small_batches, now=at(later)))

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # No timer was processed by two routines (the claim, not only the constraints).
    assert sum(r.claimed for r in reports) == 300
    assert sum(r.steps for r in reports) == 600
    with engine.connect() as conn:
        per_step = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT (timer_id, escalation_step)) "
                "FROM sla_escalation_events"
            )
        ).one()
        per_event = conn.execute(
            text("SELECT event_type, count(*) FROM outbox_events GROUP BY event_type")
        ).all()
        statuses = conn.execute(text("SELECT DISTINCT status FROM sla_timers")).scalars().all()
    assert tuple(per_step) == (600, 600)
    # Rows are unique by constraint, so only the attempts can show a second try.
    with engine.connect() as conn:
        assert attempt_log.duplicate_attempts(conn) == []
        assert attempt_log.attempts(conn) == 600
    assert dict(per_event) == {
        "sla.timer.started": 300,
        "sla.timer.due": 300,
        "sla.escalation.triggered": 600,
    }
    assert statuses == ["ESCALATED"]


def test_a_timer_completed_before_due_never_escalates(engine, settings, tenant):
    timer = start_timer(engine, tenant[0], steps=TWO_STEPS)
    with engine.begin() as conn:
        done = timer_sql.finish_timer(conn, tenant[0], timer["id"], "complete", utcnow())
    assert done["breached"] is False
    fire_due(engine, settings, now=at(timer["due_at"] + timedelta(days=1)))
    assert steps_of(engine, timer["id"]) == [(1, "SKIPPED", None), (2, "SKIPPED", None)]
    assert "sla.escalation.triggered" not in event_types(engine, timer["id"])
    assert timer_row(engine, timer["id"])["status"] == "COMPLETED"


def test_a_timer_cancelled_between_claim_and_processing_does_not_fire(engine, settings, tenant):
    timer = start_timer(engine, tenant[0], started_at=overdue())
    token, now = uuid4(), utcnow()
    with engine.begin() as conn:
        claimed = firing_sql.claim_due(conn, token, now, 10, 60)
    with engine.begin() as conn:
        timer_sql.finish_timer(conn, tenant[0], timer["id"], "cancel", now, reason="lead lost")
    report = FireReport()
    fire_claimed(engine, settings, claimed, token, now, report)
    assert report.steps == 0
    assert steps_of(engine, timer["id"]) == [(1, "SKIPPED", None)]
    row = timer_row(engine, timer["id"])
    assert (row["status"], row["cancel_reason"], row["claim_token"]) == (
        "CANCELLED",
        "lead lost",
        None,
    )


def test_after_a_completed_timer_remaining_steps_are_skipped(engine, settings, tenant):
    timer = start_timer(engine, tenant[0], started_at=overdue(), steps=TWO_STEPS)
    fire_due(engine, settings)
    with engine.begin() as conn:
        done = timer_sql.finish_timer(conn, tenant[0], timer["id"], "complete", utcnow())
    assert done["breached"] is True
    fire_due(engine, settings, now=at(timer["due_at"] + timedelta(days=1)))
    assert steps_of(engine, timer["id"]) == [(1, "SUCCESS", None), (2, "SKIPPED", None)]


@pytest.fixture
def actions():
    names = []

    def register(name, fn):
        escalation.register_action(name, fn)
        names.append(name)

    yield register
    for name in names:
        escalation.unregister_action(name)


def test_a_step_that_cannot_run_is_recorded_failed_and_the_next_step_runs(
    engine, settings, tenant, actions
):
    def refuse(ctx):
        raise escalation.StepCannotRun("no on-call engineer for target")

    actions("page", refuse)
    ladder = (
        {"step": 1, "after_seconds": 0, "action": "page", "target": "nobody"},
        {"step": 2, "after_seconds": 0, "action": "notify"},
    )
    timer = start_timer(engine, tenant[0], started_at=overdue(), steps=ladder)
    fire_due(engine, settings)
    assert steps_of(engine, timer["id"]) == [
        (1, "FAILED", "no on-call engineer for target"),
        (2, "SUCCESS", None),
    ]
    assert timer_row(engine, timer["id"])["status"] == "ESCALATED"


def test_a_failing_timer_is_retried_with_backoff_then_dead_lettered(
    engine, settings, tenant, actions
):
    def explode(ctx):
        raise RuntimeError("crm unavailable")

    actions("explode", explode)
    bad = start_timer(
        engine, tenant[0], steps=({"step": 1, "after_seconds": 0, "action": "explode"},)
    )
    good = start_timer(engine, tenant[0])
    t = max(bad["due_at"], good["due_at"])

    fire_due(engine, settings, now=at(t))
    row = timer_row(engine, bad["id"])
    # It did come due (that is a fact, whatever its action does): DUE, with its event.
    assert (row["attempts"], row["processing_status"], row["status"]) == (1, "PENDING", "DUE")
    assert row["last_error"] == "RuntimeError: crm unavailable"
    assert row["next_attempt_at"] == row["next_fire_at"] == t + timedelta(seconds=1)
    # The failure of one timer does not hold back the rest of its batch.
    assert timer_row(engine, good["id"])["status"] == "ESCALATED"

    assert fire_due(engine, settings, now=at(t + timedelta(milliseconds=999))).claimed == 0
    fire_due(engine, settings, now=at(t + timedelta(seconds=1)))
    row = timer_row(engine, bad["id"])
    assert row["attempts"] == 2
    assert row["next_attempt_at"] == t + timedelta(seconds=3)  # backoff doubled

    fire_due(engine, settings, now=at(t + timedelta(seconds=3)))
    row = timer_row(engine, bad["id"])
    assert (row["attempts"], row["processing_status"], row["next_fire_at"]) == (3, "FAILED", None)
    assert steps_of(engine, bad["id"]) == []
    assert event_types(engine, bad["id"]) == [
        "sla.timer.started",
        "sla.timer.due",
        "sla.timer.failed",
    ]
    assert fire_due(engine, settings, now=at(t + timedelta(days=1))).claimed == 0


def test_a_malformed_snapshot_fails_only_its_own_timer(engine, settings, tenant):
    good = start_timer(engine, tenant[0], started_at=overdue())
    bad = start_timer(engine, tenant[0], started_at=overdue())
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE sla_timers SET escalation_steps = '[{\"step\": 1}]' WHERE id = :id"),
            {"id": bad["id"]},
        )
    report = fire_due(engine, settings)
    assert (report.claimed, report.steps, report.failures) == (2, 1, 1)
    assert timer_row(engine, good["id"])["status"] == "ESCALATED"
    assert timer_row(engine, bad["id"])["last_error"].startswith("KeyError")
