"""Retention (models/retention.py): closed timers after SLA_RETENTION_DAYS with
their step and warning rows, delivered events after SLA_OUTBOX_RETENTION_DAYS
with their deliveries; never open, paused, dead-lettered or undelivered data,
nothing the stats fold has not reached, and the folded stats unchanged."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from models import retention
from models.sla import utcnow
from models.stats import fold_all
from models.timers import finish_timer
from tasks.firing import fire_due
from tests.support.factories import start_timer

LADDER = ({"step": 1, "after_seconds": 0, "action": "notify", "target": "owner"},)
# Whole UTC days, 120 to 100 days ago: the rollup's part of a stats range.
DAY0 = (utcnow() - timedelta(days=120)).replace(hour=0, minute=0, second=0, microsecond=0)
OLD = DAY0 + timedelta(days=1, hours=3)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _timer(engine, tenant_id, name: str, started_at: datetime) -> dict:
    return start_timer(
        engine, tenant_id, lead_id=f"lead-{name}", started_at=started_at, steps=LADDER
    )


def _close(engine, tenant_id, timer, verb: str, at: datetime) -> None:
    with engine.begin() as conn:
        finish_timer(conn, tenant_id, timer["id"], verb, at, None)


def _subscription(engine, tenant_id):
    from models import webhooks as webhook_sql

    with engine.begin() as conn:
        return webhook_sql.create_subscription(
            conn, tenant_id, url="http://127.0.0.1:9/hook", event_types=None,
            description=None, secret="whsec_dGVzdA==",
        )["id"]  # fmt: skip


def _age_events(engine, days: int) -> None:
    """Every event so far was created ``days`` ago (they were written just now)."""
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE outbox_events SET created_at = now() - make_interval(days => :d)"),
            {"d": days},
        )


def _ids(engine, table: str) -> set:
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(text(f"SELECT id FROM {table}"))}


def _fold_through(engine, timeout: float = 20) -> None:
    """Fold until the positions pass every event and row so far. The fold reads
    below the cluster's oldest running transaction: another database's
    transaction may hold it back for a moment."""
    deadline = time.monotonic() + timeout
    while True:
        fold_all(engine)
        with engine.connect() as conn:
            behind = conn.execute(
                text(
                    "SELECT EXISTS (SELECT FROM outbox_events e JOIN sla_stats_positions p "
                    "USING (tenant_id) WHERE (e.txid, e.id) > (p.txid, p.event_id)) OR EXISTS "
                    "(SELECT FROM sla_escalation_events s JOIN sla_stats_positions p "
                    "USING (tenant_id) WHERE s.txid > p.rows_txid)"
                )
            ).scalar()
        if not behind:
            return
        assert time.monotonic() < deadline, "the stats fold did not catch up"
        time.sleep(0.1)


def _run(engine, **kw):
    return retention.run(engine, timer_days=90, event_days=14, batch=2, pause=0, **kw)


def _stats(api) -> dict:
    to = DAY0 + timedelta(days=10)
    response = api.get("/v1/stats", query_string={"from": iso(DAY0), "to": iso(to)})
    assert response.status_code == 200, response.get_json()
    return {k: v for k, v in response.get_json().items() if k != "as_of"}


def test_retention_deletes_only_finished_folded_and_delivered_data(api, engine, settings, tenant):
    tid = tenant[0]
    _subscription(engine, tid)
    done = {n: _timer(engine, tid, n, OLD) for n in ("completed", "cancelled", "dead", "recent")}
    kept_open = _timer(engine, tid, "open", OLD)
    paused = _timer(engine, tid, "paused", OLD)
    fire_due(engine, settings)  # every one is long due: a step row each
    _close(engine, tid, done["completed"], "complete", OLD + timedelta(minutes=5))
    _close(engine, tid, done["cancelled"], "cancel", OLD + timedelta(minutes=5))
    _close(engine, tid, done["dead"], "complete", OLD + timedelta(minutes=5))
    _close(engine, tid, done["recent"], "complete", OLD + timedelta(minutes=5))
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE sla_timers SET processing_status = 'FAILED' WHERE id = :i"),
            {"i": done["dead"]["id"]},
        )
        conn.execute(
            text("UPDATE sla_timers SET completed_at = now() - interval '10 days' WHERE id = :i"),
            {"i": done["recent"]["id"]},
        )
        conn.execute(
            text("UPDATE sla_timers SET status = 'PAUSED', paused_at = :at WHERE id = :i"),
            {"i": paused["id"], "at": OLD},
        )
        # The subscription's trigger armed a delivery of every event: all
        # DELIVERED, but one PENDING and one FAILED (of the open timer's events).
        conn.execute(text("UPDATE webhook_deliveries SET status = 'DELIVERED'"))
        conn.execute(
            text(
                "UPDATE webhook_deliveries SET status = CASE WHEN event_id = (SELECT min(id) "
                "FROM outbox_events WHERE timer_id = :t) THEN 'PENDING' ELSE 'FAILED' END "
                "WHERE timer_id = :t AND event_id IN (SELECT id FROM outbox_events "
                "WHERE timer_id = :t ORDER BY id LIMIT 2)"
            ),
            {"t": kept_open["id"]},
        )
    _age_events(engine, 100)

    # Not folded yet: nothing may go, the stats still count it all live.
    assert _run(engine).events == 0
    _fold_through(engine)
    before = _stats(api)
    assert before["started"] == 6 and before["cancelled"] == 1, before
    events_before = _ids(engine, "outbox_events")

    report = _run(engine)

    assert _ids(engine, "sla_timers") == {
        done["dead"]["id"], done["recent"]["id"], kept_open["id"], paused["id"]
    }  # fmt: skip
    with engine.connect() as conn:
        undelivered = {
            r[0]
            for r in conn.execute(
                text("SELECT event_id FROM webhook_deliveries WHERE status <> 'DELIVERED'")
            )
        }
        steps = {r[0] for r in conn.execute(text("SELECT timer_id FROM sla_escalation_events"))}
        orphans = conn.execute(
            text(
                "SELECT count(*) FROM webhook_deliveries d WHERE NOT EXISTS "
                "(SELECT FROM outbox_events e WHERE e.id = d.event_id)"
            )
        ).scalar()
    assert len(undelivered) == 2 and _ids(engine, "outbox_events") == undelivered
    assert report.events == len(events_before) - 2
    assert report.timers == 2
    assert done["completed"]["id"] not in steps and done["cancelled"]["id"] not in steps
    assert {done["dead"]["id"], kept_open["id"], paused["id"]} <= steps
    assert orphans == 0
    assert _stats(api) == before  # the folded figures stay as they were


def test_recent_events_stay_and_a_second_run_finds_nothing(api, engine, settings, tenant):
    tid = tenant[0]
    timer = _timer(engine, tid, "x", OLD)
    _close(engine, tid, timer, "complete", OLD + timedelta(minutes=1))
    _age_events(engine, 10)  # younger than SLA_OUTBOX_RETENTION_DAYS
    _fold_through(engine)
    first = _run(engine)
    assert (first.events, first.timers) == (0, 0)
    assert timer["id"] in _ids(engine, "sla_timers")  # its events hold it


def test_one_run_at_a_time(engine, tenant):
    from models.db import get_maintenance_engine

    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": retention.LOCK_KEY})
        try:
            assert retention.run(
                get_maintenance_engine(), timer_days=90, event_days=14
            ).skipped  # fmt: skip
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": retention.LOCK_KEY})
    assert not retention.run(engine, timer_days=90, event_days=14).skipped


def test_the_hourly_actor_runs_retention(engine, tenant):
    from tasks.retention import apply_retention

    tid = tenant[0]
    timer = _timer(engine, tid, "actor", OLD)
    _close(engine, tid, timer, "complete", OLD + timedelta(minutes=1))
    _age_events(engine, 100)
    _fold_through(engine)
    apply_retention.fn()  # as the maintenance role, as the worker runs it
    assert timer["id"] not in _ids(engine, "sla_timers")


def test_nothing_the_stats_fold_has_not_reached_goes(engine, tenant):
    tid = tenant[0]
    timer = _timer(engine, tid, "unfolded", OLD)
    _close(engine, tid, timer, "complete", OLD + timedelta(minutes=1))
    _age_events(engine, 100)
    _fold_through(engine)
    with engine.begin() as conn:  # the fold as it was before these were written
        conn.execute(text("UPDATE sla_stats_positions SET txid = 0, event_id = 0, rows_txid = 0"))
    report = _run(engine)
    assert (report.events, report.timers) == (0, 0)
    assert timer["id"] in _ids(engine, "sla_timers")
