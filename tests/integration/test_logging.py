"""Structured logs and correlation (models/logs.py, web/logs.py, tasks/logs.py,
docs/logging.md): every answer echoes X-Correlation-ID and X-Request-ID, lines
are JSON objects carrying the bound ids, Dramatiq messages carry the
correlation id to their actor, and one id follows a lead from its request to
the webhook receiver, through its timer, step rows and outbox events."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from dramatiq import Message
from flask import g
from sqlalchemy import text

from models import logs
from models.config import Settings
from models.errors import ConfigError
from models.signatures import new_secret
from tasks.broker import broker
from tasks.delivery import close_couriers, deliver_due
from tasks.firing import fire_due
from tasks.logs import LogContext
from tests.support.api import assert_problem
from tests.support.receiver import Receiver
from web import create_app
from web.auth import authenticate_tenant

STEP = [{"step": 1, "after_seconds": 0, "action": "notify", "target": "owner"}]


@pytest.fixture
def lines():
    """What the root logger writes through this service's JSON formatter, as dicts."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logs.install(handler, "web", "json")
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _path(rule) -> str:
    """A concrete path for a URL rule: any value of the right shape will do."""
    return re.sub(r"<(?:int:)?[^<>]*?(\w+)>", lambda m: "1" if "int:" in m.group(0) else "x", rule)


def test_every_route_echoes_the_correlation_and_request_ids(engine, settings):
    app = create_app(dataclasses.replace(settings, admin_token="admin-token"))
    client = app.test_client()
    checked = 0
    for rule in app.url_map.iter_rules():
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            ids = {"X-Correlation-ID": f"corr-{checked}", "X-Request-ID": f"req-{checked}"}
            response = client.open(_path(rule.rule), method=method, headers=ids)
            got = {k: response.headers.get(k) for k in ids}
            assert got == ids, (method, rule.rule, response.status_code)
            checked += 1
    # Beyond the routes: a 404 and the dashboard, which is not a Flask route.
    for path in ("/no/such/route", "/dramatiq/"):
        response = client.get(path, headers={"X-Correlation-ID": "corr-x"})
        assert response.headers["X-Correlation-ID"] == "corr-x", path
        assert UUID(response.headers["X-Request-ID"])
    assert checked > 30


def test_ids_are_generated_when_absent_or_unusable(api):
    response = api.get("/v1/timers")
    assert response.status_code == 200
    assert UUID(response.headers["X-Correlation-ID"]) and UUID(response.headers["X-Request-ID"])
    assert response.headers["X-Correlation-ID"] != response.headers["X-Request-ID"]

    too_long = "c" * 201
    response = api.get("/v1/timers", headers={"X-Correlation-ID": too_long})
    assert response.status_code == 200
    assert UUID(response.headers["X-Correlation-ID"])  # a new one, not the bad one echoed


def test_a_bad_correlation_header_on_a_start_is_still_a_problem(api):
    response = api.post(
        "/v1/timers",
        {"lead_id": "lead-1", "window_seconds": 60},
        headers={"X-Correlation-ID": "c" * 201},
    )
    body = assert_problem(response, 422, "X-Correlation-ID")
    assert "Traceback" not in json.dumps(body)
    assert UUID(response.headers["X-Correlation-ID"])


def test_a_start_without_a_correlation_id_takes_the_echoed_one(api):
    response = api.post("/v1/timers", {"lead_id": "lead-1", "window_seconds": 60})
    assert response.status_code == 201
    assert response.get_json()["correlation_id"] == response.headers["X-Correlation-ID"]

    sent = api.post(
        "/v1/timers",
        {"lead_id": "lead-2", "window_seconds": 60},
        headers={"X-Correlation-ID": "c-7"},
    )
    assert sent.get_json()["correlation_id"] == sent.headers["X-Correlation-ID"] == "c-7"


def test_log_lines_are_json_objects_carrying_the_request_s_ids_and_tenant(app, tenant, lines):
    @app.get("/_test/log")
    def log_something():
        authenticate_tenant()
        logging.getLogger("tests.logging").info("inside %s", "the request")
        logging.getLogger("tests.logging").info("explicit", extra={"timer_id": "t-1"})
        return {"tenant": str(g.tenant_id)}

    response = app.test_client().get(
        "/_test/log",
        headers={
            "Authorization": f"Bearer {tenant[1]}",
            "X-Correlation-ID": "corr-log",
            "X-Request-ID": "req-log",
        },
    )
    assert response.status_code == 200
    first, second = [line for line in lines() if line["logger"] == "tests.logging"]
    assert first["message"] == "inside the request"
    assert (first["level"], first["role"]) == ("INFO", "web")
    assert first["correlation_id"] == "corr-log" and first["request_id"] == "req-log"
    assert first["tenant_id"] == str(tenant[0])
    assert datetime.fromisoformat(first["time"])
    assert second["timer_id"] == "t-1" and second["correlation_id"] == "corr-log"

    # The request's context ends with it.
    assert logs.bound() == {}
    logging.getLogger("tests.logging").info("after")
    assert "correlation_id" not in lines()[-1]


