"""Every bad input gets a 4xx problem+json naming the field, never a 500; outages give 503."""

from __future__ import annotations

import dataclasses
import io
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import text

from tests.support.api import assert_problem

OK = {"lead_id": "lead-1", "window_seconds": 60}
STEP = {"step": 1, "after_seconds": 0, "action": "notify"}


def with_(**changes):
    return {k: v for k, v in {**OK, **changes}.items() if v is not ...}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param([OK], "body", id="array-body"),
        pytest.param(with_(lead_id=...), "lead_id", id="missing-lead"),
        pytest.param(with_(lead_id=""), "lead_id", id="empty-lead"),
        pytest.param(with_(lead_id="x" * 201), "lead_id", id="long-lead"),
        pytest.param(with_(lead_id=42), "lead_id", id="int-lead"),
        pytest.param(with_(lead_id="a\x00b"), "lead_id", id="nul-in-lead"),
        pytest.param(with_(sla_contract_id=""), "sla_contract_id", id="empty-contract"),
        pytest.param(with_(window_minutes=5), "window_seconds", id="both-windows"),
        pytest.param(with_(window_seconds=...), "window_seconds", id="no-window"),
        pytest.param(with_(window_seconds=-5), "window_seconds", id="negative-window"),
        pytest.param(with_(window_seconds=0), "window_seconds", id="zero-window"),
        pytest.param(with_(window_seconds=10**12), "window_seconds", id="huge-window"),
        pytest.param(
            with_(window_seconds=..., window_minutes=10**9), "window_minutes", id="huge-minutes"
        ),
        pytest.param(with_(window_seconds="60"), "window_seconds", id="string-window"),
        pytest.param(with_(window_seconds=60.5), "window_seconds", id="fractional-window"),
        pytest.param(with_(window_seconds=True), "window_seconds", id="bool-window"),
        pytest.param(with_(started_at="2025-01-01T00:00:00"), "started_at", id="naive-start"),
        pytest.param(with_(started_at="yesterday"), "started_at", id="garbage-start"),
        pytest.param(with_(started_at=1700000000), "started_at", id="epoch-start"),
        pytest.param(with_(started_at="2025-02-30T00:00:00Z"), "started_at", id="no-such-day"),
        pytest.param(with_(started_at="9999-12-31T23:59:59Z"), "started_at", id="far-future"),
        pytest.param(with_(escalation_steps=[]), "escalation_steps", id="no-steps"),
        pytest.param(
            with_(escalation_steps=[{**STEP, "step": i} for i in range(1, 52)]),
            "escalation_steps",
            id="too-many-steps",
        ),
        pytest.param(
            with_(escalation_steps=[STEP, {**STEP, "after_seconds": 5}]),
            "escalation_steps",
            id="duplicate-step-numbers",
        ),
        pytest.param(
            with_(escalation_steps=[{**STEP, "after_seconds": 60}, {**STEP, "step": 2}]),
            "escalation_steps",
            id="decreasing-ladder",
        ),
        pytest.param(
            with_(escalation_steps=[{**STEP, "after_seconds": -1}]),
            "escalation_steps.0.after_seconds",
            id="negative-offset",
        ),
        pytest.param(
            with_(escalation_steps=[{**STEP, "step": "1"}]),
            "escalation_steps.0.step",
            id="string-step",
        ),
        pytest.param(
            with_(escalation_steps=[{**STEP, "step": 0}]), "escalation_steps.0.step", id="step-0"
        ),
        pytest.param(
            with_(escalation_steps=[{**STEP, "action": "x" * 101}]),
            "escalation_steps.0.action",
            id="long-action",
        ),
        pytest.param(
            with_(escalation_steps=[{**STEP, "when": "now"}]),
            "escalation_steps.0.when",
            id="unknown-step-field",
        ),
        pytest.param(with_(colour="red"), "colour", id="unknown-field"),
        pytest.param(with_(metadata=[1]), "metadata", id="list-metadata"),
        pytest.param(with_(metadata={"note": "a\x00"}), "metadata.note", id="nul-in-metadata"),
        pytest.param(with_(correlation_id=""), "correlation_id", id="empty-correlation"),
    ],
)
def test_invalid_start_is_422_with_the_field(api, body, field):
    body = assert_problem(api.post("/v1/timers", body), 422, field)
    assert body["type"].endswith("validation-error")


