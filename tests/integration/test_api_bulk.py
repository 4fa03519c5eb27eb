"""POST /v1/timers/bulk: all-or-nothing starts of up to 1000 timers, on the real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.support.api import TIMER_FIELDS, Api, assert_problem
from tests.support.common import redis_conn

BULK = "/v1/timers/bulk"


def item(lead: str, **fields) -> dict:
    return {"lead_id": lead, "window_seconds": 600, **fields}


def counts(engine) -> dict[str, int]:
    """Timers and outbox events by type; nothing written is {}."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT 'timers', count(*) FROM sla_timers UNION ALL "
                "SELECT event_type, count(*) FROM outbox_events GROUP BY event_type"
            )
        ).all()
    return {name: n for name, n in rows if n}


def test_bulk_start_returns_the_timers_in_request_order(api, engine):
    api.contracts("gold")
    started = "2025-01-02T03:04:05Z"
    body = {
        "timers": [
            item("b-1"),
            item(
                "b-2",
                sla_contract_id="gold",
                window_minutes=15,
                window_seconds=None,
                started_at=started,
                escalation_steps=[{"step": 1, "after_seconds": 60, "action": "page"}],
                metadata={"k": [1, 2.5]},
                correlation_id="corr-b2",
            ),
            item("b-3"),
        ]
    }
    del body["timers"][1]["window_seconds"]
    response = api.post(BULK, body, headers={"X-Correlation-ID": "corr-hdr"})
    assert response.status_code == 201, response.get_json()
    assert "Location" not in response.headers
    items = response.get_json()["items"]
    assert [t["lead_id"] for t in items] == ["b-1", "b-2", "b-3"]
    assert all(set(t) == TIMER_FIELDS for t in items)
    second = items[1]
    assert second["sla_contract_id"] == "gold"
    assert second["window_seconds"] == 900
    assert second["started_at"] == started
    assert second["due_at"] == "2025-01-02T03:19:05Z"
    assert second["escalation_steps"] == [
        {"step": 1, "after_seconds": 60, "action": "page", "target": None}
    ]
    assert second["metadata"] == {"k": [1, 2.5]}
    assert second["correlation_id"] == "corr-b2"
    assert items[0]["correlation_id"] == items[2]["correlation_id"] == "corr-hdr"
    assert {t["status"] for t in items} == {"ACTIVE"}
    assert all(t["escalations"] == [] and t["idempotency_key"] is None for t in items)
    # Each is a timer like any other, with its started event.
    assert api.get(f"/v1/timers/{second['id']}").get_json() == second
    assert counts(engine) == {"timers": 3, "sla.timer.started": 3}


def test_bulk_start_supersedes_open_timers(api, engine):
    api.contracts("other")
    old = api.start(lead_id="s-1", started_at="2025-01-01T00:00:00Z")
    other_contract = api.start(lead_id="s-1", sla_contract_id="other")
    response = api.post(BULK, {"timers": [item("s-0"), item("s-1"), item("s-2")]})
    assert response.status_code == 201, response.get_json()
    new = response.get_json()["items"][1]
    old_now = api.get(f"/v1/timers/{old['id']}").get_json()
    assert old_now["status"] == "CANCELLED"
    assert old_now["cancel_reason"] == "superseded"
    assert [e["outcome"] for e in old_now["escalations"]] == ["SKIPPED"]
    assert api.get(f"/v1/timers/{other_contract['id']}").get_json()["status"] == "ACTIVE"
    assert new["status"] == "ACTIVE"
    with engine.connect() as conn:
        events = conn.execute(
            text(
                "SELECT timer_id::text, event_type FROM outbox_events "
                "WHERE timer_id IN (:old, :new) ORDER BY id"
            ),
            {"old": old["id"], "new": new["id"]},
        ).all()
    # The old timer's cancellation comes before the new timer's start.
    assert [tuple(e) for e in events] == [
        (old["id"], "sla.timer.started"),
        (old["id"], "sla.timer.cancelled"),
        (new["id"], "sla.timer.started"),
    ]
    open_ = api.get("/v1/timers?lead_id=s-1").get_json()["items"]
    assert sorted(t["status"] for t in open_) == ["ACTIVE", "ACTIVE", "CANCELLED"]


def test_bulk_start_is_all_or_nothing(api, engine):
    first = api.start(lead_id="x-2", started_at="2025-01-01T00:00:00Z")
    before = counts(engine)
    # The second item repeats an existing start (same lead, contract and started_at).
    body = {"timers": [item("x-1"), item("x-2", started_at="2025-01-01T00:00:00Z")]}
    problem = assert_problem(api.post(BULK, body), 409)
    assert problem["type"].endswith("conflict")
    assert counts(engine) == before
    # The open timer it would have superseded is untouched.
    assert api.get(f"/v1/timers/{first['id']}").get_json()["status"] == "ACTIVE"


