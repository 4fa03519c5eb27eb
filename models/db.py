"""Engine construction: one bounded connection pool per process, and the
guard that keeps the web process from serving under a role that sees every
tenant.

Two set-ups keep tenants apart (README, "Database roles"):

- two roles: the web engine switches to ``SLA_DB_APP_ROLE`` (``sla_app``),
  workers to ``SLA_DB_MAINTENANCE_ROLE`` (``sla_maintenance``);
- single login (a PaaS owner login that cannot create roles): both roles are
  empty and every engine is the owner; the maintenance engine alone starts
  its sessions with ``app.all_tenants = on``, which the owner's policies
  (migration 0004) require to show every tenant.
"""

from __future__ import annotations

import logging
import select
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from uuid import UUID

import orjson
from psycopg.types.json import set_json_loads
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError

from .config import Settings, get_settings
from .tenants import enter_tenant

log = logging.getLogger(__name__)

# The firing path reads a JSON ladder per claimed timer: parse it with orjson.
set_json_loads(orjson.loads)

# Session setting of the maintenance engine; in single-login mode the owner's
# policies show every tenant only where it is on (migration 0004).
ALL_TENANTS = "app.all_tenants"


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


def make_engine(
    settings: Settings,
    *,
    role: str | None,
    pool_size: int | None = None,
    all_tenants: bool = False,
) -> Engine:
    """An engine whose sessions act as ``role`` (None: the role the URL logs in as).

    The role is set at connection start-up (``-c role=...``), before any query,
    so every statement on these connections is subject to that role's
    row-level security policies. Migrations use the login role, which owns
    the tables; with two roles the service never does. ``all_tenants`` marks
    the sessions of the maintenance engine (see ``ALL_TENANTS``).
    """
    # jit=off: the service's statements are short, and a claim's estimated cost
    # (lateral joins over a backlog) crossed jit_above_cost, making PostgreSQL
    # compile it for ~40 ms to run it in ~2 ms.
    options = f"-c statement_timeout={settings.db_statement_timeout_ms} -c jit=off"
    if role is not None:
        options += f" -c role={role}"
    if all_tenants:
        options += f" -c {ALL_TENANTS}=on"
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
    return make_engine(settings, role=settings.db_maintenance_role, all_tenants=True)


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


# ------------------------------------------------------------ the web role's guard


class TenantIsolationOff(RuntimeError):
    """The web process's effective database role would see more than one tenant."""


@dataclass(frozen=True)
class RoleFacts:
    """What PostgreSQL reports about a session's effective role (``current_user``)."""

    role: str
    superuser: bool
    bypass_rls: bool
    # Maintenance roles whose privileges, and so whose policies, it inherits.
    maintenance: tuple[str, ...]
    all_tenants: bool


def isolation_problem(facts: RoleFacts, configured_role: str | None) -> str | None:
    """One line naming why ``facts`` break tenant isolation and how to fix it; None if not."""
    causes = []
    if facts.superuser:
        # Which also implies the rest: a superuser is a member of every role.
        causes.append("is a superuser, which row-level security does not apply to")
    elif facts.bypass_rls:
        causes.append("has BYPASSRLS")
    if facts.maintenance and not facts.superuser:
        causes.append(f"inherits {', '.join(facts.maintenance)}, whose policies show every tenant")
    if facts.all_tenants:
        causes.append(f"starts its sessions with {ALL_TENANTS}=on, the maintenance setting")
    if not causes:
        return None
    if configured_role is None:
        source = "SLA_DB_APP_ROLE is empty, so the web process acts as the login"
        fix = (
            "set SLA_DB_APP_ROLE=sla_app (two roles), or connect as a login that is none of "
            "these, e.g. the database's owner in single-login mode"
        )
    else:
        source = f"SLA_DB_APP_ROLE={configured_role}"
        fix = "point SLA_DB_APP_ROLE at a role that is none of these (sla_app)"
    return (
        f"refusing to serve: tenant isolation is off, the web process's database role "
        f"{facts.role!r} {' and '.join(causes)} ({source}); {fix}; see README, Database roles"
    )


# pg_has_role(..., 'USAGE'): the privileges, and so the policies, the role
# inherits (what row-level security applies); a NOINHERIT member reports
# MEMBER but gets none of them. Names that are not roles are skipped rather
# than raising, so the check works where the roles were never created.
_ROLE_FACTS = f"""
    SELECT current_user::text, r.rolsuper, r.rolbypassrls,
           ARRAY(SELECT m.rolname::text FROM pg_roles m
                 WHERE m.rolname = ANY(%s) AND pg_has_role(current_user, m.oid, 'USAGE')
                 ORDER BY 1),
           coalesce(current_setting('{ALL_TENANTS}', true), '') = 'on'
    FROM pg_roles r WHERE r.rolname = current_user
"""


def role_facts(dbapi_connection, maintenance_roles: Iterable[str]) -> RoleFacts:
    """Ask PostgreSQL about the effective role of a raw (psycopg) connection."""
    try:
        with dbapi_connection.cursor() as cur:
            cur.execute(_ROLE_FACTS, (sorted(set(maintenance_roles)),))
            role, superuser, bypass_rls, maintenance, all_tenants = cur.fetchone()
    finally:
        dbapi_connection.rollback()  # leave the connection as the pool expects it
    return RoleFacts(role, superuser, bypass_rls, tuple(maintenance), all_tenants)


class WebRoleGuard:
    """Checks the web engine's effective role before it serves anything.

    ``verify()`` runs the check at once (``create_app`` calls it, so a bad
    configuration stops the process from starting). A database that does not
    answer at start must not keep the process from starting and answering
    503s, so the check also runs on each new connection of the pool until one
    passes: until then no connection of this engine is ever handed out.
    """

    def __init__(
        self, engine: Engine, configured_role: str | None, maintenance_roles: Iterable[str]
    ) -> None:
        self.engine = engine
        self.configured_role = configured_role
        self.maintenance_roles = tuple(maintenance_roles)
        self.verified = False
        event.listen(engine, "connect", self._on_connect)

    def _check(self, dbapi_connection) -> None:
        problem = isolation_problem(
            role_facts(dbapi_connection, self.maintenance_roles), self.configured_role
        )
        if problem is not None:
            log.critical("%s", problem)
            raise TenantIsolationOff(problem)
        self.verified = True

    def _on_connect(self, dbapi_connection, connection_record) -> None:
        if not self.verified:
            self._check(dbapi_connection)

    def verify(self) -> None:
        """Raise ``TenantIsolationOff`` if the role is unsafe, or the database's
        own error if it cannot be reached (the check then waits for a connection)."""
        if self.verified:
            return
        with self.engine.connect() as conn:
            if not self.verified:  # a pooled connection made before the guard
                self._check(conn.connection.dbapi_connection)


_GUARDS: weakref.WeakKeyDictionary[Engine, WebRoleGuard] = weakref.WeakKeyDictionary()


def web_role_guard(engine: Engine, settings: Settings) -> WebRoleGuard:
    """The guard of a web engine (one per engine, however many apps share it)."""
    guard = _GUARDS.get(engine)
    if guard is None:
        maintenance = {"sla_maintenance"}
        if settings.db_maintenance_role is not None:
            maintenance.add(settings.db_maintenance_role)
        guard = _GUARDS[engine] = WebRoleGuard(engine, settings.db_app_role, maintenance)
    return guard
