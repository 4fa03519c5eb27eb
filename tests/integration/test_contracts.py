"""Versioned contracts (docs/contracts.md): PUT writes version N+1, GET reads the
current version or any other, DELETE retires; a timer started under a contract
takes its current version, overridden by the start's own fields, and keeps a
snapshot later versions never change. Real PostgreSQL and Redis."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.support.api import Api, assert_problem

STEPS = [
    {"step": 1, "after_seconds": 0, "action": "notify", "target": "owner"},
    {
        "step": 2,
        "after_seconds": 600,
        "action": "page",
        "repeat_every_seconds": 300,
        "max_repeats": 3,
    },
]
GOLD = {
    "name": "Gold",
    "window_minutes": 120,
    "warning_thresholds": [90, 50, 75],
    "escalation_steps": STEPS,
    "pause_on": ["lead.waiting_on_customer"],
    "resume_on": ["lead.customer_replied"],
}
BERLIN = {
    "timezone": "Europe/Berlin",
    "weekly_hours": {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")},
    "holiday_country": "DE",
}


def put(api: Api, contract_id: str, body: dict, status: int = 201) -> dict:
    response = api.put(f"/v1/contracts/{contract_id}", body)
    assert response.status_code == status, response.get_json()
    return response.get_json()


def start(api: Api, **body) -> dict:
    """A start that gives only what it is told (Api.start adds a window)."""
    response = api.post("/v1/timers", body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- the API


def test_each_put_writes_the_next_version_and_get_reads_any(api):
    first = put(api, "gold", GOLD)
    assert first["version"] == 1 and first["current_version"] == 1
    assert first["window_seconds"] == 7200
    assert first["warning_thresholds"] == [50, 75, 90]  # stored ascending
    assert first["escalation_steps"][1]["max_repeats"] == 3
    assert first["escalation_steps"][0].get("repeat_every_seconds") is None
    second = put(
        api, "gold", {**GOLD, "name": "Gold 2", "window_seconds": 60} | {"window_minutes": None}
    )
    assert second["version"] == 2

    current = api.get("/v1/contracts/gold").get_json()
    assert current["version"] == 2 and current["name"] == "Gold 2"
    old = api.get("/v1/contracts/gold?version=1").get_json()
    assert old["version"] == 1 and old["name"] == "Gold" and old["current_version"] == 2
    assert_problem(api.get("/v1/contracts/gold?version=3"), 404)
    assert_problem(api.get("/v1/contracts/gold?version=0"), 422, "version")
    assert_problem(api.get("/v1/contracts/unknown"), 404)


def test_the_list_shows_each_contract_once_at_its_current_version(api):
    put(api, "b", GOLD)
    put(api, "a", GOLD)
    put(api, "a", {**GOLD, "name": "A2"})
    first = api.get("/v1/contracts?limit=1").get_json()
    assert [(c["contract_id"], c["version"]) for c in first["items"]] == [("a", 2)]
    rest = api.get(f"/v1/contracts?after={first['next_after']}").get_json()
    assert [(c["contract_id"], c["version"]) for c in rest["items"]] == [("b", 1)]
    assert rest["next_after"] is None


def test_delete_retires_idempotently_and_a_put_revives(api):
    put(api, "gold", GOLD)
    assert api.delete("/v1/contracts/gold").status_code == 204
    retired = api.get("/v1/contracts/gold").get_json()["retired_at"]
    assert retired is not None
    assert api.delete("/v1/contracts/gold").status_code == 204  # idempotent
    assert api.get("/v1/contracts/gold").get_json()["retired_at"] == retired
    assert_problem(api.delete("/v1/contracts/never"), 404)

    revived = put(api, "gold", GOLD)
    assert revived["version"] == 2 and revived["retired_at"] is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"window_minutes": None}, "window_seconds"),  # no window
        ({"window_seconds": 60}, "window_seconds"),  # two windows
        ({"warning_thresholds": [50, 50]}, "warning_thresholds"),
        ({"warning_thresholds": [100]}, "warning_thresholds.0"),
        ({"warning_thresholds": [0]}, "warning_thresholds.0"),
        ({"escalation_steps": []}, "escalation_steps"),
        (
            {
                "escalation_steps": [
                    {"step": 1, "after_seconds": 0, "action": "a", "max_repeats": 2}
                ]
            },
            "escalation_steps.0",
        ),
        (
            {
                "escalation_steps": [
                    {"step": 1, "after_seconds": 0, "action": "a", "repeat_every_seconds": 0}
                ]
            },
            "escalation_steps.0.repeat_every_seconds",
        ),
        ({"pause_on": ["lead.contacted"]}, "pause_on.0"),
        ({"resume_on": ["lead.waiting_on_customer"]}, "resume_on"),  # also in pause_on
        ({"pause_on": ["lead.on_hold", "lead.on_hold"]}, "pause_on"),
        ({"calendar_id": "nowhere"}, "calendar_id"),
        ({"name": ""}, "name"),
    ],
)
def test_a_bad_contract_is_a_422_naming_the_field(api, change, field):
    body = {k: v for k, v in {**GOLD, **change}.items() if v is not None}
    assert_problem(api.put("/v1/contracts/bad", body), 422, field)
    assert_problem(api.get("/v1/contracts/bad"), 404)


def test_concurrent_puts_get_consecutive_versions(app, tenant):
    """Two PUTs at once (and more) never share a version nor fail: the contract
    row's lock queues them."""
    put(Api(app.test_client(), tenant[1]), "race", GOLD)
    n = 8
    barrier = threading.Barrier(n)
    results: list[tuple[int, dict]] = []

    def one(i: int) -> None:
        client = Api(app.test_client(), tenant[1])
        barrier.wait()
        response = client.put("/v1/contracts/race", {**GOLD, "name": f"v{i}"})
        results.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [s for s, _ in results] == [201] * n, results
    assert sorted(b["version"] for _, b in results) == list(range(2, n + 2))


