"""Migration 0011 (no unique index of its own for a step row's idempotency
key) goes down and up with fired timers in place, and a step is still written
once: the (tenant, timer, step, repeat) key keeps the guarantee alone."""

from __future__ import annotations

from sqlalchemy import text

from tasks.firing import fire_due
from tests.support.common import alembic
from tests.support.factories import overdue, start_timer

STEP_KEY = "uq_sla_escalation_events_tenant_id_idempotency_key"

# A second run of a fired step, as a duplicate wake-up or a stale claimer would write it.
_AGAIN = """
INSERT INTO sla_escalation_events (tenant_id, lead_id, timer_id, escalation_step, repeat,
    executed_at, outcome, escalation_config, correlation_id, idempotency_key)
SELECT tenant_id, lead_id, timer_id, escalation_step, repeat, now(), outcome,
       escalation_config, correlation_id, idempotency_key
FROM sla_escalation_events WHERE timer_id = :id
ON CONFLICT DO NOTHING
"""


def _has_index(engine, name: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None


def _steps(engine, timer_id) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT escalation_step, repeat, idempotency_key FROM sla_escalation_events"
                " WHERE timer_id = :id ORDER BY escalation_step"
            ),
            {"id": timer_id},
        ).all()


def test_migration_0011_goes_down_and_up_with_steps_in_place(engine, settings, tenant):
    fired = start_timer(engine, tenant[0], started_at=overdue())
    assert fire_due(engine, settings).steps == 1
    assert not _has_index(engine, STEP_KEY)
    engine.dispose()  # no pooled connection holds a lock the migration needs
    try:
        alembic("downgrade", "0010")
        assert _has_index(engine, STEP_KEY)
        assert _steps(engine, fired["id"]) == [(1, 0, f"{fired['id']}-1")]
    finally:
        alembic("upgrade", "head")
    assert not _has_index(engine, STEP_KEY)

    later = start_timer(engine, tenant[0], started_at=overdue(), lead_id="after-0011")
    assert fire_due(engine, settings).steps == 1
    for timer in (fired, later):
        with engine.begin() as conn:
            assert conn.execute(text(_AGAIN), {"id": timer["id"]}).rowcount == 0
        assert _steps(engine, timer["id"]) == [(1, 0, f"{timer['id']}-1")]