def test_all_field_errors_are_reported_at_once(api):
    response = api.post(
        "/v1/timers", {"window_seconds": -1, "window_minutes": 1, "started_at": "now"}
    )
    fields = {e["field"] for e in assert_problem(response, 422)["errors"]}
    assert fields == {"lead_id", "window_seconds", "started_at"}


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        pytest.param(b'{"lead_id": ', "not valid JSON", id="truncated"),
        pytest.param(b'{"lead_id": "\xff\xfe", "window_seconds": 5}', "UTF-8", id="bad-utf8"),
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b'{"lead_id": "a", "window_seconds": NaN}', "NaN", id="nan"),
        pytest.param(b'{"lead_id": "a", "window_seconds": 1e400}', "range", id="overflow"),
        pytest.param(b'{"lead_id": "a", "lead_id": "b"}', "duplicate", id="duplicate-key"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "deep", id="deep-nesting"),
        pytest.param(b'{"lead_id": 1' + b"0" * 5000 + b"}", "not valid JSON", id="huge-int"),
    ],
)
def test_malformed_body_is_400(api, data, detail):
    response = api.post("/v1/timers", data=data, content_type="application/json")
    assert detail in assert_problem(response, 400)["detail"]


def test_error_lists_are_bounded(api):
    response = api.post("/v1/timers", with_(metadata={"bad": ["\x00"] * 10_000}))
    body = assert_problem(response, 422, "metadata.bad.0")
    assert len(body["errors"]) == 50
    assert "first 50" in body["detail"]


def test_field_paths_are_truncated(api):
    body = assert_problem(api.post("/v1/timers", with_(**{"k" * 5000: 1})), 422)
    assert body["errors"][0]["field"] == "k" * 300


def test_a_null_body_is_not_an_empty_one(api):
    timer = api.start()
    response = api.post(
        f"/v1/timers/{timer['id']}/cancel", data="null", content_type="application/json"
    )
    assert_problem(response, 422, "body")


def test_unpaired_surrogate_is_422(api):
    data = b'{"lead_id": "\\ud800", "window_seconds": 5}'
    response = api.post("/v1/timers", data=data, content_type="application/json")
    assert_problem(response, 422, "lead_id")


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1"],
)
def test_wrong_content_type_is_415(api, content_type):
    response = api.post("/v1/timers", data=json.dumps(OK), content_type=content_type)
    assert_problem(response, 415)


def test_wrong_content_type_on_an_optional_body_is_415(api):
    timer = api.start()
    response = api.post(
        f"/v1/timers/{timer['id']}/cancel", data="reason=x", content_type="text/plain"
    )
    assert_problem(response, 415)


def test_problem_json_is_accepted_as_json(api):
    response = api.post("/v1/timers", data=json.dumps(OK), content_type="application/vnd.x+json")
    assert response.status_code == 201


def test_body_over_the_limit_is_413(api, settings):
    big = {**OK, "metadata": {"blob": "x" * settings.max_body_bytes}}
    assert_problem(api.post("/v1/timers", big), 413)
    # Chunked: no Content-Length, so the limit applies while reading.
    chunked = api.post(
        "/v1/timers",
        input_stream=io.BytesIO(json.dumps(big).encode()),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn sets it
    )
    assert_problem(chunked, 413)


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({"Idempotency-Key": "k" * 256}, "Idempotency-Key"),
        ({"X-Correlation-ID": "c" * 201}, "X-Correlation-ID"),
    ],
)
def test_bad_headers_are_422(api, headers, field):
    assert_problem(api.post("/v1/timers", OK, headers=headers), 422, field)