# --------------------------------------------------------------------------- starts


def test_a_start_takes_the_current_version_and_stores_its_snapshot(api):
    api.put("/v1/calendars/office", BERLIN)
    put(api, "gold", {**GOLD, "calendar_id": "office"})
    # Friday 16:30 Berlin (CET, UTC+1): 2 h of working time end Monday 10:30.
    started = datetime(2026, 11, 27, 15, 30, tzinfo=UTC)
    timer = start(api, lead_id="lead-1", sla_contract_id="gold", started_at=iso(started))
    assert timer["contract_version"] == 1
    assert timer["due_at"] == "2026-11-30T09:30:00Z"
    assert timer["warning_thresholds"] == [50, 75, 90]
    assert [s["step"] for s in timer["escalation_steps"]] == [1, 2]
    snapshot = timer["contract_snapshot"]
    assert snapshot["contract_id"] == "gold" and snapshot["version"] == 1
    assert snapshot["window_seconds"] == 7200 and snapshot["calendar_id"] == "office"
    assert snapshot["calendar"]["timezone"] == "Europe/Berlin"
    assert snapshot["pause_on"] == ["lead.waiting_on_customer"]


def test_snapshots_never_change_on_later_puts(api, engine):
    put(api, "gold", GOLD)
    timer = start(api, lead_id="lead-snap", sla_contract_id="gold")
    put(api, "gold", {**GOLD, "name": "Changed", "window_minutes": 5, "warning_thresholds": []})
    api.delete("/v1/contracts/gold")

    again = api.get(f"/v1/timers/{timer['id']}").get_json()
    assert again["contract_snapshot"] == timer["contract_snapshot"]
    assert again["contract_snapshot"]["name"] == "Gold"
    assert (again["contract_version"], again["window_seconds"], again["due_at"]) == (
        1,
        7200,
        timer["due_at"],
    )
    assert again["warning_thresholds"] == [50, 75, 90]


def test_the_start_request_overrides_the_contract(api):
    api.put("/v1/calendars/office", BERLIN)
    put(api, "gold", GOLD)
    steps = [{"step": 7, "after_seconds": 5, "action": "call"}]
    started = datetime(2026, 11, 27, 15, 30, tzinfo=UTC)
    timer = api.start(
        lead_id="lead-o",
        sla_contract_id="gold",
        window_seconds=3600,
        escalation_steps=steps,
        warning_thresholds=[80],
        calendar_id="office",
        started_at=iso(started),
    )
    assert timer["window_seconds"] == 3600
    assert timer["due_at"] == "2026-11-30T08:30:00Z"  # 30 min Friday, 30 min Monday
    assert [s["step"] for s in timer["escalation_steps"]] == [7]
    assert timer["warning_thresholds"] == [80]
    snapshot = timer["contract_snapshot"]
    assert snapshot["window_seconds"] == 3600 and snapshot["warning_thresholds"] == [80]
    assert snapshot["calendar_id"] == "office" and snapshot["version"] == 1


def test_next_fire_at_is_the_first_warning(api, engine):
    put(api, "gold", GOLD)
    started = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    timer = start(api, lead_id="lead-w", sla_contract_id="gold", started_at=iso(started))
    with engine.connect() as conn:
        fire = conn.execute(
            text("SELECT next_fire_at FROM sla_timers WHERE id = :id"), {"id": timer["id"]}
        ).scalar_one()
    assert fire == started + timedelta(minutes=60)  # 50 % of 120 minutes


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"sla_contract_id": "nope", "window_seconds": 60}, "sla_contract_id"),
        ({"sla_contract_id": "retired"}, "sla_contract_id"),
        ({"window_seconds": 60, "calendar_id": "nowhere"}, "calendar_id"),
        ({}, "window_seconds"),  # "default", no default contract: a window is required
    ],
)
def test_a_start_that_cannot_resolve_is_a_422(api, body, field):
    put(api, "retired", GOLD)
    api.delete("/v1/contracts/retired")
    response = api.post("/v1/timers", {"lead_id": "lead-x", **body})
    assert_problem(response, 422, field)
    bulk = api.post(
        "/v1/timers/bulk",
        {"timers": [{"lead_id": "ok", "window_seconds": 60}, {"lead_id": "lead-x", **body}]},
    )
    assert_problem(bulk, 422, f"timers.1.{field}")


