"""Migration 0007 (the stats rollup) goes down and up with a rollup in place,
and the stats after it are what they were: with no position, the first fold
takes in every close again from the events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from models import stats
from models.sla import utcnow
from tests.support.common import alembic


def _regclass(engine, name: str):
    with engine.connect() as conn:
        return conn.execute(text("SELECT to_regclass(:name)"), {"name": name}).scalar()


START = (utcnow() - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
END = datetime.now(UTC) + timedelta(hours=1)


def _stats(api) -> dict:
    query = {"from": START.isoformat(), "to": END.isoformat()}
    response = api.get("/v1/stats", query_string=query)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def _figures(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "as_of"}


def test_migration_0007_goes_down_and_up_with_a_rollup_in_place(api, engine, tenant):
    two_days_ago = (utcnow() - timedelta(days=2)).isoformat()
    for lead in ("a", "b", "c"):
        timer = api.start(lead_id=lead, window_seconds=60, started_at=two_days_ago)
        api.post(f"/v1/timers/{timer['id']}/complete", {})
    stats.fold_all(engine)
    before = _stats(api)
    assert before["completed_late"] == 3
    engine.dispose()  # no pooled connection holds a lock the migration needs
    try:
        alembic("downgrade", "0006")
        for name in ("sla_stats_rollup", "sla_stats_positions", "ix_outbox_events_timer_id"):
            assert _regclass(engine, name) is None
    finally:
        alembic("upgrade", "head")
    assert _regclass(engine, "sla_stats_rollup") is not None
    live = _stats(api)  # no position yet: every close counted from the events
    stats.fold_all(engine)
    assert _figures(live) == _figures(_stats(api)) == _figures(before)
