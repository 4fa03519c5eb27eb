"""Engine construction: one bounded connection pool per process."""

from __future__ import annotations

import select
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from uuid import UUID

import orjson
from psycopg.types.json import set_json_loads
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError

from .config import Settings, get_settings
from .repository import enter_tenant

# The firing path reads a JSON ladder per claimed timer: parse it with orjson.
set_json_loads(orjson.loads)


def _quiet(dbapi_connection) -> bool:
    """True if a pooled connection looks usable without a round trip.

    An idle connection has nothing to read: when its socket is readable, the
    server closed it (a restart, a terminated backend) or sent something
    unexpected, and only then is it worth a ping.
    """
    if dbapi_connection.closed or dbapi_connection.broken:
        return False
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return not poller.poll(0)


def make_engine(settings: Settings, *, role: str | None, pool_size: int | None = None) -> Engine:
    """An engine whose sessions act as ``role`` (None: the role the URL logs in as).

    The role is set at connection start-up (``-c role=...``), before any query,
    so every statement on these connections is subject to that role's
    row-level security policies. Migrations use the login role, which owns
    the tables; the service never does.
    """
    options = f"-c statement_timeout={settings.db_statement_timeout_ms}"
    if role is not None:
        options += f" -c role={role}"
    engine = create_engine(
        settings.database_url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=0,
        pool_timeout=settings.db_pool_timeout_seconds,
        # Connections die with a database restart; recycle keeps long-lived workers healthy.
        pool_recycle=1800,
        connect_args={
            "connect_timeout": settings.db_connect_timeout_seconds,
            "options": options,
            "application_name": "sla-timers",
            # A partition can leave a connection open but silent, and a client
            # waiting for an answer has no timeout of its own. Keepalives notice
            # a silent peer within ~25 s and tcp_user_timeout unacknowledged
            # sends within 30 s, so such a request still ends (in a 503).
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": 30_000,
        },
    )

    # Instead of pool_pre_ping, whose SELECT 1 on every checkout costs about
    # as much CPU as a start's own statement: ping only a connection whose
    # socket says something happened to it. A dead one is replaced before use.
    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection, connection_record, connection_proxy) -> None:
        if _quiet(dbapi_connection):
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"pooled connection is dead: {exc}") from exc

    return engine


@cache
def get_engine() -> Engine:
    """The API's engine: its role sees one tenant per transaction (``tenant_scope``)."""
    settings = get_settings()
    return make_engine(settings, role=settings.db_app_role)


@cache
def get_maintenance_engine() -> Engine:
    """Workers' engine: sweeping and firing span all tenants, and only this role may."""
    settings = get_settings()
    return make_engine(settings, role=settings.db_maintenance_role)


@contextmanager
def tenant_scope(engine: Engine, tenant_id: UUID) -> Iterator[Connection]:
    """A transaction that sees only ``tenant_id``'s rows.

    The row-level security policies read ``app.tenant_id``; set with
    ``is_local`` it ends with the transaction, so a pooled connection never
    carries one tenant's scope into another's request.
    """
    with engine.begin() as conn:
        enter_tenant(conn, tenant_id)
        yield conn