def test_a_default_contract_applies_once_defined(api):
    plain = api.start(lead_id="lead-d", window_seconds=60)
    assert plain["contract_version"] is None and plain["contract_snapshot"] is None
    put(api, "default", {**GOLD, "warning_thresholds": []})
    timer = api.post("/v1/timers", {"lead_id": "lead-d2"}).get_json()
    assert timer["contract_version"] == 1 and timer["window_seconds"] == 7200
    # A window given overrides it, on the single path as on the bulk one.
    given = api.start(lead_id="lead-d3", window_seconds=60)
    assert given["contract_version"] == 1 and given["window_seconds"] == 60
    bulk = api.post("/v1/timers/bulk", {"timers": [{"lead_id": "lead-d4"}]}).get_json()
    assert bulk["items"][0]["contract_version"] == 1


def test_a_bulk_start_resolves_each_contract(api):
    put(api, "gold", GOLD)
    put(api, "silver", {**GOLD, "window_minutes": 30, "warning_thresholds": []})
    items = [
        {"lead_id": f"b-{i}", "sla_contract_id": c}
        for i, c in enumerate(["gold", "silver", "gold"])
    ] + [{"lead_id": "b-plain", "window_seconds": 60}]
    response = api.post("/v1/timers/bulk", {"timers": items})
    assert response.status_code == 201, response.get_json()
    got = response.get_json()["items"]
    assert [t["window_seconds"] for t in got] == [7200, 1800, 7200, 60]
    assert [t["contract_version"] for t in got] == [1, 1, 1, None]


def test_the_wake_up_is_for_the_first_warning_not_due(api, monkeypatch):
    import web.timers

    instants: list = []
    monkeypatch.setattr(web.timers, "schedule_wakeups", instants.extend)
    put(api, "gold", GOLD)
    started = datetime.now(UTC).replace(microsecond=0)
    start(api, lead_id="lead-wake", sla_contract_id="gold", started_at=iso(started))
    bulk = {
        "timers": [
            {"lead_id": "lead-wake-2", "sla_contract_id": "gold", "started_at": iso(started)}
        ]
    }
    assert api.post("/v1/timers/bulk", bulk).status_code == 201
    assert instants == [started + timedelta(minutes=60)] * 2  # 50 % of 120 minutes


def test_a_retry_after_the_contract_was_retired_is_still_a_replay(api):
    """Idempotency outlives the contract: the stored timers answer the retry."""
    put(api, "gold", GOLD)
    key = {"Idempotency-Key": "k-1"}
    body = {"lead_id": "lead-r", "sla_contract_id": "gold"}
    first = api.post("/v1/timers", body, headers=key)
    bulk = {"timers": [{"lead_id": "lead-rb", "sla_contract_id": "gold"}]}
    first_bulk = api.post("/v1/timers/bulk", bulk, headers={"Idempotency-Key": "k-2"})
    assert (first.status_code, first_bulk.status_code) == (201, 201)
    api.delete("/v1/contracts/gold")

    again = api.post("/v1/timers", body, headers=key)
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    again_bulk = api.post("/v1/timers/bulk", bulk, headers={"Idempotency-Key": "k-2"})
    assert again_bulk.status_code == 200
    assert again_bulk.get_json()["items"][0]["id"] == first_bulk.get_json()["items"][0]["id"]
    # A new request under the retired contract is refused.
    fresh = api.post(
        "/v1/timers", {**body, "lead_id": "lead-new"}, headers={"Idempotency-Key": "k-3"}
    )
    assert_problem(fresh, 422, "sla_contract_id")


def test_another_tenants_calendars_and_contracts_cannot_be_used(api, other_api):
    assert other_api.put("/v1/calendars/theirs", BERLIN).status_code == 201
    put(other_api, "their-gold", GOLD)
    assert_problem(
        api.put("/v1/contracts/mine", {**GOLD, "calendar_id": "theirs"}), 422, "calendar_id"
    )
    start_theirs = {"lead_id": "x", "window_seconds": 60, "calendar_id": "theirs"}
    assert_problem(api.post("/v1/timers", start_theirs), 422, "calendar_id")
    assert_problem(
        api.post("/v1/timers", {"lead_id": "x", "sla_contract_id": "their-gold"}),
        422,
        "sla_contract_id",
    )
    event = {
        "event_id": "e",
        "type": "lead.qualified",
        "lead_id": "x",
        "sla_contract_id": "their-gold",
    }
    assert_problem(api.post("/v1/lead-events", event), 422, "sla_contract_id")
    assert api.get("/v1/contracts").get_json()["items"] == []
    assert api.get("/v1/calendars").get_json()["items"] == []
    assert_problem(api.get("/v1/contracts/their-gold?version=1"), 404)


def test_the_documents_examples_are_accepted(app, api):
    document = app.test_client().get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    calendar = schemas["CalendarPut"]["examples"][0]
    contract = schemas["ContractPut"]["examples"][0]
    assert api.put("/v1/calendars/example", calendar).status_code == 201
    assert (
        api.put("/v1/contracts/example", {**contract, "calendar_id": "example"}).status_code == 201
    )
