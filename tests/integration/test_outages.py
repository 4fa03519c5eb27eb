"""Outages of PostgreSQL and Redis, as the API sees them.

The app under test reaches PostgreSQL or Redis through an ``OutageProxy``
(tests/support/outage_proxy.py), which can refuse connections (a stopped server) or
blackhole them (a partitioned network: accepted, never answered); either way
the connections that were live are cut. The shared servers are never touched.

- Redis down: a start is still 201 with its row committed, /readyz stays 200
  with Redis "degraded", and once Redis is back the sweep fires the timer.
- PostgreSQL down: every route that needs the database (taken from the app's
  url_map, so a new route is covered without editing this file) answers 503
  problem+json with Retry-After within the connect timeout plus a margin;
  nothing is half-written; the same app object recovers when the proxy is up.
- Pool exhaustion and statement timeouts are 503s within their settings.

Measured bounds are printed (``pytest -s``) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from models.config import Settings, normalize_database_url
from tests.support.api import assert_problem
from tests.support.common import redis_conn, wait_until
from tests.support.outage_proxy import OutageProxy

ADMIN_TOKEN = "outage-admin-token"
# psycopg (like libpq) treats a connect timeout under 2 s as 2 s.
CONNECT_TIMEOUT_S = 2
# Scheduling noise on a shared 2-core machine; a hang is unbounded, so any margin shows it.
MARGIN_S = 1.5
POOL_SIZE = 64
REDIS_TIMEOUT_S = 1

# Routes that must answer without the database. Anything else in the url_map is
# expected to need it and to answer 503 while it is down.
DB_FREE = {"/healthz", "/openapi.json"}
DB_FREE |= {"/", "/docs", "/docs/init.js", "/docs/assets/<name>"}  # web/docs.py
DB_FREE |= {"/ui/", "/ui/admin", "/ui/static/<path:filename>"}  # web/ui.py: static pages
PROBE = "/readyz"  # 503 without PostgreSQL, 200 "degraded" without Redis (tested on its own)
# Valid query strings of the routes whose query has required parameters.
SAMPLE_QUERIES = {"/v1/stats": "?from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z"}

# A valid body per request model, so a request reaches the database instead of a 422.
# Leads and names here must not exist when the outage ends: that shows nothing was written.
SAMPLE_BODIES: dict[str, Any] = {
    "TimerCreate": {"lead_id": "outage-single", "window_seconds": 60},
    "TimerBulkCreate": {
        "timers": [
            {"lead_id": "outage-bulk-1", "window_seconds": 60},
            {"lead_id": "outage-bulk-2", "window_seconds": 60},
        ]
    },
    "TenantCreate": {"name": "outage-tenant"},
    "WebhookCreate": {"url": "http://93.184.215.14/outage"},  # public: passes the SSRF guard
    "WebhookUpdate": {"description": "outage"},
    "ReplayRequest": {"since": "2020-01-01T00:00:00Z"},
    "LeadEventCreate": {
        "event_id": "outage-event",
        "type": "lead.qualified",
        "lead_id": "outage-event",
        "window_seconds": 60,
    },
    "LeadEventBulkCreate": {
        "events": [
            {
                "event_id": "outage-events-1",
                "type": "lead.qualified",
                "lead_id": "outage-events-1",
                "window_seconds": 60,
            }
        ]
    },
    "CalendarPut": {"timezone": "Europe/Berlin", "weekly_hours": {"mon": [["09:00", "17:00"]]}},
    "ContractPut": {
        "name": "outage",
        "window_seconds": 60,
        "escalation_steps": [{"step": 1, "after_seconds": 0, "action": "notify"}],
    },
}
OUTAGE_LEADS = [
    "outage-single",
    "outage-bulk-1",
    "outage-bulk-2",
    "outage-event",
    "outage-events-1",
]


def report(what: str, seconds: float) -> None:
    print(f"\n[outage bound] {what}: {seconds * 1000:.0f} ms")


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    result = call()
    return result, time.monotonic() - t0


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def pg_proxy() -> Iterator[OutageProxy]:
    with OutageProxy.for_url(os.environ["DATABASE_URL"]) as proxy:
        yield proxy


@pytest.fixture
def redis_proxy() -> Iterator[OutageProxy]:
    with OutageProxy.for_url(os.environ["REDIS_URL"]) as proxy:
        yield proxy


def make_app(settings: Settings, **changes: Any):
    from web import create_app

    return create_app(dataclasses.replace(settings, admin_token=ADMIN_TOKEN, **changes))


@pytest.fixture
def apps() -> Iterator[Callable[..., Any]]:
    """make_app, disposing of each app's engine afterwards (engines are cached per settings)."""
    made = []

    def make(settings: Settings, **changes: Any):
        app = make_app(settings, **changes)
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["sla"].engine.dispose()


