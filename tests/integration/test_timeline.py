"""GET /v1/timers/{id}/timeline: a timer's audit entries, in order, from its
events, step rows and warning rows; only the tenant's own timers."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID, uuid4

from sqlalchemy import text

from models.timers import finish_timer
from tasks.firing import fire_due
from tests.support.api import assert_problem

TWO_STEPS = [
    {"step": 1, "after_seconds": 0, "action": "notify", "target": "owner"},
    {"step": 2, "after_seconds": 600, "action": "reassign", "target": "team-lead"},
]


def timeline(api, timer_id) -> list[dict]:
    response = api.get(f"/v1/timers/{timer_id}/timeline")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["timer_id"] == str(timer_id)
    return body["items"]


def kinds(entries) -> list[str]:
    return [e["kind"] for e in entries]


def at(moment):
    return lambda: moment


def test_a_timer_s_life_in_order_with_its_correlation_id(api, engine, settings, tenant):
    timer = api.start(
        lead_id="lead-life",
        window_seconds=60,
        escalation_steps=TWO_STEPS,
        warning_thresholds=[75],
        correlation_id="corr-life",
    )
    created = datetime.fromisoformat(timer["created_at"])
    due = datetime.fromisoformat(timer["due_at"])
    # The firing path and the close on the same (simulated) clock: the warning
    # at 45 s, the due time and step 1, then the completion skips step 2.
    assert fire_due(engine, settings, now=at(created + timedelta(seconds=46))).warnings == 1
    assert fire_due(engine, settings, now=at(due + timedelta(seconds=1))).steps == 1
    with engine.begin() as conn:
        finish_timer(conn, tenant[0], UUID(timer["id"]), "complete", due + timedelta(seconds=2))

    entries = timeline(api, timer["id"])
    assert kinds(entries) == ["started", "warning", "due", "step", "completed", "step"]
    assert {e["correlation_id"] for e in entries} == {"corr-life"}
    assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)
    started_entry, warning, _, first, completed, skipped = entries
    assert started_entry["details"]["window_seconds"] == 60
    assert started_entry["details"]["supersedes"] is None
    assert warning["details"]["threshold"] == 75
    assert warning["details"]["outcome"] == "SENT"
    assert first["details"] == {
        "step": 1,
        "repeat": 0,
        "outcome": "SUCCESS",
        "action": "notify",
        "target": "owner",
        "error": None,
    }
    assert completed["details"]["breached"] is True
    assert skipped["details"]["step"] == 2
    assert skipped["details"]["outcome"] == "SKIPPED"


def test_a_close_comes_before_the_steps_and_warnings_it_skips(api):
    timer = api.start(
        lead_id="lead-close",
        window_seconds=600,
        escalation_steps=TWO_STEPS,
        warning_thresholds=[50, 90],
    )
    assert api.post(f"/v1/timers/{timer['id']}/cancel", {"reason": "lost"}).status_code == 200

    entries = timeline(api, timer["id"])
    assert kinds(entries)[:2] == ["started", "cancelled"]
    assert entries[1]["details"]["reason"] == "lost"
    skipped = entries[2:]
    assert {e["kind"] for e in skipped} <= {"step", "warning"}
    assert {e["details"]["outcome"] for e in skipped} == {"SKIPPED"}
    steps = [e["details"]["step"] for e in skipped if e["kind"] == "step"]
    assert steps == [1, 2]


def test_a_superseded_timer_names_its_successor_and_the_successor_names_it(api):
    first = api.start(lead_id="lead-again", window_seconds=600)
    second = api.start(lead_id="lead-again", window_seconds=900)

    old = timeline(api, first["id"])
    assert kinds(old) == ["started", "superseded", "step"]
    assert old[1]["details"]["reason"] == "superseded"
    assert old[1]["details"]["superseded_by"] == second["id"]

    new = timeline(api, second["id"])
    assert kinds(new) == ["started"]
    assert new[0]["details"]["supersedes"] == first["id"]


def test_a_start_after_a_normal_close_supersedes_nothing(api):
    first = api.start(lead_id="lead-later", window_seconds=600)
    api.post(f"/v1/timers/{first['id']}/complete", {})
    second = api.start(lead_id="lead-later", window_seconds=600)
    assert timeline(api, second["id"])[0]["details"]["supersedes"] is None


def test_pause_and_resume_are_entries(api):
    timer = api.start(lead_id="lead-pause", window_seconds=600)
    paused = api.post(f"/v1/timers/{timer['id']}/pause", {"reason": "waiting on customer"})
    assert paused.status_code == 200, paused.get_json()
    assert api.post(f"/v1/timers/{timer['id']}/resume", {}).status_code == 200

    entries = timeline(api, timer["id"])
    assert kinds(entries) == ["started", "paused", "resumed"]
    assert entries[1]["details"]["reason"] == "waiting on customer"


def test_failed_and_retried_events_are_entries(api, engine, tenant):
    # Written as the firing path and the retry route write them (models/events.py).
    timer = api.start(lead_id="lead-failing", window_seconds=600)
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE NONE")
        for n, (kind, seconds) in enumerate([("failed", 1), ("retried", 2)]):
            conn.execute(
                text(
                    "INSERT INTO outbox_events (tenant_id, event_type, timer_id, payload, "
                    "correlation_id, idempotency_key, created_at) VALUES (:tenant, :type, "
                    ":timer, CAST(:payload AS jsonb), :corr, :key, now() + :later)"
                ),
                {
                    "tenant": tenant[0],
                    "type": f"sla.timer.{kind}",
                    "timer": timer["id"],
                    "payload": '{"attempts": 5, "error": "boom"}',
                    "corr": timer["correlation_id"],
                    "key": f"{timer['id']}:{kind}:{n}",
                    "later": timedelta(seconds=seconds),
                },
            )
    entries = timeline(api, timer["id"])
    assert kinds(entries) == ["started", "failed", "retried"]
    assert entries[1]["details"] == {"attempts": 5, "error": "boom"}


def test_another_tenant_s_timer_and_an_unknown_one_are_404(api, other_api):
    timer = api.start(lead_id="lead-mine", window_seconds=600)
    assert_problem(other_api.get(f"/v1/timers/{timer['id']}/timeline"), 404)
    assert_problem(api.get(f"/v1/timers/{uuid4()}/timeline"), 404)
    assert_problem(api.get("/v1/timers/not-a-uuid/timeline"), 404)
