"""Migration 0006 (SLA semantics) goes down and up with its data in place:
what the older schema cannot hold goes (step repeats, warnings, contracts,
calendars, the new event types), a paused timer returns to the status it was
paused from, and every constraint of the new shape is back after the upgrade."""

from __future__ import annotations

from sqlalchemy import text

from tests.support.common import alembic


def _scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def _constraint(engine, name: str) -> str:
    return _scalar(
        engine,
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = :name",
        name=name,
    )


def test_migration_0006_goes_down_and_up_with_its_data(api, engine, tenant):
    tenant_id = tenant[0]
    timer = api.start(lead_id="lead-m6", window_seconds=3600)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL app.all_tenants = 'on'"))
        conn.execute(
            text(
                "UPDATE sla_timers SET status = 'PAUSED', paused_from = 'ACTIVE', "
                "paused_at = now(), pause_reason = 'waiting', next_fire_at = NULL "
                "WHERE id = :id"
            ),
            {"id": timer["id"]},
        )
        for repeat in (0, 1):
            conn.execute(
                text(
                    "INSERT INTO sla_escalation_events (tenant_id, lead_id, timer_id, "
                    "escalation_step, repeat, executed_at, outcome, escalation_config, "
                    "correlation_id, idempotency_key) VALUES (:t, 'lead-m6', :id, 1, :r, "
                    "now(), 'SUCCESS', '{}', 'c', :key)"
                ),
                {"t": tenant_id, "id": timer["id"], "r": repeat, "key": f"k-{repeat}"},
            )
        conn.execute(
            text(
                "INSERT INTO sla_timer_warnings (tenant_id, timer_id, threshold, outcome, "
                "scheduled_at, recorded_at, correlation_id) "
                "VALUES (:t, :id, 50, 'SENT', now(), now(), 'c')"
            ),
            {"t": tenant_id, "id": timer["id"]},
        )
        conn.execute(
            text(
                "INSERT INTO calendars (tenant_id, calendar_id, timezone, weekly_hours) "
                "VALUES (:t, 'office', 'Europe/Berlin', '{}')"
            ),
            {"t": tenant_id},
        )
    engine.dispose()  # no pooled connection holds a lock the migration needs
    try:
        alembic("downgrade", "0005")
        assert _scalar(engine, "SELECT to_regclass('sla_timer_warnings')") is None
        assert _scalar(engine, "SELECT to_regclass('calendars')") is None
        assert _scalar(engine, "SELECT to_regclass('sla_contracts')") is None
        assert (
            _scalar(engine, "SELECT status FROM sla_timers WHERE id = :id", id=timer["id"])
            == "ACTIVE"
        )
        assert (
            _scalar(
                engine,
                "SELECT count(*) FROM sla_escalation_events WHERE timer_id = :id",
                id=timer["id"],
            )
            == 1
        )
        assert "PAUSED" not in _constraint(engine, "ck_sla_timers_status")
        assert "sla.timer.warning" not in _constraint(engine, "ck_outbox_events_event_type")
    finally:
        alembic("upgrade", "head")
    assert "PAUSED" in _constraint(engine, "ck_sla_timers_status")
    assert "paused" in _constraint(engine, "ck_lead_events_outcome")
    assert "sla.timer.resumed" in _constraint(engine, "ck_outbox_events_event_type")
    assert (
        _scalar(
            engine,
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'sla_escalation_events'::regclass AND contype = 'u' "
            "AND pg_get_constraintdef(oid) LIKE '%escalation_step%'",
        )
        == "UNIQUE (tenant_id, timer_id, escalation_step, repeat)"
    )
    assert _scalar(engine, "SELECT to_regclass('sla_timer_warnings')") is not None