class Client:
    def __init__(self, app, key: str) -> None:
        self.app = app
        self.key = key

    def request(self, method: str, path: str, *, json: Any = None, key: str | None = None):
        headers = {"Authorization": f"Bearer {key or self.key}"}
        client = self.app.test_client()  # one per call: requests may run on several threads
        kw = {} if json is None else {"json": json}
        return client.open(path, method=method, headers=headers, **kw)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, json: Any = None, **kw):
        return self.request("POST", path, json=json, **kw)


def rows_for_leads(engine, tenant_id, leads: list[str]) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM sla_timers WHERE tenant_id = :t AND lead_id = ANY(:l)"),
            {"t": tenant_id, "l": leads},
        ).scalar_one()


def timer_state(engine, timer_id) -> tuple[str, int, int]:
    """(status, escalation rows, outbox events) of a timer."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                """
                SELECT status,
                       (SELECT count(*) FROM sla_escalation_events WHERE timer_id = t.id),
                       (SELECT count(*) FROM outbox_events WHERE timer_id = t.id)
                FROM sla_timers t WHERE id = :id
                """
            ),
            {"id": timer_id},
        ).one()


@dataclasses.dataclass
class Call:
    name: str
    method: str
    path: str
    key: str
    body: Any = None


def run_all(api: Client, calls: list[Call]) -> list[tuple[Call, Any, float]]:
    """Every call at once, each on its own thread, timed."""

    def one(call: Call):
        response, elapsed = timed(
            lambda: api.request(call.method, call.path, json=call.body, key=call.key)
        )
        return call, response, elapsed

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(one, calls))


# -- Redis down ----------------------------------------------------------------


@pytest.fixture
def redis_down_app(engine, settings, redis_proxy, monkeypatch, apps):
    """An app whose every use of Redis goes through the proxy: its readiness
    probe, and the process-wide wake-up client and Dramatiq broker."""
    from tasks import wakeups
    from tasks.broker import broker, redis_client

    proxied = dataclasses.replace(
        settings,
        redis_url=redis_proxy.url_for(settings.redis_url),
        redis_timeout_seconds=REDIS_TIMEOUT_S,
    )
    client = redis_client(proxied)
    monkeypatch.setattr(wakeups, "_redis", lambda: client)
    monkeypatch.setattr(broker.client, "connection_pool", client.connection_pool)
    return apps(proxied)


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_redis_down_starts_commit_and_fire_once_it_is_back(
    mode, engine, tenant, redis_proxy, redis_down_app
):
    from tasks.broker import QUEUE
    from tasks.sweeper import sweep_once

    api = Client(redis_down_app, tenant[1])
    assert api.get("/readyz").status_code == 200  # the proxy's connections are live
    redis_proxy.down(mode)

    started = (datetime.now(UTC) - timedelta(seconds=61)).isoformat()
    due = {"lead_id": "due", "window_seconds": 60, "started_at": started}
    soon = {"timers": [{"lead_id": "soon", "window_seconds": 120}]}
    results = run_all(
        api,
        [
            Call("POST /v1/timers", "POST", "/v1/timers", api.key, due),
            Call("POST /v1/timers/bulk", "POST", "/v1/timers/bulk", api.key, soon),
            Call("GET /readyz", "GET", "/readyz", api.key),
        ],
    )
    (_, started_due, _), (_, started_soon, _), (_, ready, _) = results
    for call, _, elapsed in results:
        report(f"{call.name} with Redis down ({mode})", elapsed)
        # One Redis round trip at most, bounded by the socket timeouts.
        assert elapsed < 2 * REDIS_TIMEOUT_S + MARGIN_S, call.name
    assert started_due.status_code == 201, started_due.get_json()
    assert started_soon.status_code == 201, started_soon.get_json()
    assert rows_for_leads(engine, tenant[0], ["due", "soon"]) == 2  # committed
    assert ready.status_code == 200, ready.get_json()  # still in rotation
    assert (ready.get_json()["database"], ready.get_json()["redis"]) == ("ok", "degraded")
    assert api.get("/healthz").status_code == 200

    # No wake-up reached Redis: only the sweeper can fire these.
    delay_queue = f"dramatiq:{QUEUE}.DQ"
    assert redis_conn().llen(delay_queue) == 0
    redis_proxy.up()
    sweep = sweep_once()
    assert sweep.fired.claimed == 1
    assert sweep.wakeups >= 1  # the timer due within the horizon got its wake-up now
    assert redis_conn().llen(delay_queue) >= 1
    assert timer_state(engine, started_due.get_json()["id"]) == ("ESCALATED", 1, 3)
    assert sweep_once().fired.claimed == 0  # fired once
    assert api.get("/readyz").status_code == 200


# -- PostgreSQL down -----------------------------------------------------------


def db_calls(app, *, tenant_key: str, values: dict[str, str]) -> list[Call]:
    """One request per (route, method) of the app that needs the database."""
    adapter = app.url_map.bind("localhost")
    calls = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule in DB_FREE or rule.rule == PROBE:
            continue
        view = app.view_functions[rule.endpoint]
        op = getattr(view, "operation", None)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            path = adapter.build(
                rule.endpoint, {a: values.get(a, "x") for a in rule.arguments}, method=method
            )
            if op is not None and op.query is not None:
                required = op.query.model_json_schema().get("required", [])
                if required and rule.rule not in SAMPLE_QUERIES:
                    pytest.fail(f"{method} {rule.rule}: add a valid query to SAMPLE_QUERIES")
                path += SAMPLE_QUERIES.get(rule.rule, "") if required else ""
            body = None
            if op is not None and op.body is not None and op.body_required:
                name = op.body.__name__
                if name not in SAMPLE_BODIES:
                    pytest.fail(f"{method} {rule.rule}: add a valid {name} body to SAMPLE_BODIES")
                body = SAMPLE_BODIES[name]
            key = ADMIN_TOKEN if op is not None and op.auth == "admin" else tenant_key
            calls.append(Call(f"{method} {rule.rule}", method, path, key, body))
    return calls


@pytest.fixture
def pg_app(engine, settings, pg_proxy, apps):
    proxied = dataclasses.replace(
        settings,
        database_url=normalize_database_url(pg_proxy.url_for(os.environ["DATABASE_URL"])),
        db_connect_timeout_seconds=CONNECT_TIMEOUT_S,
        db_pool_size=POOL_SIZE,  # every route at once, each with its own connection
    )
    return apps(proxied)


def test_every_database_route_is_in_the_outage_sweep(pg_app, tenant):
    calls = db_calls(pg_app, tenant_key=tenant[1], values={"delivery_id": "1"})  # an int
    names = {c.name for c in calls}
    # A sanity floor: the sweep found the routes it is meant to find.
    assert {"POST /v1/timers", "POST /v1/timers/bulk", "GET /v1/timers/<uuid:timer_id>"} <= names
    rules = {n.split(" ", 1)[1] for n in names}
    assert not rules & (DB_FREE | {PROBE})


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_postgres_down_every_route_is_a_prompt_503_and_the_pool_recovers(
    mode, engine, tenant, other_tenant, pg_proxy, pg_app
):
    api = Client(pg_app, tenant[1])
    # Before: a timer to act on; the key is now cached and the pool holds live connections.
    timer = api.post("/v1/timers", {"lead_id": "existing", "window_seconds": 600}).get_json()
    assert api.get(f"/v1/timers/{timer['id']}").status_code == 200
    values = {"timer_id": timer["id"], "lead_id": "existing", "tenant_id": str(tenant[0])}
    values["prefix"] = "0123456789ab"  # well formed, so the route reaches the database
    values["webhook_id"] = "00000000-0000-4000-8000-000000000001"
    values["delivery_id"] = "1"
    calls = db_calls(pg_app, tenant_key=tenant[1], values=values)
    # A key this process has not cached yet needs the database to authenticate: 503, not 401.
    calls.append(Call("GET /v1/timers (uncached key)", "GET", "/v1/timers", other_tenant[1]))
    # Each request its own pooled connection, or some would queue behind the pool.
    assert len(calls) + 2 <= POOL_SIZE

    pg_proxy.down(mode)
    probes = [
        Call("GET /readyz", "GET", PROBE, api.key),
        Call("GET /healthz", "GET", "/healthz", api.key),
    ]
    *results, (_, ready, ready_s), (_, health, health_s) = run_all(api, calls + probes)
    # Refused: nothing waits. Blackholed: one connect, which gives up after its timeout.
    bound = MARGIN_S if mode == "refuse" else CONNECT_TIMEOUT_S + MARGIN_S
    slowest = max(elapsed for _, _, elapsed in results)
    report(f"slowest of {len(calls)} requests with PostgreSQL down ({mode})", slowest)
    for call, response, elapsed in results:
        assert response.status_code == 503, (call.name, response.get_data(as_text=True))
        assert_problem(response, 503)
        assert int(response.headers["Retry-After"]) > 0, call.name
        assert elapsed < bound, (call.name, elapsed)

    report(f"/readyz with PostgreSQL down ({mode})", ready_s)
    body = assert_problem(ready, 503)
    assert (body["database"], body["migrations"], body["redis"]) == ("down", "unknown", "ok")
    assert ready_s < bound
    assert health.status_code == 200 and health_s < MARGIN_S

    pg_proxy.up()
    # The same app object, no restart: the pool replaces its dead connections.
    first, elapsed = timed(
        lambda: api.post("/v1/timers", {"lead_id": "after", "window_seconds": 60})
    )
    report(f"first start after PostgreSQL is back ({mode})", elapsed)
    assert first.status_code == 201, first.get_json()
    bulk = api.post(
        "/v1/timers/bulk", {"timers": [{"lead_id": "after-bulk", "window_seconds": 60}]}
    )
    assert bulk.status_code == 201
    assert api.get("/readyz").status_code == 200
    assert api.get("/v1/timers", key=other_tenant[1]).status_code == 200

    # Nothing the outage's requests tried to write exists, and the existing timer
    # was neither cancelled nor completed.
    assert rows_for_leads(engine, tenant[0], OUTAGE_LEADS) == 0
    with engine.connect() as conn:
        tenants = conn.execute(
            text("SELECT count(*) FROM tenants WHERE name = :n"), {"n": "outage-tenant"}
        ).scalar_one()
    assert tenants == 0
    assert timer_state(engine, timer["id"]) == ("ACTIVE", 0, 1)


def _blocked_backends(engine) -> list[int]:
    with engine.connect() as conn:
        conn.execute(text("SET LOCAL ROLE NONE"))  # see every session's wait events
        return list(
            conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ).scalars()
        )


@contextmanager
def row_locked(engine, timer_id) -> Iterator[None]:
    """Hold a timer's row lock from another connection, as a long transaction would."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1 FROM sla_timers WHERE id = :id FOR UPDATE"), {"id": timer_id})
        try:
            yield
        finally:
            conn.rollback()


