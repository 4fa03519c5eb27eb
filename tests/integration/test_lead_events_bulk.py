"""POST /v1/lead-events/bulk: up to 1000 events, validated as a whole, then
each taken on its own, in order, as POST /v1/lead-events takes it."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from tests.support.api import assert_problem

BULK = "/v1/lead-events/bulk"
NOW = datetime.now(UTC).replace(microsecond=0)


def ago(seconds: int) -> str:
    return (NOW - timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def event(event_id: str, kind: str, lead: str, seconds_ago: int, **fields) -> dict:
    body = {
        "event_id": event_id,
        "type": kind,
        "lead_id": lead,
        "occurred_at": ago(seconds_ago),
        **fields,
    }
    if kind in ("lead.qualified", "lead.created"):
        body.setdefault("window_seconds", 600)
    return body


def scalar(engine, sql: str):
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar_one()


def test_a_bulk_of_1000_takes_each_event_in_order_with_mixed_outcomes(api, engine):
    # 250 leads, four events each: qualified, contacted, a late older qualified
    # (ignored), and a close with no open timer left (ignored).
    events = []
    for n in range(250):
        lead = f"lead-{n}"
        events += [
            event(f"{n}-q", "lead.qualified", lead, 300),
            event(f"{n}-c", "lead.contacted", lead, 200),
            event(f"{n}-old", "lead.created", lead, 400),
            event(f"{n}-x", "lead.closed", lead, 100),
        ]
    assert len(events) == 1000
    response = api.post(BULK, {"events": events})
    assert response.status_code == 200, response.get_json()
    results = response.get_json()["results"]
    assert [r["event_id"] for r in results] == [e["event_id"] for e in events]
    assert [r["outcome"] for r in results[:4]] == ["started", "completed", "ignored", "ignored"]
    assert [r["status"] for r in results[:4]] == [201, 200, 200, 200]
    assert results[2]["reason"] == "superseded by a later lead.contacted"
    assert results[3]["reason"] == "no open timer for this lead and contract"
    assert results[0]["timer_id"] == results[1]["timer_id"]
    assert Counter(r["outcome"] for r in results) == {
        "started": 250,
        "completed": 250,
        "ignored": 500,
    }
    assert not any(r["replayed"] for r in results)
    assert scalar(engine, "SELECT count(*) FROM lead_events") == 1000
    assert scalar(engine, "SELECT count(*) FROM sla_timers WHERE status = 'COMPLETED'") == 250
    assert scalar(engine, "SELECT count(*) FROM sla_timers") == 250


def test_a_bulk_of_1001_is_a_422_and_takes_nothing(api, engine):
    events = [event(f"e-{n}", "lead.qualified", f"lead-{n}", 60) for n in range(1001)]
    assert_problem(api.post(BULK, {"events": events}), 422, "events")
    assert_problem(api.post(BULK, {"events": []}), 422, "events")
    assert scalar(engine, "SELECT count(*) FROM lead_events") == 0


def test_one_malformed_event_is_a_422_naming_it_and_nothing_is_taken(api, engine):
    events = [event(f"e-{n}", "lead.qualified", f"lead-{n}", 60) for n in range(5)]
    events[3]["type"] = "lead.bought"
    del events[1]["window_seconds"]
    body = assert_problem(api.post(BULK, {"events": events}), 422, "events.3.type")
    assert {e["field"] for e in body["errors"]} == {"events.3.type"}
    # A window is missing only if the contract gives none: checked once the body is valid.
    events[3]["type"] = "lead.created"
    body = assert_problem(api.post(BULK, {"events": events}), 422, "events.1.window_seconds")
    assert {e["field"] for e in body["errors"]} == {"events.1.window_seconds"}
    assert scalar(engine, "SELECT count(*) FROM lead_events") == 0
    assert scalar(engine, "SELECT count(*) FROM sla_timers") == 0


def test_an_event_id_twice_in_one_request_is_a_replay_or_a_conflict_the_second_time(api, engine):
    first = event("e-1", "lead.qualified", "lead-1", 60)
    other = event("e-1", "lead.qualified", "lead-2", 60)
    response = api.post(BULK, {"events": [first, dict(first), other]})
    assert response.status_code == 200
    one, replay, conflict = response.get_json()["results"]
    assert (one["status"], one["outcome"], one["replayed"]) == (201, "started", False)
    assert replay == {**one, "status": 200, "replayed": True}
    assert (conflict["status"], conflict["outcome"], conflict["timer_id"]) == (409, None, None)
    assert "e-1" in conflict["reason"]
    assert scalar(engine, "SELECT count(*) FROM sla_timers") == 1
    assert scalar(engine, "SELECT count(*) FROM outbox_events") == 1


def test_sending_a_bulk_again_replays_every_event(api, engine):
    events = [
        event("a", "lead.qualified", "lead-1", 60),
        event("b", "lead.contacted", "lead-1", 30),
        event("c", "lead.qualified", "lead-2", 60),
    ]
    first = api.post(BULK, {"events": events}).get_json()["results"]
    outbox = scalar(engine, "SELECT count(*) FROM outbox_events")
    again = api.post(BULK, {"events": events}).get_json()["results"]
    assert [r["replayed"] for r in again] == [True] * 3
    assert [r["status"] for r in again] == [200] * 3
    assert [{**r, "status": 0, "replayed": 0} for r in again] == [
        {**r, "status": 0, "replayed": 0} for r in first
    ]
    assert scalar(engine, "SELECT count(*) FROM outbox_events") == outbox
