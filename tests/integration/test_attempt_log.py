"""The insert-attempt log (tests/support/attempt_log.py) sees what the rows cannot:
a second write that ``ON CONFLICT DO NOTHING`` dropped, as the service's own
role, by the database's clock; and it forgets a write that rolled back."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from tests.support import attempt_log
from tests.support.factories import overdue, start_timer

_STEP = """
INSERT INTO sla_escalation_events (tenant_id, lead_id, timer_id, escalation_step, executed_at,
    outcome, escalation_config, correlation_id, idempotency_key)
VALUES (:tenant, 'lead', :timer, 1, :at, 'SUCCESS', '{}'::jsonb, 'c', :key)
ON CONFLICT DO NOTHING
"""


@pytest.fixture
def timer(engine, tenant):
    return start_timer(engine, tenant[0], started_at=overdue(seconds=0))


def write_step(engine, tenant, timer, at) -> int:
    with engine.begin() as conn:  # the maintenance role, as the workers
        params = {"tenant": tenant[0], "timer": timer["id"], "at": at, "key": f"{timer['id']}-1"}
        return conn.execute(text(_STEP), params).rowcount


def test_a_dropped_duplicate_is_an_attempt(engine, tenant, timer):
    assert write_step(engine, tenant, timer, timer["due_at"]) == 1
    assert write_step(engine, tenant, timer, timer["due_at"]) == 0  # dropped by the constraint
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sla_escalation_events")).scalar() == 1
        assert attempt_log.duplicate_attempts(conn) == [
            ("sla_escalation_events", tenant[0], timer["id"], "1", 2)
        ]
        # The timer's started event, written once, is one attempt.
        assert attempt_log.attempts(conn, "outbox_events") == 1


def test_a_rolled_back_write_is_forgotten(engine, tenant, timer):
    with pytest.raises(RuntimeError), engine.begin() as conn:
        params = {"tenant": tenant[0], "timer": timer["id"], "at": timer["due_at"], "key": "k"}
        conn.execute(text(_STEP), params)
        raise RuntimeError("the worker dies before its commit")
    with engine.connect() as conn:
        assert attempt_log.attempts(conn) == 0


def test_earliness_is_the_databases_clock_not_the_rows(engine, tenant, timer):
    # A step row whose executed_at (the writer's clock) is after its due instant,
    # written while the database's clock is an hour before it: early.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE sla_timers SET due_at = now() + interval '1 hour' WHERE id = :id"),
            {"id": timer["id"]},
        )
    write_step(engine, tenant, timer, timer["due_at"] + timedelta(hours=2))
    with engine.connect() as conn:
        early = attempt_log.early_steps(conn)
    assert [(row[0], row[1]) for row in early] == [(timer["id"], 1)]