def test_a_bulk_start_cut_off_mid_transaction_writes_nothing(engine, tenant, pg_proxy, pg_app):
    """The connection dies while the bulk start's transaction holds inserted rows:
    503 at once, and the rows are never committed."""
    api = Client(pg_app, tenant[1])
    old = api.post("/v1/timers", {"lead_id": "locked", "window_seconds": 600}).get_json()
    body = {
        "timers": [
            {"lead_id": "mid-1", "window_seconds": 60},
            {"lead_id": "locked", "window_seconds": 60},  # supersedes old: waits for its lock
            {"lead_id": "mid-2", "window_seconds": 60},
        ]
    }
    result: dict[str, Any] = {}
    with row_locked(engine, old["id"]):
        worker = threading.Thread(
            target=lambda: result.update(response=api.post("/v1/timers/bulk", body))
        )
        worker.start()
        blocked = wait_until(lambda: _blocked_backends(engine), 10, "the bulk start to block")
        t0 = time.monotonic()
        pg_proxy.down("refuse")
        worker.join(CONNECT_TIMEOUT_S + MARGIN_S)
        elapsed = time.monotonic() - t0
        assert not worker.is_alive(), "the request hung after its connection was cut"
    report("bulk start cut mid-transaction, cut to 503", elapsed)
    assert_problem(result["response"], 503)
    assert elapsed < MARGIN_S
    # Its backend learns of the cut once the lock is free, and rolls back.
    wait_until(lambda: not set(blocked) & set(_pids(engine)), 10, "the cut backend to end")
    assert rows_for_leads(engine, tenant[0], ["mid-1", "mid-2"]) == 0
    assert timer_state(engine, old["id"]) == ("ACTIVE", 0, 1)

    pg_proxy.up()
    again = api.post("/v1/timers/bulk", body)
    assert again.status_code == 201, again.get_json()
    assert rows_for_leads(engine, tenant[0], ["mid-1", "mid-2"]) == 2
    assert timer_state(engine, old["id"])[0] == "CANCELLED"  # superseded, now that it could


