"""GET /metrics (web/metrics.py, models/metrics.py): the counters move when
timers start, fire, close and deliver, only for what committed; the state
gauges read the database; the token guards the endpoint; and it answers while
the database is down.

In this process prometheus-client keeps its own counts (no multiprocess
directory; tests/acceptance/test_metrics_processes.py covers several
processes), so each test compares a scrape before and after.
"""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from models import timers as timer_sql
from models.sla import utcnow
from tasks.delivery import close_couriers, deliver_due
from tasks.firing import fire_due
from tests.integration.test_delivery import emit, subscribe
from tests.support.api import Api
from tests.support.factories import overdue, start_timer
from tests.support.receiver import Receiver, Reply


def scrape(client, headers=None) -> dict[tuple, float]:
    """Every sample of a /metrics answer: (name, sorted labels) -> value."""
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before, after, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def mapp(engine, settings):
    """The app, its state read afresh on every scrape."""
    from web import create_app

    return create_app(dataclasses.replace(settings, metrics_cache_seconds=0))


def test_counters_move_when_timers_start_fire_complete_and_cancel(mapp, engine, settings, tenant):
    client = mapp.test_client()
    api = Api(client, tenant[1])
    before = scrape(client)

    ids = [api.post("/v1/timers", {"lead_id": f"l{i}", "window_seconds": 600}) for i in range(3)]
    assert all(r.status_code == 201 for r in ids)
    start_timer(engine, tenant[0], started_at=overdue(30))  # due 30 s ago
    state = scrape(client)
    assert value(state, "sla_timers_active") == 4
    assert value(state, "sla_timers_overdue") == 1
    assert value(state, "sla_timers_oldest_overdue_seconds") >= 30

    fired = fire_due(engine, settings)
    assert fired.became_due == 1
    api.post(f"/v1/timers/{ids[0].get_json()['id']}/complete")
    api.post(f"/v1/timers/{ids[1].get_json()['id']}/cancel", {"reason": "lead lost"})
    # A new start for the same lead and contract supersedes the open one.
    assert api.post("/v1/timers", {"lead_id": "l2", "window_seconds": 600}).status_code == 201
    after = scrape(client)

    assert moved(before, after, "sla_timers_started_total") == 5
    assert moved(before, after, "sla_timer_fires_total", outcome="due") == 1
    assert moved(before, after, "sla_escalations_total", step="1", outcome="success") == 1
    assert moved(before, after, "sla_timers_completed_total", outcome="within_sla") == 1
    assert moved(before, after, "sla_timers_cancelled_total", reason="requested") == 1
    assert moved(before, after, "sla_timers_cancelled_total", reason="superseded") == 1
    # Lateness: one claimed timer, 30 s late, so in no bucket below 30 s.
    assert moved(before, after, "sla_fire_lateness_seconds_count") == 1
    assert moved(before, after, "sla_fire_lateness_seconds_bucket", le="10.0") == 0
    assert moved(before, after, "sla_fire_lateness_seconds_bucket", le="60.0") == 1
    assert moved(before, after, "sla_fire_lateness_seconds_sum") >= 30
    # Open now: the late timer (fired, DUE) and l2's new timer.
    assert value(after, "sla_timers_active") == 2
    assert value(after, "sla_timers_paused") == 0
    assert value(after, "sla_metrics_database_up") == 1
    assert value(after, "sla_metrics_redis_up") == 1
    assert value(after, "sla_queue_messages", queue=settings.queue, state="ready") >= 0


def test_what_rolls_back_is_never_counted(mapp, engine, tenant):
    """Counts wait for the commit: a start and a cancel rolled back count nothing."""
    client = mapp.test_client()
    timer = start_timer(engine, tenant[0])
    before = scrape(client)
    new = timer_sql.NewTimer(
        lead_id="rolled-back",
        sla_contract_id="default",
        started_at=utcnow(),
        window_seconds=60,
        escalation_steps=[],
        correlation_id="c",
        metadata={},
    )
    with engine.connect() as conn, conn.begin() as tx:
        timer_sql.start_timers(conn, tenant[0], [(new, None)])
        timer_sql.finish_timer(conn, tenant[0], timer["id"], "cancel")
        tx.rollback()
    after = scrape(client)
    assert moved(before, after, "sla_timers_started_total") == 0
    assert moved(before, after, "sla_timers_cancelled_total", reason="requested") == 0
    # The same, committed, counts.
    with engine.begin() as conn:
        timer_sql.finish_timer(conn, tenant[0], timer["id"], "cancel")
    assert moved(after, scrape(client), "sla_timers_cancelled_total", reason="requested") == 1


