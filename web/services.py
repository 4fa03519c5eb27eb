"""The app's services, and the one way a view reaches them.

``create_app`` builds one ``Services`` per app and stores it in
``app.extensions``; views, the CLI and the auth hooks ask ``services()``, in
the style of Flask's tutorial ``get_db()``, instead of digging in
``current_app.extensions`` themselves.

Engines are per process: an app whose settings name the process's database
and pool shares the process-wide engine (``models.db.get_engine``); other
settings get one engine per distinct database and pool, however many equal
``Settings`` objects ask.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
from flask import Flask, current_app
from sqlalchemy import Engine

from models.config import Settings, get_settings
from models.db import get_engine, make_engine

if TYPE_CHECKING:
    from .auth import ApiKeyCache
    from .health import SchemaHeads
    from .ratelimit import TenantRateLimit
    from .start_groups import StartGroups

EXTENSION = "sla"


@dataclass(frozen=True)
class Services:
    settings: Settings
    engine: Engine
    probe_redis: redis.Redis  # readiness only: timeouts a probe can afford
    api_keys: ApiKeyCache
    rate_limit: TenantRateLimit | None
    schema_heads: SchemaHeads  # the code's alembic head, read once
    start_groups: StartGroups  # single starts sharing a statement


def services(app: Flask | None = None) -> Services:
    """The services of ``app`` (default: the current app)."""
    return (app or current_app).extensions[EXTENSION]


def install(app: Flask, found: Services) -> None:
    app.extensions[EXTENSION] = found


def _engine_key(s: Settings) -> tuple:
    """Everything ``make_engine`` reads from the settings for the web engine."""
    return (
        s.database_url,
        s.db_pool_size,
        s.db_pool_timeout_seconds,
        s.db_connect_timeout_seconds,
        s.db_statement_timeout_ms,
        s.db_app_role,
    )


_engines: dict[tuple, Engine] = {}
_engines_lock = threading.Lock()


def engine_for(settings: Settings) -> Engine:
    """The process-wide engine, unless these settings name another database or
    pool: then one engine per such key (cached on the key alone, so two equal
    settings objects share a pool)."""
    key = _engine_key(settings)
    if key == _engine_key(get_settings()):
        return get_engine()
    with _engines_lock:
        if key not in _engines:
            _engines[key] = make_engine(settings, role=settings.db_app_role)
        return _engines[key]