def _pids(engine) -> list[int]:
    with engine.connect() as conn:
        conn.execute(text("SET LOCAL ROLE NONE"))
        return list(
            conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            ).scalars()
        )


# -- bounded waits: pool and statement timeouts -------------------------------


def test_pool_exhaustion_is_a_503_within_the_pool_timeout(engine, settings, tenant, apps):
    app = apps(settings, db_pool_size=1, db_pool_timeout_seconds=1)
    api = Client(app, tenant[1])
    assert api.get("/v1/timers").status_code == 200  # the key is cached from here on
    held = app.extensions["sla"].engine.connect()  # the only connection
    try:
        results = run_all(
            api,
            [
                Call("GET /v1/timers", "GET", "/v1/timers", api.key),
                Call(
                    "POST /v1/timers",
                    "POST",
                    "/v1/timers",
                    api.key,
                    {"lead_id": "exhausted", "window_seconds": 60},
                ),
            ],
        )
    finally:
        held.close()
    for call, response, elapsed in results:
        report(f"{call.name} with the pool exhausted (pool timeout 1 s)", elapsed)
        assert_problem(response, 503)
        assert int(response.headers["Retry-After"]) > 0
        assert 1 <= elapsed < 1 + MARGIN_S
    assert rows_for_leads(engine, tenant[0], ["exhausted"]) == 0
    assert api.post("/v1/timers", {"lead_id": "exhausted", "window_seconds": 60}).status_code == 201