def test_dead_letters_and_rescued_leases_are_counted(mapp, engine, settings, tenant, poison):
    client = mapp.test_client()
    timer = start_timer(engine, tenant[0], started_at=overdue())
    poison(timer["id"])  # writing its step row always fails
    one_try = dataclasses.replace(settings, max_attempts=1)
    before = scrape(client)
    fire_due(engine, one_try)
    after = scrape(client)
    assert moved(before, after, "sla_timer_fires_total", outcome="dead_letter") == 1
    assert moved(before, after, "sla_dead_letters_total", cause="failed") == 1

    # A lost worker: a claim whose lease has expired, rescued by the sweep.
    other = start_timer(engine, tenant[0], started_at=overdue())
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE sla_timers SET processing_status = 'PROCESSING', "
                "lease_expires_at = now() - interval '1 second' WHERE id = :id"
            ),
            {"id": other["id"]},
        )
    from tasks.sweeper import rescue_lost_work

    assert rescue_lost_work(engine) == 1
    assert moved(after, scrape(client), "sla_leases_rescued_total") == 1


def test_webhook_deliveries_are_counted_by_result_with_their_latency(
    mapp, engine, settings, tenant
):
    client = mapp.test_client()
    dsettings = dataclasses.replace(
        settings,
        webhook_allow_private_networks=True,
        webhook_retry_schedule=(0, 0),
        webhook_timeout_seconds=1.0,
    )
    try:
        with Receiver() as healthy, Receiver(Reply(503)) as dead:
            healthy.script(Reply(500))  # then 200
            subscribe(engine, tenant[0], healthy.url)
            subscribe(engine, tenant[0], dead.url)
            before = scrape(client)
            emit(engine, tenant[0])
            for _ in range(20):
                deliver_due(engine, dsettings, max_seconds=2, use_redis=False)
                if len(healthy.received()) == 2 and len(dead.received()) == 2:
                    break
            after = scrape(client)
    finally:
        close_couriers()
    assert moved(before, after, "sla_webhook_deliveries_total", result="delivered") == 1
    assert moved(before, after, "sla_webhook_deliveries_total", result="retry") == 2
    assert moved(before, after, "sla_webhook_deliveries_total", result="failed") == 1
    assert moved(before, after, "sla_webhook_delivery_seconds_count") == 4
    assert value(after, "sla_webhook_deliveries_pending") == 0


def test_a_metrics_token_is_required_when_set(engine, settings):
    from web import create_app

    client = create_app(dataclasses.replace(settings, metrics_token="scrape-me")).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic c2NyYXBlLW1l"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.content_type == "application/problem+json"
        assert "metrics token" in response.get_json()["detail"]
    assert scrape(client, {"Authorization": "Bearer scrape-me"})
    # The admin token opens the admin routes, never /metrics.
    admin = create_app(
        dataclasses.replace(settings, metrics_token="scrape-me", admin_token="admin-token")
    ).test_client()
    assert admin.get("/metrics", headers={"Authorization": "Bearer admin-token"}).status_code == 401


def test_metrics_answer_while_the_database_and_redis_are_down(engine, settings):
    from models.config import normalize_database_url
    from web import create_app

    down = dataclasses.replace(
        settings,
        database_url=normalize_database_url("postgresql://postgres@127.0.0.1:1/none"),
        redis_url="redis://127.0.0.1:1/0",
        db_connect_timeout_seconds=1,
        redis_timeout_seconds=1,
        metrics_cache_seconds=0,
    )
    samples = scrape(create_app(down).test_client())
    assert value(samples, "sla_metrics_database_up") == 0
    assert value(samples, "sla_metrics_redis_up") == 0
    assert ("sla_timers_active", ()) not in samples  # left out, not reported as 0
