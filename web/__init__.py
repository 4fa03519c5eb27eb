"""The HTTP API: ``create_app()`` wires settings, the database, error handling,
routes, the ``tenants`` CLI and the (admin-only) Dramatiq dashboard.

Run it with ``flask --app web run`` or ``gunicorn 'web:create_app()'``.

``create_app`` refuses to start (``TenantIsolationOff``, one line naming the
cause and the fix) when the web engine's effective database role would see
every tenant. If the database does not answer at start, the app starts
anyway, answers 503s, and checks on the pool's first connection instead
(``models.db.WebRoleGuard``).
"""

from __future__ import annotations

import json
import logging

import click
import redis
from flask import Flask
from sqlalchemy import Engine

from models.config import Settings, get_settings
from models.db import TenantIsolationOff, web_role_guard
from models.errors import is_outage

from . import cli, problems
from .admin import bp as admin_bp
from .auth import ApiKeyCache, basic_password, bearer_token_of, token_matches
from .contracts import bp as contracts_bp
from .docs import bp as docs_bp
from .events import bp as events_bp
from .health import REDIS_PROBE_TIMEOUT_MS, schema_heads
from .health import bp as health_bp
from .lead_events import bp as lead_events_bp
from .logs import Correlation
from .metrics import mount as mount_metrics
from .openapi import bp as openapi_bp
from .pauses import bp as pauses_bp
from .ratelimit import TenantRateLimit
from .reports import bp as reports_bp
from .services import Services, engine_for, install
from .start_groups import StartGroups
from .timers import bp as timers_bp
from .ui import bp as ui_bp
from .webhooks import bp as webhooks_bp

DASHBOARD_PREFIX = "/dramatiq"

log = logging.getLogger(__name__)


class AdminOnly:
    """WSGI guard for the dashboard, which has no authentication of its own.
    Accepts ``Bearer <token>`` or HTTP Basic with the token as password (any
    user name), so a browser can open it."""

    def __init__(self, app, token: str) -> None:
        self.app = app
        self.token = token

    def __call__(self, environ, start_response):
        authorization = environ.get("HTTP_AUTHORIZATION", "")
        candidate = bearer_token_of(authorization) or basic_password(authorization)
        if not token_matches(candidate, self.token):
            body = json.dumps(
                {
                    "type": "about:blank",
                    "title": "Unauthorized",
                    "status": 401,
                    "detail": "the admin token is required (Bearer, or Basic as the password)",
                    "instance": environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
                }
            ).encode()
            start_response(
                "401 Unauthorized",
                [
                    ("Content-Type", problems.PROBLEM_JSON),
                    ("Content-Length", str(len(body))),
                    ("WWW-Authenticate", 'Basic realm="dramatiq", charset="UTF-8"'),
                ],
            )
            return [body]
        if not environ.get("PATH_INFO"):
            # The dashboard only routes paths below its prefix.
            start_response("308 Permanent Redirect", [("Location", DASHBOARD_PREFIX + "/")])
            return [b""]
        return self.app(environ, start_response)


def _mount_dashboard(app: Flask, token: str) -> None:
    from dramatiq_dashboard import DashboardApp
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from tasks.broker import broker

    dashboard = DashboardApp(broker=broker, prefix=DASHBOARD_PREFIX)
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {DASHBOARD_PREFIX: AdminOnly(dashboard, token)}
    )


def _probe_redis(settings: Settings) -> redis.Redis:
    timeout = min(settings.redis_timeout_seconds, REDIS_PROBE_TIMEOUT_MS / 1000)
    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )


def _check_web_role(engine: Engine, settings: Settings) -> None:
    """Refuse to start under a role that sees every tenant; defer if the database is down."""
    try:
        web_role_guard(engine, settings).verify()
    except Exception as exc:
        if not is_outage(exc):
            raise
        if click.get_current_context(silent=True) is not None:
            return  # a CLI command: its own one-line error says it, if it needs the database
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [repr(exc)]
        log.warning(
            "database unreachable at start (%s): the web role is checked on its first connection",
            reason[0],
        )


def _isolation_off(exc: TenantIsolationOff):
    # Found on the first connection after a start without the database: the
    # process stays up but serves nothing (and /readyz says why).
    return problems.problem_response(
        503,
        str(exc),
        type_=problems.problem_type("tenant-isolation-off"),
        headers={"Retry-After": str(problems.RETRY_AFTER_SECONDS)},
    )


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    engine = engine_for(settings)
    _check_web_role(engine, settings)
    app = Flask(__name__, static_folder=None)
    # Werkzeug answers 413 past this, also for chunked bodies without a length.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    install(
        app,
        Services(
            settings,
            engine,
            _probe_redis(settings),
            ApiKeyCache(
                settings.api_key_cache_seconds, settings.redis_url, settings.redis_timeout_seconds
            ),
            TenantRateLimit(settings.rate_limit, settings.redis_url, settings.redis_timeout_seconds)
            if settings.rate_limit
            else None,
            schema_heads(),
            StartGroups(settings.start_group_max),
        ),
    )

    problems.register(app)
    app.register_error_handler(TenantIsolationOff, _isolation_off)
    for blueprint in (timers_bp, events_bp, webhooks_bp, admin_bp, health_bp, openapi_bp):
        app.register_blueprint(blueprint)
    app.register_blueprint(lead_events_bp)
    app.register_blueprint(reports_bp)
    app.register_blueprint(pauses_bp)
    app.register_blueprint(contracts_bp)
    app.register_blueprint(docs_bp)
    app.register_blueprint(ui_bp)
    cli.register(app)  # tenants, keys, timers, events, db

    mount_metrics(app, settings)  # GET /metrics (web/metrics.py)
    # No token, no dashboard: it can delete and requeue messages.
    if settings.admin_token:
        _mount_dashboard(app, settings.admin_token)
    # Outermost: every answer, the dashboard's too, echoes the request's ids.
    app.wsgi_app = Correlation(app.wsgi_app)  # type: ignore[method-assign]
    return app
