"""Engine construction: one bounded connection pool per process."""

from __future__ import annotations

from functools import cache

import orjson
from psycopg.types.json import set_json_loads
from sqlalchemy import Engine, create_engine

from .config import Settings, get_settings

# The firing path reads a JSON ladder per claimed timer: parse it with orjson.
set_json_loads(orjson.loads)


def make_engine(settings: Settings, *, pool_size: int | None = None) -> Engine:
    return create_engine(
        settings.database_url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_pre_ping=True,
        # Connections die with a database restart; recycle keeps long-lived workers healthy.
        pool_recycle=1800,
        connect_args={
            "connect_timeout": settings.db_connect_timeout_seconds,
            "options": f"-c statement_timeout={settings.db_statement_timeout_ms}",
            "application_name": "sla-timers",
        },
    )


@cache
def get_engine() -> Engine:
    return make_engine(get_settings())
