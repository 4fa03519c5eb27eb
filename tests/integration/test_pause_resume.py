"""Pause and resume: a PAUSED timer neither warns nor escalates (even from a
batch that claimed it before the pause); on resume due_at and every pending
warning and step move by the time paused, wall or business; repeats of
either change nothing; a closed timer answers 409."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

import web.pauses
from models import firing as firing_sql
from models import pauses
from models.sla import utcnow
from tasks.firing import FireReport, fire_claimed, fire_due
from tests.support.common import redis_conn
from tests.support.schedules import (
    BERLIN_OFFICE,
    events_of,
    row,
    runs_of,
    start_scheduled,
    warnings_of,
)

TWO_STEPS = (
    {"step": 1, "after_seconds": 0, "action": "notify"},
    {"step": 2, "after_seconds": 600, "action": "reassign", "target": "lead"},
)


def at(moment):
    return lambda: moment


@pytest.fixture
def wakes(monkeypatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(web.pauses, "wake_delivery", lambda: calls.append(1))
    return calls


def _pause(engine, tenant_id, timer_id, moment, reason="waiting on customer"):
    with engine.begin() as conn:
        return pauses.pause_timer(conn, tenant_id, timer_id, reason, moment)


def _resume(engine, tenant_id, timer_id, moment):
    with engine.begin() as conn:
        return pauses.resume_timer(conn, tenant_id, timer_id, moment)


def test_pause_and_resume_through_the_api_are_idempotent(engine, tenant, api, wakes):
    timer = start_scheduled(engine, tenant[0], window_seconds=120, thresholds=[50])
    first = api.post(f"/v1/timers/{timer['id']}/pause", {"reason": "waiting on customer"})
    assert first.status_code == 200
    body = first.json
    assert (body["status"], body["pause_reason"]) == ("PAUSED", "waiting on customer")
    assert body["paused_at"].endswith("Z") and len(wakes) == 1

    again = api.post(f"/v1/timers/{timer['id']}/pause", {"reason": "something else"})
    assert again.status_code == 200 and again.json == body  # unchanged
    assert len(events_of(engine, timer["id"], "sla.timer.paused")) == 1

    resumed = api.post(f"/v1/timers/{timer['id']}/resume")
    assert resumed.status_code == 200 and len(wakes) == 2  # the repeat woke nothing
    body = resumed.json
    assert (body["status"], body["paused_at"], body["pause_reason"]) == ("ACTIVE", None, None)
    assert body["paused_seconds"] > 0
    assert datetime.fromisoformat(body["due_at"]) > timer["due_at"]
    assert redis_conn().keys("sla:wakeup:*")  # its next fire is within the horizon

    running = api.post(f"/v1/timers/{timer['id']}/resume")
    assert running.status_code == 200 and running.json == body
    assert len(events_of(engine, timer["id"], "sla.timer.resumed")) == 1
    [paused_event] = events_of(engine, timer["id"], "sla.timer.paused")
    [resumed_event] = events_of(engine, timer["id"], "sla.timer.resumed")
    assert paused_event["payload"]["reason"] == "waiting on customer"
    assert resumed_event["payload"]["paused_at"] == paused_event["payload"]["paused_at"]


def test_another_tenants_timer_cannot_be_paused_or_resumed(api, other_api):
    timer = api.start(lead_id="mine", window_seconds=60)
    for verb in ("pause", "resume"):
        assert other_api.post(f"/v1/timers/{timer['id']}/{verb}").status_code == 404
    assert api.get(f"/v1/timers/{timer['id']}").json["status"] == "ACTIVE"


def test_pausing_or_resuming_a_closed_timer_is_a_conflict_naming_its_status(api):
    timer = api.start(lead_id="done", window_seconds=60)
    api.post(f"/v1/timers/{timer['id']}/complete")
    for verb in ("pause", "resume"):
        response = api.post(f"/v1/timers/{timer['id']}/{verb}")
        assert response.status_code == 409
        assert response.content_type == "application/problem+json"
        assert response.json["errors"] == [
            {"field": "status", "reason": "is COMPLETED: only an open timer can"}
        ]
    assert api.post(f"/v1/timers/{uuid4()}/pause").status_code == 404
    bad = api.post(f"/v1/timers/{timer['id']}/pause", {"reason": ""})
    assert bad.status_code == 422 and bad.json["errors"][0]["field"] == "reason"


def test_resume_shifts_due_warnings_and_steps_by_the_paused_time(engine, settings, tenant):
    started = utcnow()
    timer = start_scheduled(
        engine, tenant[0], window_seconds=1000, started_at=started, thresholds=[50],
        steps=TWO_STEPS,
    )  # fmt: skip
    s = lambda seconds: started + timedelta(seconds=seconds)  # noqa: E731
    _pause(engine, tenant[0], timer["id"], s(100))
    assert fire_due(engine, settings, now=at(s(5000))).claimed == 0  # paused: nothing fires
    resumed, changed = _resume(engine, tenant[0], timer["id"], s(400))
    assert changed
    assert (resumed["status"], resumed["paused_seconds"], resumed["shift_seconds"]) == (
        "ACTIVE",
        300,
        300,
    )
    assert (resumed["due_at"], resumed["next_fire_at"]) == (s(1300), s(800))

    assert fire_due(engine, settings, now=at(s(799))).claimed == 0
    fire_due(engine, settings, now=at(s(800)))
    assert warnings_of(engine, timer["id"]) == [(50, "SENT")]
    assert fire_due(engine, settings, now=at(s(1299))).claimed == 0
    fire_due(engine, settings, now=at(s(1300)))
    assert runs_of(engine, timer["id"]) == [(1, 0, "SUCCESS")]
    assert row(engine, timer["id"])["next_fire_at"] == s(1900)
    fire_due(engine, settings, now=at(s(1900)))
    assert runs_of(engine, timer["id"]) == [(1, 0, "SUCCESS"), (2, 0, "SUCCESS")]


def test_a_due_timer_paused_resumes_with_its_next_step_shifted(engine, settings, tenant):
    started = utcnow()
    timer = start_scheduled(
        engine, tenant[0], window_seconds=100, started_at=started, steps=TWO_STEPS
    )
    s = lambda seconds: started + timedelta(seconds=seconds)  # noqa: E731
    fire_due(engine, settings, now=at(s(100)))
    _pause(engine, tenant[0], timer["id"], s(200))
    resumed, _ = _resume(engine, tenant[0], timer["id"], s(260))
    assert (resumed["status"], resumed["due_at"], resumed["next_fire_at"]) == (
        "DUE",
        s(160),
        s(760),
    )
    assert fire_due(engine, settings, now=at(s(759))).claimed == 0
    fire_due(engine, settings, now=at(s(760)))
    assert row(engine, timer["id"])["status"] == "ESCALATED"


def test_business_time_pause_shifts_by_the_working_time_only(engine, settings, tenant):
    # Friday 4 December 2026, 14:00 in Berlin (UTC+1); 9-17 Monday to Friday.
    started = datetime(2026, 12, 4, 13, 0, tzinfo=UTC)
    timer = start_scheduled(
        engine, tenant[0], window_seconds=4 * 3600, started_at=started, thresholds=[50],
        calendar=BERLIN_OFFICE,
    )  # fmt: skip
    assert timer["next_fire_at"] == datetime(2026, 12, 4, 15, 0, tzinfo=UTC)  # Fri 16:00
    assert timer["due_at"] == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)  # Mon 10:00

    # Paused Friday 15:00, resumed Monday 09:30: 2.5 working hours.
    _pause(engine, tenant[0], timer["id"], datetime(2026, 12, 4, 14, 0, tzinfo=UTC))
    resumed, _ = _resume(engine, tenant[0], timer["id"], datetime(2026, 12, 7, 8, 30, tzinfo=UTC))
    assert resumed["shift_seconds"] == 2.5 * 3600
    assert resumed["paused_seconds"] == 66.5 * 3600
    assert resumed["next_fire_at"] == datetime(2026, 12, 7, 9, 30, tzinfo=UTC)  # Mon 10:30
    assert resumed["due_at"] == datetime(2026, 12, 7, 11, 30, tzinfo=UTC)  # Mon 12:30

    fire_due(engine, settings, now=at(datetime(2026, 12, 7, 9, 30, tzinfo=UTC)))
    assert warnings_of(engine, timer["id"]) == [(50, "SENT")]
    due = datetime(2026, 12, 7, 11, 30, tzinfo=UTC)
    assert fire_due(engine, settings, now=at(due - timedelta(milliseconds=1))).claimed == 0
    report = fire_due(engine, settings, now=at(due))
    assert (report.became_due, report.steps) == (1, 1)


def test_a_batch_that_claimed_a_timer_before_its_pause_fires_nothing(engine, settings, tenant):
    started = utcnow()
    timer = start_scheduled(
        engine, tenant[0], window_seconds=100, started_at=started, thresholds=[50]
    )
    moment = started + timedelta(seconds=100)
    token = uuid4()
    with engine.begin() as conn:
        claimed = firing_sql.claim_due(conn, token, moment, 10, 60)
    assert [c["id"] for c in claimed] == [timer["id"]]
    _pause(engine, tenant[0], timer["id"], None)  # between the claim and the batch's write
    report = FireReport()
    fire_claimed(engine, settings, claimed, token, moment, report)

    assert (report.warnings, report.became_due, report.steps) == (0, 0, 0)
    stored = row(engine, timer["id"])
    assert (stored["status"], stored["next_fire_at"], stored["claim_token"]) == (
        "PAUSED",
        None,
        None,
    )
    assert warnings_of(engine, timer["id"]) == []
    assert runs_of(engine, timer["id"]) == []
    assert events_of(engine, timer["id"], "sla.timer.due") == []


def test_a_paused_timer_can_be_cancelled(engine, tenant, api):
    timer = start_scheduled(engine, tenant[0], window_seconds=600, thresholds=[50])
    api.post(f"/v1/timers/{timer['id']}/pause")
    body = api.post(f"/v1/timers/{timer['id']}/cancel", {"reason": "lost"}).json
    assert body["status"] == "CANCELLED"
    assert [(w["threshold"], w["outcome"]) for w in body["warnings"]] == [(50, "SKIPPED")]
    assert [(e["step"], e["outcome"]) for e in body["escalations"]] == [(1, "SKIPPED")]
