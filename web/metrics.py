"""``GET /metrics``: the Prometheus exposition (docs/metrics.md).

Served beside the Flask app, as prometheus-client's WSGI app mounted at
``/metrics`` (like the Dramatiq dashboard): it is not part of the API, its
OpenAPI document or its tenant authentication, and it keeps answering while
PostgreSQL or Redis is down, when it matters most.

A scrape returns:

- every counter and histogram of every process that shares this host's
  multiprocess directory (models/metrics.py): gunicorn's workers, Dramatiq's
  worker processes and the scheduler; without a directory, this process's own;
- the state, read when scraped and reused for ``SLA_METRICS_CACHE_SECONDS``
  (one statement, models/sql/metrics.sql, plus three Redis commands): timers
  active, paused and overdue, the oldest overdue one's age, pending webhook
  deliveries, the queue's depth, and whether the database and Redis answered.
  The state is the same whichever web process answers: aggregate it with
  ``max``, not ``sum``.

Access: open, unless ``SLA_METRICS_TOKEN`` is set; then ``Authorization:
Bearer <token>`` (Prometheus's ``authorization`` scrape setting) is required,
and anything else is a 401 problem. The exposition carries counts only, never a
tenant, a lead or a key; the admin token is not accepted, so Prometheus never
holds a credential that can create tenants.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import redis
from flask import Flask
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import Engine

from models import metrics
from models.config import Settings
from models.db import make_engine

from . import problems
from .auth import bearer_token_of, token_matches

PATH = "/metrics"

# The state gauges: (name, help, key of models.metrics.read_state's result).
STATE_GAUGES = [
    ("sla_timers_active", "Open timers not paused (ACTIVE, DUE, ESCALATED).", "active"),
    ("sla_timers_paused", "Paused timers.", "paused"),
    (
        "sla_timers_overdue",
        "Timers whose next fire time has passed but which the firing path has "
        "not processed yet (the firing backlog).",
        "overdue",
    ),
    (
        "sla_timers_oldest_overdue_seconds",
        "How long ago the oldest overdue timer was due to fire (0: none).",
        "oldest_overdue_seconds",
    ),
    (
        "sla_webhook_deliveries_pending",
        "Webhook deliveries waiting to be sent or retried.",
        "deliveries_pending",
    ),
]
# Every other name the state adds.
STATE_OTHERS = (
    "sla_queue_messages",
    "sla_metrics_database_up",
    "sla_metrics_redis_up",
    "sla_metrics_state_age_seconds",
)


class StateCollector:
    """The state gauges, read at most once per ``cache_seconds`` (and by one
    scrape at a time: concurrent scrapes share the read)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache_seconds = settings.metrics_cache_seconds
        self._engine: Engine | None = None
        self._redis: redis.Redis | None = None
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {}
        self._read_at: float | None = None

    def _sources(self) -> tuple[Engine, redis.Redis]:
        if self._engine is None:
            # Counting every tenant's timers needs the maintenance role; one
            # connection, for this one statement.
            self._engine = make_engine(
                self.settings,
                role=self.settings.db_maintenance_role,
                pool_size=1,
                all_tenants=True,
            )
            timeout = self.settings.redis_timeout_seconds
            self._redis = redis.Redis.from_url(
                self.settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        assert self._redis is not None
        return self._engine, self._redis

    def state(self) -> tuple[dict[str, Any], float]:
        with self._lock:
            now = time.monotonic()
            if self._read_at is None or now - self._read_at >= self.cache_seconds:
                engine, client = self._sources()
                self._state = metrics.read_state(engine, self.settings.queue, client)
                self._read_at = time.monotonic()
            return self._state, time.monotonic() - self._read_at

    def collect(self):
        state, age = self.state()
        for name, doc, key in STATE_GAUGES:
            if key in state:
                yield GaugeMetricFamily(name, doc, value=float(state[key]))
        if "queue" in state:
            depth = GaugeMetricFamily(
                "sla_queue_messages",
                "Messages in Redis for the service's Dramatiq queue: ready, delayed "
                "(wake-ups not yet due) and dead (dead-lettered by Dramatiq).",
                labels=["queue", "state"],
            )
            for kind, n in state["queue"].items():
                depth.add_metric([self.settings.queue, kind], float(n))
            yield depth
        for name, doc, key in (
            (
                "sla_metrics_database_up",
                "Whether the database answered.",
                "database_up",
            ),
            ("sla_metrics_redis_up", "Whether Redis answered.", "redis_up"),
        ):
            yield GaugeMetricFamily(name, doc, value=float(state.get(key, 0)))
        yield GaugeMetricFamily(
            "sla_metrics_state_age_seconds", "Age of the state gauges (cached).", value=age
        )


class _Counted:
    """The counters and histograms: the multiprocess directory, else this process's."""

    def collect(self):
        if metrics.MULTIPROCESS:
            from prometheus_client.multiprocess import MultiProcessCollector

            yield from MultiProcessCollector(None, metrics.MULTIPROCESS_DIR).collect()
        else:
            from prometheus_client import REGISTRY

            yield from metrics.REGISTRY.collect()
            yield from REGISTRY.collect()  # the process's own: CPU, memory, GC


class MetricsApp:
    """The WSGI app at ``/metrics``: the token check, then the exposition."""

    def __init__(self, settings: Settings) -> None:
        self.token = settings.metrics_token
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Counted())
        registry.register(StateCollector(settings))
        self.exposition = make_wsgi_app(registry)

    def __call__(self, environ, start_response):
        if self.token is not None:
            candidate = bearer_token_of(environ.get("HTTP_AUTHORIZATION", ""))
            if not token_matches(candidate, self.token):
                body = json.dumps(
                    {
                        "type": "about:blank",
                        "title": "Unauthorized",
                        "status": 401,
                        "detail": "the metrics token is required (Authorization: Bearer)",
                        "instance": PATH,
                    }
                ).encode()
                start_response(
                    "401 Unauthorized",
                    [
                        ("Content-Type", problems.PROBLEM_JSON),
                        ("Content-Length", str(len(body))),
                        ("WWW-Authenticate", 'Bearer realm="metrics"'),
                    ],
                )
                return [body]
        return self.exposition(environ, start_response)


def mount(app: Flask, settings: Settings) -> None:
    """Serve ``/metrics`` beside ``app`` (``create_app`` calls this)."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {PATH: MetricsApp(settings)}
    )