def test_finish_bodies_are_validated(api):
    timer = api.start()
    path = f"/v1/timers/{timer['id']}"
    assert_problem(api.post(f"{path}/cancel", {"reason": 5}), 422, "reason")
    assert_problem(api.post(f"{path}/cancel", {"why": "x"}), 422, "why")
    assert_problem(api.post(f"{path}/complete", {"reason": "x"}), 422, "reason")
    assert_problem(api.post(f"{path}/cancel", data="{", content_type="application/json"), 400)
    assert_problem(api.post("/v1/leads/x/cancel", {"sla_contract_id": ""}), 422, "sla_contract_id")
    assert_problem(api.post("/v1/leads/" + "x" * 201 + "/cancel"), 422, "lead_id")
    assert_problem(api.post("/v1/leads/a%00b/complete"), 422, "lead_id")
    assert api.get(path).get_json()["status"] == "ACTIVE"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("status=active", "status"),
        ("status=BOGUS", "status"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=bm90fGE%3D", "cursor"),  # base64 of a well-formed but invalid cursor
        ("lead_id=" + "x" * 201, "lead_id"),
        ("lead_id=a%00", "lead_id"),
        ("tenant_id=00000000-0000-0000-0000-000000000000", "tenant_id"),
    ],
)
def test_bad_list_query_is_422(api, query, field):
    assert_problem(api.get(f"/v1/timers?{query}"), 422, field)


@pytest.mark.parametrize("timer_id", ["not-a-uuid", "%00", "bulk"])
@pytest.mark.parametrize("suffix", ["", "/cancel", "/complete"])
def test_non_uuid_timer_id_is_404(api, suffix, timer_id):
    if (timer_id, suffix) == ("bulk", ""):
        return  # POST /v1/timers/bulk is the bulk start
    path = f"/v1/timers/{timer_id}{suffix}"
    response = api.post(path) if suffix else api.get(path)
    assert_problem(response, 404)


