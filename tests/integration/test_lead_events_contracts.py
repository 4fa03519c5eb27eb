"""Lead events under contracts (docs/contracts.md): a start takes the contract's
current version like POST /v1/timers, and the hold types named by the timer's
contract snapshot in pause_on/resume_on pause and resume it. Real PostgreSQL
and Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from tests.support.api import Api, assert_problem

URL = "/v1/lead-events"
NOW = datetime.now(UTC).replace(microsecond=0)
STEPS = [{"step": 1, "after_seconds": 0, "action": "notify"}]
GOLD = {
    "name": "Gold",
    "window_minutes": 60,
    "warning_thresholds": [50],
    "escalation_steps": STEPS,
    "pause_on": ["lead.waiting_on_customer"],
    "resume_on": ["lead.customer_replied"],
}


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def send(api: Api, event_id: str, kind: str, status: int = 200, **fields) -> dict:
    body = {"event_id": event_id, "type": kind, "lead_id": "lead-1", **fields}
    response = api.post(URL, body)
    assert response.status_code == status, response.get_json()
    return response.get_json()


def put(api: Api, contract_id: str, body: dict) -> None:
    response = api.put(f"/v1/contracts/{contract_id}", body)
    assert response.status_code == 201, response.get_json()


def timer(api: Api, result: dict) -> dict:
    return api.get(f"/v1/timers/{result['timer_id']}").get_json()


def event_types(engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(text("SELECT event_type FROM outbox_events ORDER BY id")).scalars()
        )


def test_a_start_takes_the_contracts_current_version(api, engine):
    put(api, "gold", GOLD)
    occurred = NOW - timedelta(seconds=30)
    started = send(
        api, "e-1", "lead.qualified", 201, sla_contract_id="gold", occurred_at=iso(occurred)
    )
    got = timer(api, started)
    assert got["window_seconds"] == 3600 and got["contract_version"] == 1
    assert got["due_at"] == iso(occurred + timedelta(hours=1))
    assert got["warning_thresholds"] == [50]
    assert got["contract_snapshot"]["resume_on"] == ["lead.customer_replied"]
    with engine.connect() as conn:
        fire = conn.execute(
            text("SELECT next_fire_at FROM sla_timers WHERE id = :id"), {"id": got["id"]}
        ).scalar_one()
    assert fire == occurred + timedelta(minutes=30)  # the 50 % warning comes first


def test_the_event_overrides_the_contracts_window_and_ladder(api):
    put(api, "gold", GOLD)
    steps = [{"step": 3, "after_seconds": 10, "action": "call"}]
    started = send(
        api,
        "e-1",
        "lead.created",
        201,
        sla_contract_id="gold",
        window_seconds=120,
        escalation_steps=steps,
    )
    got = timer(api, started)
    assert got["window_seconds"] == 120 and [s["step"] for s in got["escalation_steps"]] == [3]
    assert got["contract_snapshot"]["window_seconds"] == 120


def test_pause_on_and_resume_on_pause_and_resume_the_open_timer(api, engine):
    put(api, "gold", GOLD)
    started = send(api, "e-1", "lead.qualified", 201, sla_contract_id="gold")
    before = timer(api, started)

    paused = send(api, "e-2", "lead.waiting_on_customer", sla_contract_id="gold")
    assert (paused["outcome"], paused["timer_id"]) == ("paused", started["timer_id"])
    got = timer(api, started)
    assert got["status"] == "PAUSED" and got["pause_reason"] == "lead.waiting_on_customer"

    again = send(api, "e-3", "lead.waiting_on_customer", sla_contract_id="gold")
    assert (again["outcome"], again["reason"]) == ("ignored", "the open timer is already paused")

    resumed = send(api, "e-4", "lead.customer_replied", sla_contract_id="gold")
    assert (resumed["outcome"], resumed["timer_id"]) == ("resumed", started["timer_id"])
    got = timer(api, started)
    assert got["status"] == "ACTIVE" and got["paused_at"] is None
    assert got["paused_seconds"] > 0 and got["due_at"] > before["due_at"]

    twice = send(api, "e-5", "lead.customer_replied", sla_contract_id="gold")
    assert (twice["outcome"], twice["reason"]) == ("ignored", "the open timer is not paused")
    assert event_types(engine) == ["sla.timer.started", "sla.timer.paused", "sla.timer.resumed"]
    with engine.connect() as conn:
        outcomes = list(
            conn.execute(text("SELECT outcome FROM lead_events ORDER BY occurred_at")).scalars()
        )
    assert outcomes == ["started", "paused", "ignored", "resumed", "ignored"]


def test_the_running_timer_follows_its_own_snapshot_not_a_later_version(api):
    put(api, "gold", GOLD)
    started = send(api, "e-1", "lead.qualified", 201, sla_contract_id="gold")
    # Version 2 pauses on another type: the running timer still follows version 1.
    put(api, "gold", {**GOLD, "pause_on": ["lead.on_hold"]})
    ignored = send(api, "e-2", "lead.on_hold", sla_contract_id="gold")
    assert ignored["outcome"] == "ignored"
    assert "neither pauses nor resumes" in ignored["reason"]
    paused = send(api, "e-3", "lead.waiting_on_customer", sla_contract_id="gold")
    assert paused["outcome"] == "paused"
    assert timer(api, started)["contract_version"] == 1


def test_a_hold_type_without_an_open_timer_or_a_contract_is_ignored(api):
    none = send(api, "e-1", "lead.waiting_on_customer")
    assert (none["outcome"], none["reason"]) == (
        "ignored",
        "no open timer for this lead and contract",
    )
    send(api, "e-2", "lead.qualified", 201, window_seconds=600)  # "default": no contract
    plain = send(api, "e-3", "lead.waiting_on_customer")
    assert plain["outcome"] == "ignored" and "neither pauses" in plain["reason"]


def test_a_start_under_an_unknown_or_retired_contract_is_a_422(api, engine):
    body = {"event_id": "e-1", "type": "lead.qualified", "lead_id": "lead-1"}
    assert_problem(api.post(URL, {**body, "sla_contract_id": "nope"}), 422, "sla_contract_id")
    put(api, "old", GOLD)
    api.delete("/v1/contracts/old")
    assert_problem(api.post(URL, {**body, "sla_contract_id": "old"}), 422, "sla_contract_id")
    assert_problem(api.post(URL, body), 422, "window_seconds")  # "default" needs a window

    ok = {**body, "event_id": "e-2", "window_seconds": 60}
    bulk = api.post(f"{URL}/bulk", {"events": [ok, {**body, "sla_contract_id": "old"}]})
    assert_problem(bulk, 422, "events.1.sla_contract_id")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM lead_events")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM sla_timers")).scalar_one() == 0

    # A terminal event needs no contract: it closes whatever timer is open.
    closed = send(api, "e-3", "lead.closed", sla_contract_id="old")
    assert closed["outcome"] == "ignored"


def test_a_bulk_start_under_a_contract_takes_it(api):
    put(api, "gold", GOLD)
    events = [
        {
            "event_id": f"e-{i}",
            "type": "lead.qualified",
            "lead_id": f"l-{i}",
            "sla_contract_id": "gold",
        }
        for i in range(3)
    ]
    results = api.post(f"{URL}/bulk", {"events": events}).get_json()["results"]
    assert [r["status"] for r in results] == [201, 201, 201]
    assert timer(api, results[0])["contract_version"] == 1


def test_started_and_resumed_timers_are_woken_at_their_next_fire_time(api, monkeypatch):
    import web.lead_events

    instants: list = []
    monkeypatch.setattr(web.lead_events, "schedule_wakeups", instants.extend)
    put(api, "gold", GOLD)
    occurred = NOW - timedelta(seconds=30)
    send(api, "e-1", "lead.qualified", 201, sla_contract_id="gold", occurred_at=iso(occurred))
    assert instants == [occurred + timedelta(minutes=30)]  # the 50 % warning
    send(api, "e-2", "lead.waiting_on_customer", sla_contract_id="gold")
    assert len(instants) == 1  # a paused timer waits for nothing
    send(api, "e-3", "lead.customer_replied", sla_contract_id="gold")
    assert len(instants) == 2 and instants[1] > instants[0]  # moved by the pause
