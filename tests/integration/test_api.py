"""The timer API end to end through Flask, on the real database and Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from sqlalchemy import text

from models.sla import utcnow
from tests.support.api import TIMER_FIELDS, Api, assert_problem
from tests.support.common import redis_conn


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def test_start_returns_the_timer_and_its_location(api):
    api.contracts("gold")
    started = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    steps = [
        {"step": 1, "after_seconds": 0, "action": "notify", "target": "team-a"},
        {"step": 2, "after_seconds": 300, "action": "page"},
    ]
    response = api.post(
        "/v1/timers",
        {
            "lead_id": "lead-42",
            "sla_contract_id": "gold",
            "window_minutes": 15,
            "started_at": "2025-01-02T05:04:05+02:00",
            "escalation_steps": steps,
            "metadata": {"source": "web", "score": [1, 2.5]},
        },
        headers={"X-Correlation-ID": "corr-1"},
    )
    assert response.status_code == 201
    assert response.mimetype == "application/json"
    timer = response.get_json()
    assert set(timer) == TIMER_FIELDS
    assert response.headers["Location"] == f"/v1/timers/{timer['id']}"
    UUID(timer["id"])
    assert timer | {"id": None, "created_at": None, "updated_at": None} == {
        "id": None,
        "lead_id": "lead-42",
        "sla_contract_id": "gold",
        "status": "ACTIVE",
        "processing_status": "PENDING",
        "started_at": iso(started),
        "due_at": iso(started + timedelta(minutes=15)),
        "window_seconds": 900,
        "escalation_steps": [steps[0], {**steps[1], "target": None}],
        "correlation_id": "corr-1",
        "idempotency_key": None,
        "attempts": 0,
        "last_error": None,
        "next_attempt_at": None,
        "metadata": {"source": "web", "score": [1, 2.5]},
        "cancel_reason": None,
        "created_at": None,
        "updated_at": None,
        "completed_at": None,
        "cancelled_at": None,
        "breached": None,
        "escalations": [],
        "contract_version": 1,
        "contract_snapshot": timer["contract_snapshot"],
        "warning_thresholds": [],
        "paused_at": None,
        "pause_reason": None,
        "paused_seconds": 0,
        "warnings": [],
    }
    assert timer["created_at"].endswith("Z")
    snapshot = timer["contract_snapshot"]
    assert (snapshot["contract_id"], snapshot["version"], snapshot["window_seconds"]) == (
        "gold",
        1,
        900,  # the start's window wins over the contract's
    )

    fetched = api.get(f"/v1/timers/{timer['id']}")
    assert fetched.status_code == 200
    assert fetched.get_json() == timer


def test_defaults(api):
    before = utcnow()
    timer = api.start(lead_id="lead-d", window_seconds=60)
    assert timer["sla_contract_id"] == "default"
    assert timer["escalation_steps"] == [
        {"step": 1, "after_seconds": 0, "action": "notify", "target": None}
    ]
    assert timer["metadata"] == {}
    UUID(timer["correlation_id"])  # generated
    started = datetime.fromisoformat(timer["started_at"])
    assert before <= started <= utcnow()
    assert datetime.fromisoformat(timer["due_at"]) - started == timedelta(seconds=60)


def test_start_schedules_a_wakeup_for_a_timer_due_soon(api):
    api.start(lead_id="soon", window_seconds=30)
    assert redis_conn().keys("sla:wakeup:*")


def test_idempotent_start(api):
    body = {"lead_id": "lead-i", "window_seconds": 60}
    first = api.post("/v1/timers", body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201
    replay = api.post("/v1/timers", body, headers={"Idempotency-Key": "k-1"})
    assert replay.status_code == 200
    assert replay.get_json() == first.get_json()
    assert replay.headers["Location"] == first.headers["Location"]
    assert replay.get_json()["idempotency_key"] == "k-1"

    other_body = api.post(
        "/v1/timers", {**body, "window_seconds": 61}, headers={"Idempotency-Key": "k-1"}
    )
    assert_problem(other_body, 409)
    listed = api.get("/v1/timers").get_json()["items"]
    assert [t["id"] for t in listed] == [first.get_json()["id"]]


def test_same_start_twice_without_key_is_a_conflict(api):
    body = {"lead_id": "lead-u", "window_seconds": 60, "started_at": "2025-01-01T00:00:00Z"}
    first = api.start(**body)
    assert_problem(api.post("/v1/timers", body), 409)
    # The rejected start rolled back entirely: the first timer is still open.
    assert api.get(f"/v1/timers/{first['id']}").get_json()["status"] == "ACTIVE"


def test_new_start_supersedes_the_open_timer(api, engine):
    api.contracts("other")
    old = api.start(lead_id="lead-s", started_at="2025-01-01T00:00:00Z")
    new = api.start(lead_id="lead-s", started_at="2025-01-01T00:05:00Z")
    assert new["status"] == "ACTIVE"
    old_now = api.get(f"/v1/timers/{old['id']}").get_json()
    assert old_now["status"] == "CANCELLED"
    assert old_now["cancel_reason"] == "superseded"
    assert {e["outcome"] for e in old_now["escalations"]} == {"SKIPPED"}
    with engine.connect() as conn:
        events = conn.execute(
            text("SELECT event_type FROM outbox_events WHERE timer_id = :id ORDER BY id"),
            {"id": old["id"]},
        ).scalars()
        assert list(events) == ["sla.timer.started", "sla.timer.cancelled"]
    # Another contract for the same lead is independent.
    api.start(lead_id="lead-s", sla_contract_id="other")
    assert api.get(f"/v1/timers/{new['id']}").get_json()["status"] == "ACTIVE"


def test_cancel_is_idempotent_and_blocks_complete(api):
    timer = api.start()
    path = f"/v1/timers/{timer['id']}"
    cancelled = api.post(f"{path}/cancel", {"reason": "lead lost"})
    assert cancelled.status_code == 200
    body = cancelled.get_json()
    assert body["status"] == "CANCELLED"
    assert body["cancel_reason"] == "lead lost"
    assert body["cancelled_at"] is not None
    assert body["breached"] is None
    assert [(e["step"], e["outcome"]) for e in body["escalations"]] == [(1, "SKIPPED")]

    again = api.post(f"{path}/cancel")  # no body at all
    assert again.status_code == 200
    assert again.get_json() == body
    assert_problem(api.post(f"{path}/complete"), 409)


def test_complete_before_due_is_not_breached(api):
    steps = [
        {"step": 1, "after_seconds": 0, "action": "notify"},
        {"step": 2, "after_seconds": 60, "action": "page"},
    ]
    timer = api.start(window_seconds=3600, escalation_steps=steps)
    done = api.post(f"/v1/timers/{timer['id']}/complete", {})
    assert done.status_code == 200
    body = done.get_json()
    assert body["status"] == "COMPLETED"
    assert body["processing_status"] == "COMPLETED"
    assert body["breached"] is False
    assert body["completed_at"] is not None
    assert [(e["step"], e["outcome"], e["error"]) for e in body["escalations"]] == [
        (1, "SKIPPED", None),
        (2, "SKIPPED", None),
    ]
    assert api.get(f"/v1/timers/{timer['id']}").get_json() == body
    # Completing again changes nothing; cancelling a completed timer is a conflict.
    assert api.post(f"/v1/timers/{timer['id']}/complete").get_json() == body
    assert_problem(api.post(f"/v1/timers/{timer['id']}/cancel"), 409)


def test_complete_after_due_is_breached(api):
    started = iso(utcnow() - timedelta(minutes=10))
    timer = api.start(window_seconds=60, started_at=started)
    body = api.post(f"/v1/timers/{timer['id']}/complete").get_json()
    assert body["breached"] is True


def test_list_filters_and_pages(api):
    api.contracts(*(f"c{i}" for i in range(5)))
    ids = [api.start(lead_id=f"lead-{i % 2}", sla_contract_id=f"c{i}")["id"] for i in range(5)]
    api.post(f"/v1/timers/{ids[0]}/cancel")

    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = api.get("/v1/timers", query_string=params).get_json()
        assert len(page["items"]) <= 2
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]  # newest first, each once

    by_lead = api.get("/v1/timers?lead_id=lead-1").get_json()
    assert [t["id"] for t in by_lead["items"]] == [ids[3], ids[1]]
    assert by_lead["next_cursor"] is None
    cancelled = api.get("/v1/timers?status=CANCELLED").get_json()["items"]
    assert [t["id"] for t in cancelled] == [ids[0]]
    assert cancelled[0]["escalations"][0]["outcome"] == "SKIPPED"
    assert set(cancelled[0]) == TIMER_FIELDS


def test_lead_endpoints_close_open_timers(api):
    api.contracts("a", "b", "c")
    a = api.start(lead_id="lead/7", sla_contract_id="a")
    b = api.start(lead_id="lead/7", sla_contract_id="b")
    c = api.start(lead_id="lead/7", sla_contract_id="c")
    api.start(lead_id="lead-8")

    only_a = api.post("/v1/leads/lead%2F7/complete", {"sla_contract_id": "a"})
    assert only_a.status_code == 200
    assert [(t["id"], t["status"]) for t in only_a.get_json()["items"]] == [(a["id"], "COMPLETED")]
    only_b = api.post("/v1/leads/lead/7/cancel?sla_contract_id=b", {"reason": "spam"})
    assert [(t["id"], t["cancel_reason"]) for t in only_b.get_json()["items"]] == [
        (b["id"], "spam")
    ]
    rest = api.post("/v1/leads/lead/7/cancel")
    assert [t["id"] for t in rest.get_json()["items"]] == [c["id"]]
    # Nothing open any more: an empty, successful answer.
    assert api.post("/v1/leads/lead/7/complete").get_json() == {"items": []}
    assert api.get("/v1/timers?lead_id=lead-8&status=ACTIVE").get_json()["items"]
    conflicting = api.post("/v1/leads/lead/7/cancel?sla_contract_id=x", {"sla_contract_id": "y"})
    assert_problem(conflicting, 422, "sla_contract_id")


def test_tenants_are_isolated(api, other_api):
    mine = api.start(lead_id="shared-lead")
    theirs = other_api.start(lead_id="shared-lead")
    path = f"/v1/timers/{theirs['id']}"

    missing = api.get("/v1/timers/00000000-0000-0000-0000-000000000000")
    foreign = api.get(path)
    assert_problem(foreign, 404)
    assert foreign.get_json()["detail"] == missing.get_json()["detail"]
    assert_problem(api.post(f"{path}/cancel"), 404)
    assert_problem(api.post(f"{path}/complete"), 404)
    assert [t["id"] for t in api.get("/v1/timers").get_json()["items"]] == [mine["id"]]
    assert [t["id"] for t in api.get("/v1/timers?lead_id=shared-lead").get_json()["items"]] == [
        mine["id"]
    ]

    closed = api.post("/v1/leads/shared-lead/complete").get_json()["items"]
    assert [t["id"] for t in closed] == [mine["id"]]
    assert other_api.get(path).get_json()["status"] == "ACTIVE"
    # Idempotency keys are per tenant too.
    body = {"lead_id": "k", "window_seconds": 5}
    assert api.post("/v1/timers", body, headers={"Idempotency-Key": "same"}).status_code == 201
    assert (
        other_api.post("/v1/timers", body, headers={"Idempotency-Key": "same"}).status_code == 201
    )


def test_a_tenant_id_in_the_body_is_refused(api, other_tenant):
    response = api.post(
        "/v1/timers", {"lead_id": "x", "window_seconds": 5, "tenant_id": str(other_tenant[0])}
    )
    assert_problem(response, 422, "tenant_id")


def test_concurrent_starts_for_one_lead(app, api):
    """Racing retries of one start make one timer; racing distinct starts leave one open."""
    from concurrent.futures import ThreadPoolExecutor

    def start(i: int, key: str | None):
        client = Api(app.test_client(), api.key)
        body = {"lead_id": "race", "window_seconds": 60}
        if key is None:
            body["started_at"] = f"2025-01-01T00:00:0{i}Z"
        headers = {"Idempotency-Key": key} if key else {}
        response = client.post("/v1/timers", body, headers=headers)
        return response.status_code, response.get_json()["id"]

    with ThreadPoolExecutor(4) as pool:
        retried = list(pool.map(start, range(4), ["same"] * 4))
        assert sorted(s for s, _ in retried) == [200, 200, 200, 201]
        assert len({i for _, i in retried}) == 1
        distinct = list(pool.map(start, range(4), [None] * 4))
    assert {s for s, _ in distinct} == {201}
    open_ = api.get("/v1/timers?lead_id=race&status=ACTIVE").get_json()["items"]
    assert len(open_) == 1