def test_console_lines_are_one_line_with_the_ids_after_the_message():
    record = logging.makeLogRecord(
        {"name": "x", "levelname": "INFO", "msg": "fired", "correlation_id": "c-1"}
    )
    line = logs.ConsoleFormatter("worker").format(record)
    assert line.endswith("INFO worker x: fired  correlation_id=c-1")


def test_a_message_carries_the_senders_correlation_id_to_its_actor():
    assert any(isinstance(m, LogContext) for m in broker.middleware)
    middleware = LogContext()
    message = Message(queue_name="q", actor_name="wake_up", args=(), kwargs={}, options={})
    with logs.binding(correlation_id="corr-msg", request_id="req-1"):
        middleware.before_enqueue(broker, message, None)
    assert message.options["correlation_id"] == "corr-msg"

    # A message that has one keeps it.
    with logs.binding(correlation_id="another"):
        middleware.before_enqueue(broker, message, None)
    assert message.options["correlation_id"] == "corr-msg"

    # Its run binds it (in the worker thread), and unbinds it after.
    middleware.before_process_message(broker, message)
    assert logs.bound() == {
        "correlation_id": "corr-msg",
        "message_id": message.message_id,
        "actor": "wake_up",
    }
    middleware.after_process_message(broker, message, exception=RuntimeError())
    assert logs.bound() == {}


def test_a_message_enqueued_in_redis_holds_the_correlation_id(settings):
    queue = "sla-test-logs"
    message = Message(queue_name=queue, actor_name="wake_up", args=(), kwargs={}, options={})
    try:
        with logs.binding(correlation_id="corr-redis"):
            sent = broker.enqueue(message)
        stored = broker.client.hget(f"dramatiq:{queue}.msgs", sent.options["redis_message_id"])
        assert json.loads(stored)["options"]["correlation_id"] == "corr-redis"
    finally:
        broker.flush(queue)


def test_one_correlation_id_follows_a_lead_from_the_request_to_the_receiver(
    engine, settings, tenant, api
):
    dsettings = dataclasses.replace(
        settings,
        webhook_allow_private_networks=True,
        webhook_retry_schedule=(0, 1, 1),
        webhook_timeout_seconds=1.0,
    )
    with Receiver() as receiver:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO webhook_subscriptions (tenant_id, url, secret) VALUES (:t, :u, :s)"
                ),
                {"t": tenant[0], "u": receiver.url + "/hook", "s": new_secret()},
            )
        occurred = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        started = api.post(
            "/v1/lead-events",
            {
                "event_id": "e-1",
                "type": "lead.created",
                "lead_id": "lead-77",
                "occurred_at": occurred,
                "window_seconds": 60,
                "escalation_steps": STEP,
            },
            headers={"X-Correlation-ID": "lead-77-corr"},
        )
        assert started.status_code in (200, 201), started.get_json()
        assert started.headers["X-Correlation-ID"] == "lead-77-corr"
        with engine.connect() as conn:
            timer_id = conn.execute(
                text("SELECT id FROM sla_timers WHERE lead_id = 'lead-77'")
            ).scalar_one()
        # Pause and resume under requests of their own: the events stay the timer's.
        for verb in ("pause", "resume"):
            response = api.post(
                f"/v1/timers/{timer_id}/{verb}", headers={"X-Correlation-ID": f"other-{verb}"}
            )
            assert response.status_code == 200, response.get_json()
        assert fire_due(engine, settings).steps == 1

        with engine.connect() as conn:
            steps = conn.execute(
                text("SELECT correlation_id FROM sla_escalation_events WHERE timer_id = :t"),
                {"t": timer_id},
            ).scalars()
            assert set(steps) == {"lead-77-corr"}
            events = dict(
                conn.execute(
                    text(
                        "SELECT event_type, correlation_id FROM outbox_events WHERE timer_id = :t"
                    ),
                    {"t": timer_id},
                ).all()
            )
        assert {
            "sla.timer.paused",
            "sla.timer.resumed",
            "sla.escalation.triggered",
        } <= events.keys()
        assert set(events.values()) == {"lead-77-corr"}

        try:
            deadline = time.monotonic() + 10
            while len(receiver.received()) < len(events):
                assert time.monotonic() < deadline, receiver.received()
                if not deliver_due(engine, dsettings, max_seconds=2, use_redis=False).claimed:
                    time.sleep(0.05)
        finally:
            close_couriers()
        got = receiver.received()
        assert {r.json()["type"] for r in got} == events.keys()
        assert {r.headers.get("x-correlation-id") for r in got} == {"lead-77-corr"}


def test_the_log_settings_are_checked_at_start():
    assert (Settings.from_env({}).log_format, Settings.from_env({}).log_level) == ("json", "INFO")
    chosen = Settings.from_env({"SLA_LOG_FORMAT": "Console", "SLA_LOG_LEVEL": "debug"})
    assert (chosen.log_format, chosen.log_level) == ("console", "DEBUG")
    for name, value in (("SLA_LOG_FORMAT", "xml"), ("SLA_LOG_LEVEL", "loud")):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})
