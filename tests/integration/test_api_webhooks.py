"""The webhook subscription API: subscribe, read, change, delete, rotate the
secret, the SSRF guard at the door, deliveries and their attempts, retry and
replay, and tenant isolation on every route.

Sending is the delivery worker's (tests of tasks/delivery.py): these tests read
and write the rows it works from, through the maintenance engine where the
worker would.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import text

from models.sla import utcnow
from tests.support.api import Api, assert_problem
from web.cursors import encode_cursor

URL = "http://127.0.0.1:9/hook"  # resolves without DNS; nothing is sent in these tests
SUBSCRIPTION_FIELDS = {
    "id",
    "url",
    "event_types",
    "description",
    "enabled",
    "created_at",
    "updated_at",
    "disabled_at",
    "disabled_reason",
    "failing_since",
    "last_success_at",
    "secret_rotation",
}


def _app(settings, allow_private: bool):
    from web import create_app

    return create_app(dataclasses.replace(settings, webhook_allow_private_networks=allow_private))


@pytest.fixture
def local_app(engine, settings):
    """The API with SLA_WEBHOOK_ALLOW_PRIVATE_NETWORKS=1, for local receivers."""
    return _app(settings, True)


@pytest.fixture
def hooks(local_app, tenant) -> Api:
    return Api(local_app.test_client(), tenant[1])


@pytest.fixture
def other_hooks(local_app, other_tenant) -> Api:
    return Api(local_app.test_client(), other_tenant[1])


@pytest.fixture
def guarded(engine, settings, tenant) -> Api:
    """The API as deployed by default: private networks refused."""
    return Api(_app(settings, False).test_client(), tenant[1])


def send(api: Api, method: str, path: str, body: Any = None):
    kw = {} if body is None else {"json": body}
    return api.client.open(path, method=method, headers=api._headers(None, None), **kw)


def subscribe(api: Api, **body: Any) -> dict:
    body.setdefault("url", URL)
    response = api.post("/v1/webhooks", body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def rows(engine, sql: str, **params: Any) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(sql), params).mappings()]


def deliveries_of(engine, sub_id: str) -> list[dict]:
    return rows(
        engine,
        "SELECT * FROM webhook_deliveries WHERE subscription_id = :s ORDER BY id",
        s=sub_id,
    )


def set_delivery(engine, delivery_id: int, **values: Any) -> None:
    assignments = ", ".join(f"{k} = :{k}" for k in values)
    with engine.begin() as conn:
        conn.execute(
            text(f"UPDATE webhook_deliveries SET {assignments} WHERE id = :id"),
            {**values, "id": delivery_id},
        )


def add_attempt(engine, delivery: dict, attempt: int, status: int | None, error=None) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO webhook_attempts "
                "(tenant_id, delivery_id, attempt, attempted_at, status_code, duration_ms, error) "
                "VALUES (:t, :d, :a, now(), :s, :ms, :e)"
            ),
            {
                "t": delivery["tenant_id"],
                "d": delivery["id"],
                "a": attempt,
                "s": status,
                "ms": 10 * attempt,
                "e": error,
            },
        )


def at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --------------------------------------------------------------------------- subscribe


def test_subscribing_answers_the_subscription_with_its_secret_shown_once(hooks, engine):
    response = hooks.post(
        "/v1/webhooks", {"url": URL, "event_types": ["sla.timer.due"], "description": "CRM"}
    )
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    assert set(created) == SUBSCRIPTION_FIELDS | {"secret"}
    assert response.headers["Location"] == f"/v1/webhooks/{created['id']}"
    assert created["secret"].startswith("whsec_")
    assert (created["url"], created["event_types"], created["description"]) == (
        URL,
        ["sla.timer.due"],
        "CRM",
    )
    assert created["enabled"] is True
    assert created["secret_rotation"] is None and created["disabled_at"] is None
    (stored,) = rows(engine, "SELECT secret FROM webhook_subscriptions")
    assert stored["secret"] == created["secret"]

    # Never again: neither the subscription nor the list shows it.
    one = hooks.get(f"/v1/webhooks/{created['id']}")
    assert one.status_code == 200
    assert set(one.get_json()) == SUBSCRIPTION_FIELDS
    listing = hooks.get("/v1/webhooks")
    assert created["secret"] not in one.get_data(as_text=True)
    assert created["secret"] not in listing.get_data(as_text=True)
    assert [set(s) for s in listing.get_json()["items"]] == [SUBSCRIPTION_FIELDS]


def test_event_types_default_to_every_type_and_new_events_fan_out(hooks, engine):
    every = subscribe(hooks)
    due_only = subscribe(hooks, event_types=["sla.timer.due"])
    assert every["event_types"] is None
    hooks.start(lead_id="fan-out")  # writes sla.timer.started
    assert len(deliveries_of(engine, every["id"])) == 1
    assert deliveries_of(engine, due_only["id"]) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": URL, "event_types": ["sla.timer.nope"]}, "event_types.0"),
        ({"url": URL, "event_types": ["sla.timer.due", "sla.timer.due"]}, "event_types"),
        ({"url": URL, "event_types": []}, "event_types"),
        ({"url": URL, "event_types": "sla.timer.due"}, "event_types"),
        ({"url": URL, "secret": "whsec_mine"}, "secret"),  # unknown fields are refused
        ({"url": URL, "description": ""}, "description"),
        ({}, "url"),
        ({"url": 42}, "url"),
        ({"url": "ftp://127.0.0.1/hook"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "HTTP://127.0.0.1/hook"}, "url"),
        ({"url": "http://127.0.0.1/a b"}, "url"),
        ({"url": "http://127.0.0.1:99999/hook"}, "url"),
        ({"url": "http://user:pass@127.0.0.1/hook"}, "url"),
        ({"url": "http://127.0.0.1/" + "x" * 2048}, "url"),
        ({"url": "http://no-such-host.invalid/hook"}, "url"),
    ],
)
def test_bad_subscriptions_are_422_naming_the_field(hooks, engine, body, field):
    assert_problem(hooks.post("/v1/webhooks", body), 422, field)
    assert rows(engine, "SELECT id FROM webhook_subscriptions") == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://0.0.0.0/hook", "address 0.0.0.0"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("ftp://8.8.8.8/hook", "http:// or https://"),
    ],
)
def test_ssrf_targets_are_refused_when_subscribing(guarded, engine, url, reason):
    body = assert_problem(guarded.post("/v1/webhooks", {"url": url}), 422, "url")
    (error,) = [e for e in body["errors"] if e["field"] == "url"]
    assert reason in error["reason"], error
    assert rows(engine, "SELECT id FROM webhook_subscriptions") == []


def test_ssrf_guard_applies_to_a_changed_url_and_the_flag_lifts_it(guarded, hooks, engine):
    public = subscribe(guarded, url="http://93.184.215.14/hook")  # a public literal address
    path = f"/v1/webhooks/{public['id']}"
    body = assert_problem(send(guarded, "PATCH", path, {"url": "http://10.0.0.1/"}), 422, "url")
    assert "private" in body["errors"][0]["reason"]
    assert guarded.get(path).get_json()["url"] == "http://93.184.215.14/hook"
    # SLA_WEBHOOK_ALLOW_PRIVATE_NETWORKS=1: the same change is accepted.
    changed = send(hooks, "PATCH", path, {"url": "http://10.0.0.1/"})
    assert changed.status_code == 200 and changed.get_json()["url"] == "http://10.0.0.1/"


# --------------------------------------------------------------------------- read


def test_the_list_pages_newest_first(hooks):
    made = [subscribe(hooks, description=f"n{i}")["id"] for i in range(5)]
    first = hooks.get("/v1/webhooks?limit=2").get_json()
    assert [s["id"] for s in first["items"]] == made[::-1][:2]
    seen = [s["id"] for s in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = hooks.get("/v1/webhooks", query_string={"limit": 2, "cursor": cursor}).get_json()
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
    assert seen == made[::-1]
    assert_problem(hooks.get("/v1/webhooks?cursor=nope"), 422, "cursor")
    assert_problem(hooks.get("/v1/webhooks?limit=0"), 422, "limit")


def test_an_unknown_or_malformed_id_is_404(hooks):
    assert_problem(hooks.get("/v1/webhooks/00000000-0000-0000-0000-000000000001"), 404)
    assert_problem(hooks.get("/v1/webhooks/not-a-uuid"), 404)


# --------------------------------------------------------------------------- change


def test_patch_changes_only_the_fields_given(hooks):
    sub = subscribe(hooks, event_types=["sla.timer.due"], description="CRM")
    path = f"/v1/webhooks/{sub['id']}"
    response = send(hooks, "PATCH", path, {"description": "Helpdesk"})
    assert response.status_code == 200
    changed = response.get_json()
    assert (changed["description"], changed["event_types"], changed["url"]) == (
        "Helpdesk",
        ["sla.timer.due"],
        URL,
    )
    assert at(changed["updated_at"]) >= at(sub["updated_at"])
    # null: event_types back to every type, description cleared.
    changed = send(hooks, "PATCH", path, {"event_types": None, "description": None}).get_json()
    assert (changed["event_types"], changed["description"]) == (None, None)
    assert send(hooks, "PATCH", path, {}).get_json()["url"] == URL

    assert_problem(send(hooks, "PATCH", path, {"secret": "whsec_x"}), 422, "secret")
    assert_problem(send(hooks, "PATCH", path, {"url": None}), 422, "url")
    assert_problem(send(hooks, "PATCH", path, {"enabled": "yes"}), 422, "enabled")
    assert_problem(send(hooks, "PATCH", path, {"event_types": ["nope"]}), 422, "event_types.0")


def test_disabling_records_it_and_re_enabling_starts_afresh(hooks, engine):
    sub = subscribe(hooks)
    path = f"/v1/webhooks/{sub['id']}"
    off = send(hooks, "PATCH", path, {"enabled": False}).get_json()
    assert off["enabled"] is False and off["disabled_at"] is not None
    assert off["disabled_reason"] == "disabled by request"
    hooks.start(lead_id="while-disabled")
    assert deliveries_of(engine, sub["id"]) == []  # a disabled subscription gets no events

    # As the delivery worker leaves it after days of failures.
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE webhook_subscriptions SET failing_since = now() - interval '6 days', "
                "disabled_reason = 'every attempt failed for 5 days' WHERE id = :id"
            ),
            {"id": sub["id"]},
        )
    on = send(hooks, "PATCH", path, {"enabled": True}).get_json()
    assert on["enabled"] is True
    assert (on["disabled_at"], on["disabled_reason"], on["failing_since"]) == (None, None, None)


def test_enabling_an_enabled_subscription_keeps_its_failure_streak(hooks, engine):
    sub = subscribe(hooks)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE webhook_subscriptions SET failing_since = now() WHERE id = :id"),
            {"id": sub["id"]},
        )
    on = send(hooks, "PATCH", f"/v1/webhooks/{sub['id']}", {"enabled": True}).get_json()
    assert on["failing_since"] is not None


def test_delete_removes_the_subscription_its_deliveries_and_their_attempts(hooks, engine):
    sub, kept = subscribe(hooks), subscribe(hooks)
    hooks.start(lead_id="cascade")
    (delivery,) = deliveries_of(engine, sub["id"])
    add_attempt(engine, delivery, 1, 500)
    response = send(hooks, "DELETE", f"/v1/webhooks/{sub['id']}")
    assert response.status_code == 204 and response.get_data() == b""
    assert_problem(hooks.get(f"/v1/webhooks/{sub['id']}"), 404)
    assert_problem(send(hooks, "DELETE", f"/v1/webhooks/{sub['id']}"), 404)
    assert deliveries_of(engine, sub["id"]) == []
    assert rows(engine, "SELECT id FROM webhook_attempts") == []
    assert len(deliveries_of(engine, kept["id"])) == 1  # another subscription's stay
    assert len(rows(engine, "SELECT id FROM outbox_events")) == 1  # and so does the event


# --------------------------------------------------------------------------- rotate


def _secrets(engine, sub_id: str) -> dict:
    (row,) = rows(
        engine,
        "SELECT secret, previous_secret, previous_secret_expires_at, now() AS now "
        "FROM webhook_subscriptions WHERE id = :id",
        id=sub_id,
    )
    return row


def test_rotation_issues_a_new_secret_and_keeps_the_old_one_for_the_grace(hooks, engine, settings):
    sub = subscribe(hooks)
    path = f"/v1/webhooks/{sub['id']}/rotate-secret"
    response = hooks.post(path)
    assert response.status_code == 200, response.get_json()
    rotated = response.get_json()
    assert set(rotated) == {"secret", "previous_secret_expires_at"}
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != sub["secret"]
    stored = _secrets(engine, sub["id"])
    assert (stored["secret"], stored["previous_secret"]) == (rotated["secret"], sub["secret"])
    grace = timedelta(seconds=settings.webhook_secret_grace_seconds)
    expires = at(rotated["previous_secret_expires_at"])
    assert expires == stored["previous_secret_expires_at"]
    assert abs(expires - (stored["now"] + grace)) < timedelta(seconds=5)

    shown = hooks.get(f"/v1/webhooks/{sub['id']}").get_json()
    assert shown["secret_rotation"] == {
        "previous_secret_expires_at": rotated["previous_secret_expires_at"]
    }
    assert rotated["secret"] not in hooks.get(f"/v1/webhooks/{sub['id']}").get_data(as_text=True)

    # A second rotation inside the grace: two secrets sign, the oldest is dropped.
    again = hooks.post(path, {"grace_seconds": 60}).get_json()
    stored = _secrets(engine, sub["id"])
    assert (stored["secret"], stored["previous_secret"]) == (again["secret"], rotated["secret"])
    assert sub["secret"] not in stored.values()
    assert at(again["previous_secret_expires_at"]) - stored["now"] <= timedelta(seconds=61)


def test_a_rotation_with_no_grace_revokes_the_old_secret_at_once(hooks, engine):
    sub = subscribe(hooks)
    path = f"/v1/webhooks/{sub['id']}/rotate-secret"
    rotated = hooks.post(path, {"grace_seconds": 0}).get_json()
    assert rotated["previous_secret_expires_at"] is None
    stored = _secrets(engine, sub["id"])
    assert (stored["secret"], stored["previous_secret"]) == (rotated["secret"], None)
    assert hooks.get(f"/v1/webhooks/{sub['id']}").get_json()["secret_rotation"] is None
    assert_problem(hooks.post(path, {"grace_seconds": -1}), 422, "grace_seconds")
    assert_problem(hooks.post(path, {"grace": 5}), 422, "grace")


def test_an_expired_rotation_is_no_longer_shown(hooks, engine):
    sub = subscribe(hooks)
    hooks.post(f"/v1/webhooks/{sub['id']}/rotate-secret")
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE webhook_subscriptions "
                "SET previous_secret_expires_at = now() - interval '1 second' WHERE id = :id"
            ),
            {"id": sub["id"]},
        )
    assert hooks.get(f"/v1/webhooks/{sub['id']}").get_json()["secret_rotation"] is None


# --------------------------------------------------------------------------- deliveries


def test_deliveries_show_their_last_attempt_and_each_attempt(hooks, engine):
    sub = subscribe(hooks)
    for i in range(3):
        hooks.start(lead_id=f"lead-{i}")
    first, second, third = deliveries_of(engine, sub["id"])
    add_attempt(engine, first, 1, 503, "HTTP 503")
    add_attempt(engine, first, 2, None, "timed out after 5 s")
    add_attempt(engine, first, 3, 200)
    set_delivery(
        engine,
        first["id"],
        status="DELIVERED",
        attempts=3,
        last_status_code=200,
        last_duration_ms=30,
        last_attempt_at=utcnow(),
        delivered_at=utcnow(),
    )
    set_delivery(engine, third["id"], status="FAILED", attempts=8, last_error="HTTP 410")

    page = hooks.get(f"/v1/webhooks/{sub['id']}/deliveries").get_json()
    assert [d["id"] for d in page["items"]] == [third["id"], second["id"], first["id"]]
    assert page["next_cursor"] is None
    listed = {d["id"]: d for d in page["items"]}
    done = listed[first["id"]]
    assert done["event_id"] == f"evt_{first['event_id']}"
    assert done["event_type"] == "sla.timer.started"
    assert done["webhook_id"] == sub["id"]
    assert (done["status"], done["attempts"], done["last_status_code"]) == ("DELIVERED", 3, 200)
    assert done["last_duration_ms"] == 30 and done["delivered_at"] is not None
    assert done["next_attempt_at"] is None  # only a PENDING delivery has one
    assert listed[second["id"]]["status"] == "PENDING"
    assert listed[second["id"]]["next_attempt_at"] is not None
    assert listed[third["id"]]["last_error"] == "HTTP 410"

    failed = hooks.get(f"/v1/webhooks/{sub['id']}/deliveries?status=FAILED").get_json()
    assert [d["id"] for d in failed["items"]] == [third["id"]]

    detail = hooks.get(f"/v1/webhooks/{sub['id']}/deliveries/{first['id']}").get_json()
    assert detail["status"] == "DELIVERED"
    assert [
        (a["attempt"], a["status_code"], a["duration_ms"], a["error"])
        for a in detail["attempt_history"]
    ] == [(1, 503, 10, "HTTP 503"), (2, None, 20, "timed out after 5 s"), (3, 200, 30, None)]
    assert all(a["attempted_at"] for a in detail["attempt_history"])


def test_the_deliveries_list_pages_and_validates(hooks):
    sub = subscribe(hooks)
    for i in range(5):
        hooks.start(lead_id=f"page-{i}")
    path = f"/v1/webhooks/{sub['id']}/deliveries"
    seen, cursor = [], None
    while True:
        query = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = hooks.get(path, query_string=query).get_json()
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == 5
    assert_problem(hooks.get(path + "?status=LOST"), 422, "status")
    assert_problem(hooks.get(path + "?cursor=abc"), 422, "cursor")
    other_listing = encode_cursor(utcnow(), uuid4())  # another listing's cursor
    assert_problem(hooks.get(path, query_string={"cursor": other_listing}), 422, "cursor")
    assert_problem(hooks.get(f"{path}/{2**63}"), 404)
    assert_problem(hooks.get(f"{path}/999999"), 404)


def test_retry_re_arms_a_finished_delivery_with_a_fresh_schedule(hooks, engine):
    sub = subscribe(hooks)
    hooks.start(lead_id="retry")
    (delivery,) = deliveries_of(engine, sub["id"])
    later = utcnow() + timedelta(hours=5)
    set_delivery(
        engine,
        delivery["id"],
        status="FAILED",
        attempts=8,
        next_attempt_at=later,
        last_error="HTTP 500",
    )
    response = hooks.post(f"/v1/webhooks/{sub['id']}/deliveries/{delivery['id']}/retry")
    assert response.status_code == 202, response.get_json()
    assert response.get_json()["status"] == "PENDING"
    (row,) = deliveries_of(engine, sub["id"])
    assert (row["status"], row["attempts"], row["claim_token"], row["lease_expires_at"]) == (
        "PENDING",
        0,
        None,
        None,
    )
    assert row["next_attempt_at"] <= utcnow()
    assert row["last_error"] == "HTTP 500"  # the history stays until the next attempt


def test_retry_of_a_pending_delivery_only_makes_it_due_now(hooks, engine):
    sub = subscribe(hooks)
    hooks.start(lead_id="retry-pending")
    (delivery,) = deliveries_of(engine, sub["id"])
    set_delivery(engine, delivery["id"], attempts=3, next_attempt_at=utcnow() + timedelta(hours=2))
    response = hooks.post(f"/v1/webhooks/{sub['id']}/deliveries/{delivery['id']}/retry")
    assert response.status_code == 202
    (row,) = deliveries_of(engine, sub["id"])
    assert (row["status"], row["attempts"]) == ("PENDING", 3)
    assert row["next_attempt_at"] <= utcnow()
    assert_problem(hooks.post(f"/v1/webhooks/{sub['id']}/deliveries/999999/retry"), 404)


def test_retry_and_replay_to_a_disabled_subscription_are_409(hooks, engine):
    sub = subscribe(hooks)
    hooks.start(lead_id="disabled")
    (delivery,) = deliveries_of(engine, sub["id"])
    set_delivery(engine, delivery["id"], status="FAILED")
    send(hooks, "PATCH", f"/v1/webhooks/{sub['id']}", {"enabled": False})
    retry = hooks.post(f"/v1/webhooks/{sub['id']}/deliveries/{delivery['id']}/retry")
    assert "enable it first" in assert_problem(retry, 409)["detail"]
    since = (utcnow() - timedelta(hours=1)).isoformat()
    replay = hooks.post(f"/v1/webhooks/{sub['id']}/replay", {"since": since})
    assert "enable it first" in assert_problem(replay, 409)["detail"]
    assert deliveries_of(engine, sub["id"])[0]["status"] == "FAILED"


# --------------------------------------------------------------------------- replay


def test_replay_covers_events_from_before_the_subscription(hooks, engine):
    for i in range(3):
        hooks.start(lead_id=f"early-{i}")  # no subscription yet: no deliveries
    sub = subscribe(hooks)
    assert deliveries_of(engine, sub["id"]) == []
    since = (utcnow() - timedelta(hours=1)).isoformat()
    response = hooks.post(f"/v1/webhooks/{sub['id']}/replay", {"since": since})
    assert response.status_code == 202, response.get_json()
    assert response.get_json() == {"replayed": 3}
    armed = deliveries_of(engine, sub["id"])
    events = rows(engine, "SELECT id, timer_id FROM outbox_events ORDER BY id")
    assert [(d["event_id"], d["timer_id"]) for d in armed] == [
        (e["id"], e["timer_id"]) for e in events
    ]
    assert {(d["status"], d["attempts"]) for d in armed} == {("PENDING", 0)}


def test_replay_re_arms_deliveries_already_made(hooks, engine):
    sub = subscribe(hooks)
    for i in range(2):
        hooks.start(lead_id=f"again-{i}")
    done, dead = deliveries_of(engine, sub["id"])
    set_delivery(engine, done["id"], status="DELIVERED", attempts=1, delivered_at=utcnow())
    set_delivery(
        engine,
        dead["id"],
        status="FAILED",
        attempts=8,
        next_attempt_at=utcnow() + timedelta(days=1),
    )
    with engine.begin() as conn:  # a claim left by a worker
        conn.execute(
            text(
                "UPDATE webhook_deliveries SET claim_token = gen_random_uuid(), "
                "lease_expires_at = now() + interval '1 minute' WHERE id = :id"
            ),
            {"id": dead["id"]},
        )
    since = (utcnow() - timedelta(minutes=10)).isoformat()
    assert hooks.post(f"/v1/webhooks/{sub['id']}/replay", {"since": since}).get_json() == {
        "replayed": 2
    }
    for row in deliveries_of(engine, sub["id"]):
        assert (row["status"], row["attempts"], row["claim_token"], row["delivered_at"]) == (
            "PENDING",
            0,
            None,
            None,
        )
        assert row["lease_expires_at"] is None and row["next_attempt_at"] <= utcnow()
    assert [d["id"] for d in deliveries_of(engine, sub["id"])] == [done["id"], dead["id"]]


def test_replay_keeps_to_the_window_and_the_types(hooks, engine):
    sub = subscribe(hooks, event_types=["sla.timer.started", "sla.timer.cancelled"])
    timer = hooks.start(lead_id="window")
    hooks.post(f"/v1/timers/{timer['id']}/cancel")
    hooks.start(lead_id="window-2")
    with engine.begin() as conn:  # the first timer's events are two hours old
        conn.execute(
            text(
                "UPDATE outbox_events SET created_at = now() - interval '2 hours' "
                "WHERE timer_id = :t"
            ),
            {"t": timer["id"]},
        )
        conn.execute(text("DELETE FROM webhook_deliveries"))
    replay = f"/v1/webhooks/{sub['id']}/replay"
    hour_ago = (utcnow() - timedelta(hours=1)).isoformat()
    day_ago = (utcnow() - timedelta(days=1)).isoformat()
    assert hooks.post(replay, {"since": hour_ago}).get_json() == {"replayed": 1}
    assert hooks.post(replay, {"since": day_ago, "until": hour_ago}).get_json() == {"replayed": 2}
    only = {"since": day_ago, "event_types": ["sla.timer.cancelled", "sla.timer.due"]}
    assert hooks.post(replay, only).get_json() == {"replayed": 1}
    types = rows(
        engine,
        "SELECT e.event_type FROM webhook_deliveries d JOIN outbox_events e "
        "ON e.id = d.event_id ORDER BY e.id",
    )
    assert [t["event_type"] for t in types] == [
        "sla.timer.started",
        "sla.timer.cancelled",
        "sla.timer.started",
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "since"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-01-01T00:00:00"}, "since"),  # no offset
        ({"since": 1700000000}, "since"),
        ({"since": "2999-01-01T00:00:00Z"}, "since"),  # in the future
        ({"since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, "until"),
        ({"since": "2025-01-01T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, "until"),
        ({"since": "2025-01-01T00:00:00Z", "event_types": ["nope"]}, "event_types.0"),
        ({"since": "2025-01-01T00:00:00Z", "from": "now"}, "from"),
    ],
)
def test_bad_replays_are_422_naming_the_field(hooks, engine, body, field):
    sub = subscribe(hooks)
    assert_problem(hooks.post(f"/v1/webhooks/{sub['id']}/replay", body), 422, field)


def test_a_replay_beyond_the_bound_is_422_and_arms_nothing(hooks, engine, monkeypatch):
    import web.webhooks

    monkeypatch.setattr(web.webhooks, "MAX_REPLAY_EVENTS", 2)
    for i in range(3):
        hooks.start(lead_id=f"bound-{i}")
    sub = subscribe(hooks)
    path = f"/v1/webhooks/{sub['id']}/replay"
    since = (utcnow() - timedelta(hours=1)).isoformat()
    body = assert_problem(hooks.post(path, {"since": since}), 422, "since")
    assert "narrower" in body["errors"][0]["reason"]
    assert deliveries_of(engine, sub["id"]) == []
    window = {"since": since, "event_types": ["sla.timer.started"], "until": since}
    assert_problem(hooks.post(path, window), 422, "until")
    (first,) = rows(engine, "SELECT created_at FROM outbox_events ORDER BY id LIMIT 1")
    until = (first["created_at"] + timedelta(microseconds=1)).isoformat()
    assert hooks.post(path, {"since": since, "until": until}).get_json() == {"replayed": 1}


# --------------------------------------------------------------------------- tenants


def test_another_tenants_subscription_is_404_on_every_route(hooks, other_hooks, engine):
    theirs = subscribe(other_hooks)
    other_hooks.start(lead_id="theirs")
    (delivery,) = deliveries_of(engine, theirs["id"])
    before = rows(engine, "SELECT * FROM webhook_subscriptions")
    before_deliveries = deliveries_of(engine, theirs["id"])

    base = f"/v1/webhooks/{theirs['id']}"
    since = {"since": (utcnow() - timedelta(hours=1)).isoformat()}
    calls = [
        ("GET", base, None),
        ("PATCH", base, {"enabled": False}),
        ("DELETE", base, None),
        ("POST", f"{base}/rotate-secret", None),
        ("GET", f"{base}/deliveries", None),
        ("GET", f"{base}/deliveries/{delivery['id']}", None),
        ("POST", f"{base}/deliveries/{delivery['id']}/retry", None),
        ("POST", f"{base}/replay", since),
    ]
    for method, path, body in calls:
        assert_problem(send(hooks, method, path, body), 404)
    assert hooks.get("/v1/webhooks").get_json()["items"] == []

    # My own subscription does not reach their delivery either.
    mine = subscribe(hooks)
    path = f"/v1/webhooks/{mine['id']}/deliveries/{delivery['id']}"
    assert_problem(hooks.get(path), 404)
    assert_problem(hooks.post(path + "/retry"), 404)
    assert hooks.post(f"/v1/webhooks/{mine['id']}/replay", since).get_json() == {"replayed": 0}

    assert [r for r in rows(engine, "SELECT * FROM webhook_subscriptions") if r in before] == before
    assert deliveries_of(engine, theirs["id"]) == before_deliveries


def test_writes_count_against_the_rate_limit(local_app):
    from web.webhooks import bp

    limited = {
        name
        for name, view in local_app.view_functions.items()
        if name.startswith(f"{bp.name}.") and view.operation.limited
    }
    assert limited == {
        f"{bp.name}.{v}"
        for v in (
            "create",
            "update",
            "delete",
            "rotate_secret",
            "retry_delivery",
            "replay",
        )
    }


# --------------------------------------------------------------------------- document


def test_the_document_describes_the_webhook_routes(hooks):
    doc = hooks.client.get("/openapi.json").get_json()
    paths = doc["paths"]
    expected = {
        "/v1/webhooks": {"get", "post"},
        "/v1/webhooks/{webhook_id}": {"get", "patch", "delete"},
        "/v1/webhooks/{webhook_id}/rotate-secret": {"post"},
        "/v1/webhooks/{webhook_id}/deliveries": {"get"},
        "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}": {"get"},
        "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry": {"post"},
        "/v1/webhooks/{webhook_id}/replay": {"post"},
    }
    for path, methods in expected.items():
        assert set(paths[path]) == methods, path
        for method in methods:
            responses = paths[path][method]["responses"]
            assert paths[path][method]["security"] == [{"apiKey": []}]
            if "{webhook_id}" in path:
                assert "application/problem+json" in responses["404"]["content"], (path, method)
    for path in (
        "/v1/webhooks/{webhook_id}/replay",
        "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
    ):
        assert "409" in paths[path]["post"]["responses"]
    assert "422" in paths["/v1/webhooks"]["post"]["responses"]
    assert "204" in paths["/v1/webhooks/{webhook_id}"]["delete"]["responses"]

    schemas = doc["components"]["schemas"]
    assert set(schemas["Webhook"]["properties"]) == SUBSCRIPTION_FIELDS
    assert "secret" in schemas["WebhookCreated"]["properties"]
    assert schemas["WebhookCreate"]["additionalProperties"] is False
    assert schemas["WebhookUpdate"]["additionalProperties"] is False
    # A new subscription links to its routes, for clients and stateful testing.
    links = paths["/v1/webhooks"]["post"]["responses"]["201"]["links"]
    assert "get_v1_webhooks_webhook_id" in links
    assert "post_v1_webhooks_webhook_id_replay" in links


def test_the_event_type_list_matches_the_schema():
    from models.schema import EVENT_TYPES
    from web.schemas import WebhookCreate

    schema = WebhookCreate.model_json_schema()
    (types,) = [s for s in schema["properties"]["event_types"]["anyOf"] if s["type"] == "array"]
    assert tuple(types["items"]["enum"]) == EVENT_TYPES
    assert types["uniqueItems"] is True


def test_a_url_at_the_length_limit_is_accepted(hooks):
    url = "http://127.0.0.1/" + "x" * (2048 - len("http://127.0.0.1/"))
    assert subscribe(hooks, url=url)["url"] == url


def test_a_since_with_an_offset_is_read_as_that_instant(hooks, engine):
    hooks.start(lead_id="offset")
    sub = subscribe(hooks)
    since = (utcnow() - timedelta(minutes=5)).astimezone(UTC).replace(tzinfo=None)
    local = since.isoformat() + "-02:00"  # 2 h later than the UTC reading: in the future
    assert hooks.post(f"/v1/webhooks/{sub['id']}/replay", {"since": local}).status_code == 422
    early = (utcnow() - timedelta(hours=3)).isoformat()
    assert hooks.post(f"/v1/webhooks/{sub['id']}/replay", {"since": early}).get_json() == {
        "replayed": 1
    }


def test_retry_and_replay_wake_delivery_after_their_commit(hooks, engine, monkeypatch):
    import tasks.delivery
    import web.wakes

    for i in range(2):
        hooks.start(lead_id=f"wake-{i}")
    sub = subscribe(hooks)
    woke: list[int] = []

    def wake() -> None:
        # Another connection already sees the armed rows: the commit came first.
        woke.append(len(deliveries_of(engine, sub["id"])))

    # The starts' own wakes, sent by the web process's waker thread, come first.
    assert web.wakes._waker.wait_idle()
    monkeypatch.setattr(tasks.delivery, "wake_delivery", wake)
    since = (utcnow() - timedelta(hours=1)).isoformat()
    assert hooks.post(f"/v1/webhooks/{sub['id']}/replay", {"since": since}).status_code == 202
    assert woke == [2]
    first = deliveries_of(engine, sub["id"])[0]
    set_delivery(engine, first["id"], status="FAILED")
    retry = hooks.post(f"/v1/webhooks/{sub['id']}/deliveries/{first['id']}/retry")
    assert retry.status_code == 202 and woke == [2, 2]