def test_the_bulk_path_is_not_read_as_a_timer_id(api):
    # GET /v1/timers/bulk used to be the lookup of the timer "bulk" (404).
    response = api.get("/v1/timers/bulk")
    assert_problem(response, 405)
    assert set(response.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    options = api.client.options("/v1/timers/bulk")
    assert set(options.headers["Allow"].split(", ")) == {"POST", "OPTIONS"}
    # A timer id in any case still names the timer.
    timer = api.start(lead_id="lead-upper")
    assert api.get(f"/v1/timers/{timer['id'].upper()}").get_json()["id"] == timer["id"]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer sla_000000000000_wrong",
        "Bearer not a key at all \u00e9",
        "Basic dXNlcjpwYXNz",
    ],
)
def test_missing_or_wrong_key_is_401(app, engine, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = app.test_client().get("/v1/timers", headers=headers)
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_secret_for_a_real_prefix_is_401(app, tenant):
    key = tenant[1]
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    response = app.test_client().get("/v1/timers", headers={"Authorization": f"Bearer {forged}"})
    assert_problem(response, 401)


def test_auth_comes_before_validation(app, engine):
    response = app.test_client().post("/v1/timers", data="{", content_type="application/json")
    assert_problem(response, 401)


def test_flask_errors_are_problems(api):
    assert_problem(api.get("/nowhere"), 404)
    not_allowed = api.client.delete("/v1/timers")
    assert_problem(not_allowed, 405)
    assert "POST" in not_allowed.headers["Allow"]


def test_unexpected_errors_are_500_problems_without_internals(api, monkeypatch, caplog):
    from web import timers

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(timers.timer_reads, "list_timers", broken)
    response = api.get("/v1/timers")
    body = assert_problem(response, 500)
    text = response.get_data(as_text=True)
    assert "secret internals" not in text and "Traceback" not in text
    assert body["error_id"] in caplog.text


def test_start_succeeds_while_redis_is_down_and_fires_once_it_is_back(api, monkeypatch):
    from tasks import wakeups
    from tasks.sweeper import sweep_once

    dead = redis.Redis(port=1, socket_connect_timeout=0.5, socket_timeout=0.5)
    monkeypatch.setattr(wakeups, "_redis", lambda: dead)
    started = (datetime.now(UTC) - timedelta(seconds=10)).isoformat()
    timer = api.start(window_seconds=5, started_at=started)
    assert api.get(f"/v1/timers/{timer['id']}").get_json()["status"] == "ACTIVE"

    monkeypatch.undo()  # Redis is back; the next sweep fires the committed timer.
    assert sweep_once().fired.claimed == 1
    fired = api.get(f"/v1/timers/{timer['id']}").get_json()
    assert fired["status"] == "ESCALATED"
    assert [e["outcome"] for e in fired["escalations"]] == ["SUCCESS"]


def test_database_down_is_503(engine, settings, tenant):
    from web import create_app

    down = dataclasses.replace(
        settings,
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        db_connect_timeout_seconds=1,
    )
    client = create_app(down).test_client()
    response = client.get("/v1/timers", headers={"Authorization": f"Bearer {tenant[1]}"})
    assert_problem(response, 503)
    assert int(response.headers["Retry-After"]) > 0
    ready = client.get("/readyz")
    assert_problem(ready, 503)
    assert ready.get_json()["database"] == "down"
    assert ready.get_json()["redis"] == "ok"
    assert client.get("/healthz").status_code == 200


def test_api_keys_are_cached_for_the_configured_time(engine, settings, tenant):
    from models import keys as api_keys
    from models import tenants as tenant_sql
    from tests.support.common import wait_until
    from web import create_app

    ttl = 2
    app = create_app(dataclasses.replace(settings, api_key_cache_seconds=ttl))
    cached = app.test_client()
    uncached = create_app(dataclasses.replace(settings, api_key_cache_seconds=0)).test_client()
    headers = {"Authorization": f"Bearer {tenant[1]}"}
    # The first lookup starts the revocation listener, whose subscription empties
    # the cache: once it is subscribed, what is cached stays for the TTL.
    assert cached.get("/v1/timers", headers=headers).status_code == 200
    assert app.extensions["sla"].api_keys.listener.subscribed.wait(10)
    before_cached = time.monotonic()
    assert cached.get("/v1/timers", headers=headers).status_code == 200
    with engine.begin() as conn:  # straight in the database: no process hears of it
        assert tenant_sql.revoke_api_key(conn, tenant[0], api_keys.key_prefix(tenant[1]))
    # Revocation takes effect at once without the cache, within its TTL with it.
    assert_problem(uncached.get("/v1/timers", headers=headers), 401)
    assert cached.get("/v1/timers", headers=headers).status_code == 200
    # A wrong secret for a cached prefix is still refused (the hash is compared).
    forged = {"Authorization": f"Bearer {tenant[1][:-4]}AAAA"}
    assert_problem(cached.get("/v1/timers", headers=forged), 401)
    # Once the entry has lived its TTL, the revoked key stops working here too.
    refused = wait_until(
        lambda: (r := cached.get("/v1/timers", headers=headers)).status_code == 401 and r,
        ttl + 10,
        "the cached key to expire",
        interval=0.1,
    )
    assert time.monotonic() - before_cached >= ttl
    assert_problem(refused, 401)


def test_connections_the_database_dropped_are_replaced_unnoticed(api, engine):
    """The pool replaces a connection whose backend is gone before using it."""
    api.start(lead_id="before")
    with engine.connect() as conn:
        conn.execute(text("SET LOCAL ROLE NONE"))  # terminating backends is the owner's
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    time.sleep(0.2)
    for i in range(3):
        api.start(lead_id=f"after-{i}")
