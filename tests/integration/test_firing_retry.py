"""Dead letters: POST /v1/timers/{id}/retry, its events, and migration 0003."""

from __future__ import annotations

import dataclasses
from uuid import uuid4

import pytest
from sqlalchemy import text

from tasks.firing import fire_due
from tests.support.api import assert_problem
from tests.support.common import alembic
from tests.support.factories import overdue

EXPLODING = [{"step": 1, "after_seconds": 0, "action": "count", "target": "crm"}]


def events_of(engine, timer_id):
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT event_type, idempotency_key FROM outbox_events "
                "WHERE timer_id = :id ORDER BY id"
            ),
            {"id": timer_id},
        ).all()


def state(engine, timer_id):
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT status, processing_status, attempts, retries, last_error "
                "FROM sla_timers WHERE id = :id"
            ),
            {"id": timer_id},
        ).one()


@pytest.fixture
def one_attempt(settings):
    return dataclasses.replace(settings, max_attempts=1)


def dead_letter(api, engine, one_attempt, counting) -> str:
    """A timer whose step raises, dead-lettered after its only attempt."""
    timer = api.start(
        lead_id=f"lead-{uuid4()}",
        window_seconds=60,
        started_at=overdue().isoformat(),
        escalation_steps=EXPLODING,
    )
    counting.sticky = True
    counting.raise_for[f"{timer['id']}:step:1"] = RuntimeError("crm down")
    fire_due(engine, one_attempt)
    assert state(engine, timer["id"])[:3] == ("DUE", "FAILED", 1)
    return timer["id"]


def test_a_dead_letter_is_retried_once_and_fails_again_with_a_new_event(
    api, engine, one_attempt, counting
):
    timer_id = dead_letter(api, engine, one_attempt, counting)

    response = api.post(f"/v1/timers/{timer_id}/retry")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["processing_status"], body["attempts"]) == ("PENDING", 0)
    # last_error is kept until the next attempt's outcome replaces it.
    assert body["last_error"] == "RuntimeError: crm down"
    # Asked again before it fails again: the same answer, no second event.
    again = api.post(f"/v1/timers/{timer_id}/retry")
    assert again.status_code == 200
    assert again.get_json()["processing_status"] == "PENDING"
    assert [k for t, k in events_of(engine, timer_id) if t == "sla.timer.retried"] == [
        f"{timer_id}:retried:1"
    ]

    fire_due(engine, one_attempt)  # fails again: a second dead letter, a second event
    assert state(engine, timer_id)[:4] == ("DUE", "FAILED", 1, 1)
    assert [k for t, k in events_of(engine, timer_id) if t == "sla.timer.failed"] == [
        f"{timer_id}:failed:0",
        f"{timer_id}:failed:1",
    ]
    assert counting.total == 2

    assert api.post(f"/v1/timers/{timer_id}/retry").status_code == 200
    counting.raise_for.clear()
    fire_due(engine, one_attempt)
    assert state(engine, timer_id)[:4] == ("ESCALATED", "COMPLETED", 0, 2)
    assert [t for t, _ in events_of(engine, timer_id)] == [
        "sla.timer.started",
        "sla.timer.due",
        "sla.timer.failed",
        "sla.timer.retried",
        "sla.timer.failed",
        "sla.timer.retried",
        "sla.escalation.triggered",
    ]
    # Retried and done: a late repeat of the retry changes nothing.
    assert api.post(f"/v1/timers/{timer_id}/retry").status_code == 200
    assert len(events_of(engine, timer_id)) == 7


def test_a_timer_that_has_not_failed_cannot_be_retried(api, engine):
    timer = api.start(lead_id="lead-ok", window_seconds=600)
    response = api.post(f"/v1/timers/{timer['id']}/retry")
    problem = assert_problem(response, 409)
    assert "FAILED" in problem["detail"]
    assert state(engine, timer["id"])[:4] == ("ACTIVE", "PENDING", 0, 0)


def test_a_closed_dead_letter_cannot_be_retried(api, engine, one_attempt, counting):
    timer_id = dead_letter(api, engine, one_attempt, counting)
    assert api.post(f"/v1/timers/{timer_id}/cancel").status_code == 200
    assert_problem(api.post(f"/v1/timers/{timer_id}/retry"), 409)


def test_retrying_an_unknown_timer_is_404(api):
    assert_problem(api.post(f"/v1/timers/{uuid4()}/retry"), 404)


def _columns(engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                text(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'sla_timers'"
                )
            ).scalars()
        )


def test_migration_0003_goes_down_and_up(api, engine, one_attempt, counting):
    timer_id = dead_letter(api, engine, one_attempt, counting)
    assert api.post(f"/v1/timers/{timer_id}/retry").status_code == 200
    engine.dispose()  # no pooled connection holds a lock the migration needs
    try:
        alembic("downgrade", "0002")
        assert "retries" not in _columns(engine)
        # Its events go with it; the old constraint is back.
        assert [t for t, _ in events_of(engine, timer_id)][-1] == "sla.timer.failed"
    finally:
        alembic("upgrade", "head")
    assert "retries" in _columns(engine)
    with engine.connect() as conn:
        check = conn.execute(
            text(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conname = 'ck_outbox_events_event_type'"
            )
        ).scalar_one()
    assert "sla.timer.retried" in check