def test_a_statement_blocked_by_a_lock_is_a_503_within_the_statement_timeout(
    engine, settings, tenant, apps
):
    timeout_s = 0.3
    app = apps(settings, db_statement_timeout_ms=int(timeout_s * 1000))
    api = Client(app, tenant[1])
    old = api.post("/v1/timers", {"lead_id": "locked", "window_seconds": 600}).get_json()
    supersede_in_bulk = {
        "timers": [
            {"lead_id": "st-1", "window_seconds": 60},
            {"lead_id": "locked", "window_seconds": 60},
            {"lead_id": "st-2", "window_seconds": 60},
        ]
    }
    with row_locked(engine, old["id"]):
        for what, call in (
            ("cancel", lambda: api.post(f"/v1/timers/{old['id']}/cancel")),
            ("lead complete", lambda: api.post("/v1/leads/locked/complete")),
            (
                "start superseding",
                lambda: api.post("/v1/timers", {"lead_id": "locked", "window_seconds": 60}),
            ),
            ("bulk start superseding", lambda: api.post("/v1/timers/bulk", supersede_in_bulk)),
        ):
            response, elapsed = timed(call)
            report(
                f"{what} blocked by a row lock (statement timeout {timeout_s * 1000:.0f} ms)",
                elapsed,
            )
            assert_problem(response, 503)
            assert timeout_s <= elapsed < timeout_s + MARGIN_S, what
    # Each request rolled back whole: no new timers, the old one untouched.
    assert rows_for_leads(engine, tenant[0], ["st-1", "st-2"]) == 0
    assert rows_for_leads(engine, tenant[0], ["locked"]) == 1
    assert timer_state(engine, old["id"]) == ("ACTIVE", 0, 1)
    assert api.post(f"/v1/timers/{old['id']}/cancel").status_code == 200


# -- the workers' side ---------------------------------------------------------


def test_wake_ups_that_miss_the_database_queue_one_catch_up_sweep(engine, monkeypatch):
    """Many wake-ups failing at once cost one pending sweep, not a retry storm."""
    import json

    import psycopg
    import sqlalchemy.exc

    from tasks import actors
    from tasks.broker import QUEUE

    def unreachable(**kw):
        raise sqlalchemy.exc.OperationalError(
            "SELECT 1", {}, psycopg.OperationalError("connection refused")
        )

    monkeypatch.setattr(actors, "fire_with_help", unreachable)
    wait_until(lambda: time.time() % 1 < 0.5, 2, "the first half of a second")
    for _ in range(5):
        actors.wake_up.fn()  # returns: the failure is handed to a catch-up sweep
    queued = [json.loads(m) for m in redis_conn().hvals(f"dramatiq:{QUEUE}.DQ.msgs")]
    assert len(queued) == 1
    assert queued[0]["actor_name"] == "sweep"
    assert 1000 <= queued[0]["options"]["eta"] - time.time() * 1000 <= 2000

    def bug(**kw):
        raise ValueError("not an outage")

    monkeypatch.setattr(actors, "fire_with_help", bug)
    with pytest.raises(ValueError):  # left to Dramatiq's retries, as before
        actors.wake_up.fn()
