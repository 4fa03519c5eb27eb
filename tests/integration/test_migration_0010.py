"""Migration 0010 (the open-timer index carries what the open-timer counts read)
goes down and up with open and closed timers in place: the counts of
``/metrics`` and ``/v1/stats`` are what they were, are read from the index
alone after it, and a lead still has one open timer per contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from models.metrics import SQL as METRICS_SQL
from tests.support.common import alembic

INDEX = "uq_sla_timers_open_per_lead_contract"
INCLUDED = "status, started_at, due_at, paused_at, next_fire_at"
START = datetime.now(UTC) - timedelta(days=1)
END = datetime.now(UTC) + timedelta(hours=1)


def _included(engine) -> str | None:
    """The index's INCLUDE list, as PostgreSQL spells it (None: none)."""
    with engine.connect() as conn:
        definition = conn.execute(
            text("SELECT pg_get_indexdef(to_regclass(:n))"), {"n": INDEX}
        ).scalar()
    _, found, rest = definition.partition(" INCLUDE (")
    return rest.split(")")[0] if found else None


def _counts(api, engine) -> tuple[dict, dict]:
    response = api.get("/v1/stats", query_string={"from": START.isoformat(), "to": END.isoformat()})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    with engine.begin() as conn:
        state = dict(conn.execute(METRICS_SQL.state.text).mappings().one())
    state.pop("oldest_overdue_seconds")
    return {k: body[k] for k in ("active", "paused", "overdue")}, state


def _plan(engine) -> str:
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        conn.execute(text("SET LOCAL enable_bitmapscan = off"))
        rows = conn.execute(text("EXPLAIN " + METRICS_SQL.state.sql)).scalars()
        return "\n".join(rows)


def test_migration_0010_goes_down_and_up_with_open_timers_in_place(api, engine, tenant):
    for lead in ("a", "b", "c", "d"):
        api.start(lead_id=lead, window_seconds=3600)
    done = api.start(lead_id="e", window_seconds=3600)
    api.post(f"/v1/timers/{done['id']}/complete", {})
    paused = api.start(lead_id="f", window_seconds=3600)
    assert api.post(f"/v1/timers/{paused['id']}/pause", {}).status_code == 200
    before = _counts(api, engine)
    assert before[0]["active"] == 4 and before[0]["paused"] == 1
    assert _included(engine) == INCLUDED
    assert f"Index Only Scan using {INDEX}" in _plan(engine)
    engine.dispose()  # no pooled connection holds a lock the migration needs
    try:
        alembic("downgrade", "0009")
        assert _included(engine) is None
        assert _counts(api, engine) == before
    finally:
        alembic("upgrade", "head")
    assert _included(engine) == INCLUDED
    assert _counts(api, engine) == before
    # Still one open timer per lead and contract: a new start supersedes.
    again = api.start(lead_id="a", window_seconds=3600)
    with engine.connect() as conn:
        open_a = conn.execute(
            text(
                "SELECT id FROM sla_timers WHERE lead_id = 'a'"
                " AND status IN ('ACTIVE', 'DUE', 'ESCALATED', 'PAUSED')"
            )
        ).scalars()
        assert [str(i) for i in open_a] == [again["id"]]