def test_a_lead_and_contract_twice_in_one_request_is_422(api, engine):
    body = {
        "timers": [
            item("d-1"),
            item("d-2"),
            item("d-1", sla_contract_id="other"),
            item("d-1", sla_contract_id="default"),
            item("d-2"),
        ]
    }
    problem = assert_problem(api.post(BULK, body), 422)
    assert [e["field"] for e in problem["errors"]] == ["timers.3.lead_id", "timers.4.lead_id"]
    assert "timers.0" in problem["errors"][0]["reason"]
    assert counts(engine) == {}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({}, "timers", id="missing"),
        pytest.param({"timers": []}, "timers", id="empty"),
        pytest.param({"timers": {"a": 1}}, "timers", id="not-a-list"),
        pytest.param({"timers": [1]}, "timers.0", id="not-an-object"),
        pytest.param({"timers": [item("a"), {"window_seconds": 5}]}, "timers.1.lead_id"),
        pytest.param(
            {"timers": [item("a"), item("b", window_seconds=0)]}, "timers.1.window_seconds"
        ),
        pytest.param(
            {"timers": [item("a"), item("b", window_minutes=5)]},
            "timers.1.window_seconds",
            id="both-windows",
        ),
        pytest.param(
            {"timers": [item("a"), {"lead_id": "b"}]}, "timers.1.window_seconds", id="no-window"
        ),
        pytest.param(
            {"timers": [item("a", escalation_steps=[{"step": 1, "after_seconds": -1}])]},
            "timers.0.escalation_steps.0.after_seconds",
        ),
        pytest.param({"timers": [item("a\x00")]}, "timers.0.lead_id", id="nul"),
        pytest.param({"timers": [item("a", metadata={"k": "\ud800"})]}, "timers.0.metadata.k"),
        pytest.param({"timers": [item("a", tenant_id="x")]}, "timers.0.tenant_id"),
        pytest.param({"timers": [item("a")], "extra": 1}, "extra", id="unknown-field"),
    ],
)
def test_invalid_items_are_422_with_their_path(api, engine, body, field):
    problem = assert_problem(api.post(BULK, body), 422, field)
    assert problem["type"].endswith("validation-error")
    assert counts(engine) == {}


def test_every_invalid_item_is_reported(api):
    body = {"timers": [item(f"e-{i}", window_seconds=0 if i % 2 else 60) for i in range(6)]}
    problem = assert_problem(api.post(BULK, body), 422)
    assert [e["field"] for e in problem["errors"]] == [
        "timers.1.window_seconds",
        "timers.3.window_seconds",
        "timers.5.window_seconds",
    ]


def test_limits(api, engine, app):
    thousand = {"timers": [item(f"l-{i}", window_seconds=3600) for i in range(1000)]}
    response = api.post(BULK, thousand)
    assert response.status_code == 201, response.get_json()
    assert len(response.get_json()["items"]) == 1000
    assert counts(engine) == {"timers": 1000, "sla.timer.started": 1000}

    too_many = {"timers": [item(f"m-{i}") for i in range(1001)]}
    assert_problem(api.post(BULK, too_many), 422, "timers")

    limit = app.config["MAX_CONTENT_LENGTH"]
    huge = {"timers": [item("h", metadata={"pad": "x" * limit})]}
    assert_problem(api.post(BULK, huge), 413)


def test_idempotent_bulk_start(api, engine):
    body = {"timers": [item("i-1"), item("i-2", window_seconds=60)]}
    headers = {"Idempotency-Key": "batch-7"}
    first = api.post(BULK, body, headers=headers)
    assert first.status_code == 201
    items = first.get_json()["items"]
    assert [t["idempotency_key"] for t in items] == ["batch-7:0", "batch-7:1"]

    replay = api.post(BULK, body, headers=headers)
    assert replay.status_code == 200
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == first.get_json()
    assert counts(engine) == {"timers": 2, "sla.timer.started": 2}

    changed = {"timers": [item("i-1"), item("i-2", window_seconds=61)]}
    assert_problem(api.post(BULK, changed, headers=headers), 409)
    fewer = {"timers": [item("i-1")]}
    assert_problem(api.post(BULK, fewer, headers=headers), 409)
    more = {"timers": [*body["timers"], item("i-3")]}
    assert_problem(api.post(BULK, more, headers=headers), 409)
    assert counts(engine) == {"timers": 2, "sla.timer.started": 2}

    # A replay returns the timers as they are now.
    api.post(f"/v1/timers/{items[0]['id']}/cancel", {"reason": "done"})
    again = api.post(BULK, body, headers=headers).get_json()["items"]
    assert again[0]["status"] == "CANCELLED"
    assert [e["outcome"] for e in again[0]["escalations"]] == ["SKIPPED"]


