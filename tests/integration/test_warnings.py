"""Warnings before breach on the firing path: each threshold exactly once, at
its instant, through the outbox; skipped when already past at the start or
overtaken by due; never after completion or cancellation."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from uuid import uuid4

from models import firing as firing_sql
from models import timers as timer_sql
from models.sla import utcnow
from tasks.firing import FireReport, fire_claimed, fire_due
from tests.support.schedules import events_of, row, start_scheduled, warnings_of


def at(moment):
    return lambda: moment


def test_a_warning_fires_at_its_instant_with_its_payload(engine, settings, tenant):
    started = utcnow()
    timer = start_scheduled(
        engine, tenant[0], window_seconds=1000, started_at=started, thresholds=[50, 75]
    )
    half = started + timedelta(seconds=500)
    assert timer["next_fire_at"] == half

    assert fire_due(engine, settings, now=at(half - timedelta(milliseconds=1))).claimed == 0
    report = fire_due(engine, settings, now=at(half))
    assert (report.claimed, report.warnings, report.became_due, report.steps) == (1, 1, 0, 0)
    assert warnings_of(engine, timer["id"]) == [(50, "SENT")]
    [event] = events_of(engine, timer["id"], "sla.timer.warning")
    payload = event["payload"]
    assert (payload["threshold"], payload["remaining_seconds"]) == (50, 500.0)
    assert datetime.fromisoformat(payload["due_at"]) == timer["due_at"]
    assert event["idempotency_key"] == f"{timer['id']}:warning:50"
    stored = row(engine, timer["id"])
    assert (stored["status"], stored["warnings_done"], stored["next_fire_at"]) == (
        "ACTIVE",
        1,
        started + timedelta(seconds=750),
    )

    fire_due(engine, settings, now=at(started + timedelta(seconds=750)))
    fire_due(engine, settings, now=at(started + timedelta(seconds=1000)))
    assert warnings_of(engine, timer["id"]) == [(50, "SENT"), (75, "SENT")]
    kinds = [e["event_type"] for e in events_of(engine, timer["id"])]
    assert kinds == [
        "sla.timer.started",
        "sla.timer.warning",
        "sla.timer.warning",
        "sla.timer.due",
        "sla.escalation.triggered",
    ]


def test_each_threshold_is_sent_once_under_concurrent_claimers_and_duplicate_wake_ups(
    engine, settings, tenant
):
    started = utcnow()
    timers = [
        start_scheduled(
            engine, tenant[0], window_seconds=1000, started_at=started, thresholds=[25, 50, 75]
        )
        for _ in range(40)
    ]
    small = type(settings)(**{**settings.__dict__, "batch_size": 7})
    for seconds in (250, 250, 500, 600, 750, 750):  # repeats are duplicate wake-ups
        moment = started + timedelta(seconds=seconds)
        threads = [
            threading.Thread(target=fire_due, args=(engine, small), kwargs={"now": at(moment)})
            for _ in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for timer in timers:
        assert warnings_of(engine, timer["id"]) == [(25, "SENT"), (50, "SENT"), (75, "SENT")]
        sent = [
            e["payload"]["threshold"] for e in events_of(engine, timer["id"], "sla.timer.warning")
        ]
        assert sent == [25, 50, 75]
        assert row(engine, timer["id"])["warnings_done"] == 3


def test_a_replayed_plan_writes_no_second_warning_or_event(engine, settings, tenant):
    """The row is the exactly-once key: a fire that plans a recorded warning
    again (a lost update, a re-claim) writes neither the row nor its event."""
    started = utcnow()
    timer = start_scheduled(
        engine, tenant[0], window_seconds=1000, started_at=started, thresholds=[50]
    )
    half = started + timedelta(seconds=500)
    fire_due(engine, settings, now=at(half))
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE sla_timers SET warnings_done = 0, next_fire_at = %s WHERE id = %s",
            (half, timer["id"]),
        )
    report = fire_due(engine, settings, now=at(half + timedelta(seconds=1)))
    assert (report.claimed, report.failures) == (1, 0)
    assert warnings_of(engine, timer["id"]) == [(50, "SENT")]
    assert len(events_of(engine, timer["id"], "sla.timer.warning")) == 1
    stored = row(engine, timer["id"])
    assert (stored["warnings_done"], stored["attempts"], stored["last_error"]) == (1, 0, None)


def test_a_threshold_past_at_the_start_is_skipped_not_sent(engine, settings, tenant):
    started = utcnow() - timedelta(seconds=600)  # 60 % of the window already gone
    timer = start_scheduled(
        engine, tenant[0], window_seconds=1000, started_at=started, thresholds=[50, 90]
    )
    report = fire_due(engine, settings)
    assert (report.claimed, report.warnings) == (1, 1)
    assert warnings_of(engine, timer["id"]) == [(50, "SKIPPED")]
    assert events_of(engine, timer["id"], "sla.timer.warning") == []
    assert row(engine, timer["id"])["next_fire_at"] == started + timedelta(seconds=900)


def test_a_late_fire_skips_the_warnings_due_overtook(engine, settings, tenant):
    started = utcnow()
    timer = start_scheduled(
        engine, tenant[0], window_seconds=100, started_at=started, thresholds=[50, 75]
    )
    report = fire_due(engine, settings, now=at(started + timedelta(seconds=101)))
    assert (report.warnings, report.became_due) == (2, 1)
    assert warnings_of(engine, timer["id"]) == [(50, "SKIPPED"), (75, "SKIPPED")]
    assert events_of(engine, timer["id"], "sla.timer.warning") == []


def test_no_warning_after_completion_even_from_a_batch_that_claimed_it(engine, settings, tenant):
    started = utcnow()
    timer = start_scheduled(
        engine, tenant[0], window_seconds=1000, started_at=started, thresholds=[50, 75]
    )
    half = started + timedelta(seconds=500)
    token = uuid4()
    with engine.begin() as conn:
        claimed = firing_sql.claim_due(conn, token, half, 10, 60)
    assert [c["id"] for c in claimed] == [timer["id"]]
    with engine.begin() as conn:  # the lead is handled while the batch works
        timer_sql.finish_timer(conn, tenant[0], timer["id"], "complete")
    report = FireReport()
    fire_claimed(engine, settings, claimed, token, half, report)

    assert report.warnings == 0
    assert warnings_of(engine, timer["id"]) == [(50, "SKIPPED"), (75, "SKIPPED")]
    assert events_of(engine, timer["id"], "sla.timer.warning") == []
    assert fire_due(engine, settings, now=at(started + timedelta(days=1))).claimed == 0
    assert events_of(engine, timer["id"], "sla.timer.warning") == []


def test_cancel_records_the_pending_warnings_skipped(engine, settings, tenant):
    started = utcnow()
    timer = start_scheduled(
        engine, tenant[0], window_seconds=1000, started_at=started, thresholds=[50, 75]
    )
    fire_due(engine, settings, now=at(started + timedelta(seconds=500)))
    with engine.begin() as conn:
        timer_sql.finish_timer(conn, tenant[0], timer["id"], "cancel", reason="spam")
    assert warnings_of(engine, timer["id"]) == [(50, "SENT"), (75, "SKIPPED")]
    assert fire_due(engine, settings, now=at(started + timedelta(days=1))).claimed == 0


def test_timer_responses_list_the_warnings(engine, settings, tenant, api):
    started = utcnow()
    timer = start_scheduled(
        engine, tenant[0], window_seconds=1000, started_at=started, thresholds=[50, 75]
    )
    fire_due(engine, settings, now=at(started + timedelta(seconds=500)))
    body = api.get(f"/v1/timers/{timer['id']}").json
    assert [(w["threshold"], w["outcome"]) for w in body["warnings"]] == [(50, "SENT")]
    assert body["warnings"][0]["scheduled_at"].endswith("Z")
    assert body["warning_thresholds"] == [50, 75]
