"""POST /v1/lead-events: lead events start, complete and cancel the lead's timer,
once per event_id, judged by when they occurred (docs/lead-events.md). Real
PostgreSQL and Redis."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from tests.support.api import Api, assert_problem
from tests.support.common import redis_conn

URL = "/v1/lead-events"
NOW = datetime.now(UTC).replace(microsecond=0)


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def ago(seconds: int) -> str:
    return iso(NOW - timedelta(seconds=seconds))


def event(event_id: str, kind: str, lead: str = "lead-1", **fields) -> dict:
    body = {"event_id": event_id, "type": kind, "lead_id": lead, **fields}
    if kind in ("lead.qualified", "lead.created") and "window_minutes" not in fields:
        body.setdefault("window_seconds", 600)
    return body


def send(api: Api, body: dict, status: int | None = None) -> dict:
    response = api.post(URL, body)
    if status is not None:
        assert response.status_code == status, response.get_json()
    return response.get_json()


def timers(engine, lead: str = "lead-1") -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM sla_timers WHERE lead_id = :lead ORDER BY started_at"),
            {"lead": lead},
        )
        return [dict(r) for r in rows.mappings()]


def open_timers(engine, lead: str = "lead-1") -> list[dict]:
    return [t for t in timers(engine, lead) if t["status"] in ("ACTIVE", "DUE", "ESCALATED")]


def outbox_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM outbox_events")).scalar_one()


def recorded(engine) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM lead_events ORDER BY received_at"))
        return [dict(r) for r in rows.mappings()]


# ----------------------------------------------------------------- what each type does


def test_qualified_starts_a_timer_due_a_window_after_it_occurred(api, engine):
    api.contracts("gold")
    occurred = NOW - timedelta(seconds=30)
    response = api.post(
        URL,
        event(
            "e-1",
            "lead.qualified",
            occurred_at=iso(occurred),
            window_minutes=15,
            sla_contract_id="gold",
            escalation_steps=[{"step": 1, "after_seconds": 60, "action": "page"}],
            data={"source": "crm"},
            correlation_id="corr-1",
        ),
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["outcome"] == "started" and body["event_id"] == "e-1"
    assert body["reason"] is None
    assert response.headers["Location"] == f"/v1/timers/{body['timer_id']}"
    assert "Idempotent-Replayed" not in response.headers
    timer = api.get(f"/v1/timers/{body['timer_id']}").get_json()
    assert timer["status"] == "ACTIVE" and timer["sla_contract_id"] == "gold"
    assert timer["started_at"] == iso(occurred)
    assert timer["due_at"] == iso(occurred + timedelta(minutes=15))
    assert timer["metadata"] == {"source": "crm"} and timer["correlation_id"] == "corr-1"
    assert timer["escalation_steps"][0]["action"] == "page"
    (row,) = recorded(engine)
    assert (row["event_type"], row["outcome"], row["timer_id"]) == (
        "lead.qualified",
        "started",
        timer_id(body),
    )
    assert row["occurred_at"] == occurred


def timer_id(body: dict):
    from uuid import UUID

    return UUID(body["timer_id"])


def test_created_starts_too_and_without_occurred_at_runs_from_the_server_clock(api, engine):
    body = send(api, event("e-1", "lead.created", window_seconds=60), 201)
    (timer,) = timers(engine)
    assert timer["id"] == timer_id(body)
    assert abs(timer["started_at"] - datetime.now(UTC)) < timedelta(seconds=30)
    assert timer["due_at"] - timer["started_at"] == timedelta(seconds=60)
    assert recorded(engine)[0]["occurred_at"] == timer["started_at"]


def test_a_newer_qualified_supersedes_the_open_timer(api, engine):
    first = send(api, event("e-1", "lead.qualified", occurred_at=ago(60)), 201)
    second = send(api, event("e-2", "lead.qualified", occurred_at=ago(30)), 201)
    old, new = timers(engine)
    assert (old["id"], old["status"], old["cancel_reason"]) == (
        timer_id(first),
        "CANCELLED",
        "superseded",
    )
    assert (new["id"], new["status"]) == (timer_id(second), "ACTIVE")


def test_contacted_before_due_completes_the_timer_not_breached(api, engine):
    started = send(api, event("e-1", "lead.qualified", occurred_at=ago(120)), 201)
    response = api.post(URL, event("e-2", "lead.contacted", occurred_at=ago(60)))
    assert response.status_code == 200
    assert response.get_json() == {
        "event_id": "e-2",
        "outcome": "completed",
        "timer_id": started["timer_id"],
        "reason": None,
    }
    (timer,) = timers(engine)
    assert timer["status"] == "COMPLETED" and timer["breached"] is False
    # Dated by when the contact occurred, not by when it arrived.
    assert timer["completed_at"] == NOW - timedelta(seconds=60)


def test_contacted_after_due_is_breached_by_when_it_occurred_not_when_it_arrived(api, engine):
    # Due 10 minutes after qualification, contacted 1 s later than that; the
    # event arrives long after. A contact 1 s before due, arriving as late, is met.
    send(api, event("e-1", "lead.qualified", "late", occurred_at=ago(3600)), 201)
    send(api, event("e-2", "lead.contacted", "late", occurred_at=ago(3600 - 601)), 200)
    send(api, event("e-3", "lead.qualified", "met", occurred_at=ago(3600)), 201)
    send(api, event("e-4", "lead.contacted", "met", occurred_at=ago(3600 - 599)), 200)
    assert [t["breached"] for t in timers(engine, "late")] == [True]
    assert [t["breached"] for t in timers(engine, "met")] == [False]


def test_disqualified_closed_and_deleted_cancel_with_the_type_as_reason(api, engine):
    for n, kind in enumerate(("lead.disqualified", "lead.closed", "lead.deleted")):
        lead = f"lead-{n}"
        started = send(api, event(f"s-{n}", "lead.qualified", lead, occurred_at=ago(60)), 201)
        body = send(api, event(f"c-{n}", kind, lead, occurred_at=ago(30)), 200)
        assert (body["outcome"], body["timer_id"]) == ("cancelled", started["timer_id"])
        (timer,) = timers(engine, lead)
        assert (timer["status"], timer["cancel_reason"]) == ("CANCELLED", kind)
        assert timer["cancelled_at"] == NOW - timedelta(seconds=30)


def test_events_of_one_contract_leave_the_leads_other_contracts_alone(api, engine):
    api.contracts("gold", "silver")
    send(api, event("e-1", "lead.qualified", sla_contract_id="gold"), 201)
    send(api, event("e-2", "lead.qualified", sla_contract_id="silver"), 201)
    send(api, event("e-3", "lead.contacted", sla_contract_id="gold"), 200)
    assert [t["sla_contract_id"] for t in open_timers(engine)] == ["silver"]


def test_started_and_closed_timers_write_their_outbox_events(api, engine):
    send(api, event("e-1", "lead.qualified", occurred_at=ago(60)), 201)
    send(api, event("e-2", "lead.closed", occurred_at=ago(30)), 200)
    with engine.connect() as conn:
        types = conn.execute(text("SELECT event_type FROM outbox_events ORDER BY id")).scalars()
        assert list(types) == ["sla.timer.started", "sla.timer.cancelled"]


def test_a_start_schedules_its_wake_up_and_events_wake_delivery(api, engine, monkeypatch):
    import tasks.delivery

    wakes = []
    monkeypatch.setattr(tasks.delivery, "wake_delivery", lambda: wakes.append(1))
    send(api, event("e-1", "lead.qualified", window_seconds=5), 201)
    assert redis_conn().keys("sla:wakeup:*")
    assert len(wakes) == 1
    send(api, event("e-2", "lead.contacted"), 200)
    assert len(wakes) == 2
    # Nothing written, nothing to deliver: an ignored event, a replay.
    send(api, event("e-3", "lead.closed"), 200)
    send(api, event("e-2", "lead.contacted"), 200)
    assert len(wakes) == 2


def test_a_start_succeeds_while_redis_is_down(api, engine, monkeypatch):
    import redis

    from tasks import wakeups

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    monkeypatch.setattr(wakeups, "_redis", lambda: dead)
    send(api, event("e-1", "lead.qualified", window_seconds=5), 201)
    assert len(open_timers(engine)) == 1


# ----------------------------------------------------------------- bad input


def test_an_unknown_type_is_a_422_listing_the_accepted_types(api, engine):
    body = assert_problem(api.post(URL, event("e-1", "lead.bought")), 422, "type")
    (error,) = body["errors"]
    for kind in (
        "lead.qualified",
        "lead.created",
        "lead.contacted",
        "lead.disqualified",
        "lead.closed",
        "lead.deleted",
    ):
        assert kind in error["reason"]
    assert recorded(engine) == []


def test_a_start_needs_one_window_and_the_other_types_none(api, engine):
    no_window = {"event_id": "e-1", "type": "lead.qualified", "lead_id": "l"}
    assert_problem(api.post(URL, no_window), 422, "window_seconds")
    both = event("e-1", "lead.created", window_minutes=5, window_seconds=60)
    assert_problem(api.post(URL, both), 422, "window_seconds")
    send(api, {"event_id": "e-2", "type": "lead.closed", "lead_id": "l"}, 200)


def test_bad_fields_are_422s_naming_them(api, engine):
    cases = [
        ({"event_id": ""}, "event_id"),
        ({"lead_id": "x" * 201}, "lead_id"),
        ({"occurred_at": iso(datetime.now(UTC) + timedelta(minutes=6))}, "occurred_at"),
        ({"occurred_at": "2025-01-01T00:00:00"}, "occurred_at"),
        ({"occurred_at": 1700000000}, "occurred_at"),
        ({"window_seconds": 0}, "window_seconds"),
        ({"escalation_steps": [{"step": 1, "after_seconds": 0}]}, "escalation_steps.0.action"),
        ({"data": {"n": 2**64}}, "data.n"),
        ({"colour": "red"}, "colour"),
    ]
    for fields, field in cases:
        body = {**event("e-1", "lead.qualified"), **fields}
        assert_problem(api.post(URL, body), 422, field)
    assert recorded(engine) == []
    # A sender's clock a little ahead is no error.
    ahead = iso(datetime.now(UTC) + timedelta(minutes=4))
    send(api, event("e-1", "lead.qualified", occurred_at=ahead), 201)


# ----------------------------------------------------------------- replays


def test_a_replay_has_no_second_effect_and_answers_the_first_outcome(api, engine):
    first = api.post(URL, event("e-1", "lead.qualified", occurred_at=ago(60)))
    assert first.status_code == 201
    events_after_first = outbox_count(engine)
    # The same event in another spelling: key order, minutes for seconds, another offset.
    again = {
        "window_minutes": 10,
        "occurred_at": iso(NOW - timedelta(seconds=60)).replace("Z", "+00:00"),
        "lead_id": "lead-1",
        "type": "lead.qualified",
        "event_id": "e-1",
    }
    replay = api.post(URL, again)
    assert replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == first.get_json()
    assert outbox_count(engine) == events_after_first
    assert len(timers(engine)) == 1 and len(recorded(engine)) == 1


def test_a_replay_answers_the_first_outcome_even_when_the_lead_has_moved_on(api, engine):
    contacted = send(api, event("e-1", "lead.contacted", occurred_at=ago(60)), 200)
    assert contacted["outcome"] == "ignored"
    send(api, event("e-2", "lead.qualified", occurred_at=ago(30)), 201)
    before = outbox_count(engine)
    replay = api.post(URL, event("e-1", "lead.contacted", occurred_at=ago(60)))
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == contacted
    # It did not complete the timer the newer qualification started.
    assert len(open_timers(engine)) == 1 and outbox_count(engine) == before


def test_the_same_event_id_with_another_event_is_a_409(api, engine):
    send(api, event("e-1", "lead.qualified", occurred_at=ago(60)), 201)
    before = outbox_count(engine)
    for other in (
        event("e-1", "lead.qualified", occurred_at=ago(59)),
        event("e-1", "lead.closed", occurred_at=ago(60)),
        event("e-1", "lead.qualified", "lead-2", occurred_at=ago(60)),
        event("e-1", "lead.qualified", occurred_at=ago(60), data={"x": 1}),
    ):
        body = assert_problem(api.post(URL, other), 409)
        assert "e-1" in body["detail"]
    assert outbox_count(engine) == before
    assert len(recorded(engine)) == 1 and len(open_timers(engine)) == 1


def test_the_same_event_id_in_two_tenants_is_two_events(api, other_api, engine):
    mine = send(api, event("e-1", "lead.qualified", occurred_at=ago(60)), 201)
    theirs = send(other_api, event("e-1", "lead.qualified", occurred_at=ago(60)), 201)
    assert mine["timer_id"] != theirs["timer_id"]
    # Each tenant's events drive only its own timers.
    send(other_api, event("e-2", "lead.contacted", occurred_at=ago(30)), 200)
    assert api.get(f"/v1/timers/{mine['timer_id']}").get_json()["status"] == "ACTIVE"
    assert api.get(f"/v1/timers/{theirs['timer_id']}").status_code == 404
    # An id the other tenant used with another event is no conflict here.
    closed = send(api, event("e-2", "lead.closed", occurred_at=ago(20)), 200)
    assert (closed["outcome"], closed["timer_id"]) == ("cancelled", mine["timer_id"])
    assert len(recorded(engine)) == 4


# ----------------------------------------------------------------- out of order


def test_contacted_arriving_before_an_older_qualified_leaves_no_running_timer(api, engine):
    contacted = send(api, event("e-2", "lead.contacted", occurred_at=ago(30)), 200)
    assert (contacted["outcome"], contacted["timer_id"]) == ("ignored", None)
    assert contacted["reason"] == "no open timer for this lead and contract"
    qualified = send(api, event("e-1", "lead.qualified", occurred_at=ago(60)), 200)
    assert qualified["outcome"] == "ignored"
    assert qualified["reason"] == "superseded by a later lead.contacted"
    assert timers(engine) == [] and outbox_count(engine) == 0
    assert [r["outcome"] for r in recorded(engine)] == ["ignored", "ignored"]
    # A qualification after the contact starts a new SLA.
    send(api, event("e-3", "lead.qualified", occurred_at=ago(10)), 201)


def test_an_older_qualified_after_a_newer_one_is_ignored(api, engine):
    newer = send(api, event("e-2", "lead.qualified", occurred_at=ago(30)), 201)
    older = send(api, event("e-1", "lead.qualified", occurred_at=ago(60)), 200)
    assert older["outcome"] == "ignored" and older["timer_id"] is None
    assert "not newer" in older["reason"]
    (timer,) = timers(engine)
    assert timer["id"] == timer_id(newer) and timer["status"] == "ACTIVE"


def test_closed_older_than_the_current_timers_start_is_ignored(api, engine):
    send(api, event("e-1", "lead.qualified", occurred_at=ago(90)), 201)
    current = send(api, event("e-2", "lead.qualified", occurred_at=ago(30)), 201)
    closed = send(api, event("e-3", "lead.closed", occurred_at=ago(60)), 200)
    assert closed["outcome"] == "ignored"
    assert closed["reason"] == "occurred before the open timer's start"
    assert [t["id"] for t in open_timers(engine)] == [timer_id(current)]


def test_a_start_older_than_a_timer_started_through_the_api_is_ignored(api, engine):
    timer = api.start(lead_id="lead-1", started_at=ago(30))
    api.post(f"/v1/timers/{timer['id']}/complete")
    older = send(api, event("e-1", "lead.qualified", occurred_at=ago(60)), 200)
    assert older["outcome"] == "ignored"
    # And a lead event completes a timer started through the API.
    newer = api.start(lead_id="lead-2", started_at=ago(30))
    done = send(api, event("e-2", "lead.contacted", "lead-2", occurred_at=ago(10)), 200)
    assert (done["outcome"], done["timer_id"]) == ("completed", newer["id"])


# ----------------------------------------------------------------- concurrency


def test_racing_qualifications_of_one_lead_leave_exactly_one_open_timer(app, tenant, engine):
    threads, results = 8, []
    barrier = threading.Barrier(threads)

    def qualify(n: int) -> None:
        api = Api(app.test_client(), tenant[1])
        barrier.wait()
        occurred = ago(100 - n)  # distinct instants: each is newer than some
        response = api.post(URL, event(f"e-{n}", "lead.qualified", occurred_at=occurred))
        results.append((n, response.status_code, response.get_json()))

    workers = [threading.Thread(target=qualify, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert all(status in (200, 201) for _, status, _ in results), results
    (survivor,) = open_timers(engine)
    # The newest qualification's timer is the one left running, whatever the arrival order.
    newest = max(results, key=lambda r: r[0])
    assert newest[2]["outcome"] == "started"
    assert survivor["id"] == timer_id(newest[2])
    started = [b for _, _, b in results if b["outcome"] == "started"]
    assert len(timers(engine)) == len(started)  # every other started one was superseded
    assert len(recorded(engine)) == threads


def test_racing_requests_of_one_event_id_take_it_once(app, tenant, engine):
    threads, results = 6, []
    barrier = threading.Barrier(threads)
    body = event("e-1", "lead.qualified", occurred_at=ago(60))

    def send_it() -> None:
        api = Api(app.test_client(), tenant[1])
        barrier.wait()
        response = api.post(URL, body)
        results.append((response.status_code, response.get_json()))

    workers = [threading.Thread(target=send_it) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(status for status, _ in results) == [200] * (threads - 1) + [201]
    assert len({b["timer_id"] for _, b in results}) == 1
    assert len(timers(engine)) == 1 and outbox_count(engine) == 1


def test_racing_requests_of_one_event_id_for_different_leads_take_one_and_409_the_rest(
    app, tenant, engine
):
    threads, results = 6, []
    barrier = threading.Barrier(threads)

    def send_it(n: int) -> None:
        api = Api(app.test_client(), tenant[1])
        barrier.wait()
        response = api.post(URL, event("e-1", "lead.qualified", f"lead-{n}", occurred_at=ago(60)))
        results.append(response.status_code)

    workers = [threading.Thread(target=send_it, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(results) == [201] + [409] * (threads - 1)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sla_timers")).scalar_one() == 1
    assert len(recorded(engine)) == 1