def test_item_keys_share_the_namespace_of_single_starts(api, engine):
    single = api.post("/v1/timers", item("n-9"), headers={"Idempotency-Key": "k:1"})
    assert single.status_code == 201
    body = {"timers": [item("n-1"), item("n-2")]}
    # Item 1 would be stored as "k:1", which a single start already holds.
    assert_problem(api.post(BULK, body, headers={"Idempotency-Key": "k"}), 409)
    assert counts(engine) == {"timers": 1, "sla.timer.started": 1}


def test_bulk_starts_are_scoped_to_the_tenant(api, other_api, engine):
    theirs = other_api.start(lead_id="t-1")
    response = api.post(BULK, {"timers": [item("t-1")]}, headers={"Idempotency-Key": "same"})
    assert response.status_code == 201
    mine = response.get_json()["items"][0]
    # The other tenant's timer for the same lead is not superseded...
    assert other_api.get(f"/v1/timers/{theirs['id']}").get_json()["status"] == "ACTIVE"
    # ...nor visible, and the same Idempotency-Key is theirs to use independently.
    assert other_api.get(f"/v1/timers/{mine['id']}").status_code == 404
    again = other_api.post(BULK, {"timers": [item("t-2")]}, headers={"Idempotency-Key": "same"})
    assert again.status_code == 201
    assert again.get_json()["items"][0]["lead_id"] == "t-2"


def test_bulk_start_schedules_wakeups_once_per_bucket(api, settings):
    soon = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
    at = (soon - timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    body = {
        "timers": [
            *[item(f"w-{i}", window_seconds=30, started_at=at) for i in range(5)],
            item("far", window_seconds=settings.wakeup_horizon_seconds + 600),
        ]
    }
    assert api.post(BULK, body).status_code == 201
    # Five timers due at one instant share one wake-up; the far one gets none.
    assert len(redis_conn().keys("sla:wakeup:*")) == 1


def test_bulk_start_succeeds_while_redis_is_down(api, monkeypatch):
    import redis

    from tasks import wakeups

    dead = redis.Redis(port=1, socket_connect_timeout=0.5, socket_timeout=0.5)
    monkeypatch.setattr(wakeups, "_redis", lambda: dead)
    response = api.post(BULK, {"timers": [item("r-1", window_seconds=5)]})
    assert response.status_code == 201


def test_bulk_start_needs_a_key(app, engine):
    response = app.test_client().post(BULK, json={"timers": [item("a")]})
    assert_problem(response, 401)


def test_openapi_documents_the_bulk_start(app):
    doc = app.test_client().get("/openapi.json").get_json()
    bulk = doc["paths"][BULK]["post"]
    assert bulk["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TimerBulkCreate"
    }
    assert {"200", "201", "409", "413", "422"} <= bulk["responses"].keys()
    assert {p["name"] for p in bulk["parameters"]} == {"Idempotency-Key", "X-Correlation-ID"}
    timers = doc["components"]["schemas"]["TimerBulkCreate"]["properties"]["timers"]
    assert (timers["minItems"], timers["maxItems"]) == (1, 1000)


def test_concurrent_bulk_starts_over_the_same_leads(app, api, engine):
    """Overlapping bulks in different orders queue on their locks (no deadlock)
    and leave exactly one open timer per lead."""
    import random
    from concurrent.futures import ThreadPoolExecutor

    leads = [f"c-{i}" for i in range(20)]

    def start(seed: int) -> int:
        order = leads[:]
        random.Random(seed).shuffle(order)
        client = Api(app.test_client(), api.key)
        return client.post(BULK, {"timers": [item(lead) for lead in order]}).status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(start, range(8))) == [201] * 8
    with engine.connect() as conn:
        by_status = dict(
            conn.execute(text("SELECT status, count(*) FROM sla_timers GROUP BY status")).all()
        )
        cancelled_events = conn.execute(
            text("SELECT count(*) FROM outbox_events WHERE event_type = 'sla.timer.cancelled'")
        ).scalar()
    assert by_status == {"ACTIVE": 20, "CANCELLED": 140}
    assert cancelled_events == 140
