"""Database roles: the two set-ups that keep tenants apart, and the web
process refusing to start under a role that would see every tenant.

- Two roles (a cluster where the migrating login may create roles): covered
  by tests/integration/test_tenant_isolation.py.
- Single login (a PaaS owner login, NOSUPERUSER NOCREATEROLE, owner of its
  database; here a login created for the test): ``alembic upgrade head``
  succeeds as it, the web process connects as it with both role settings
  empty, a tenant-scoped transaction sees one tenant and the maintenance
  engine all of them.
- The web process refuses to start when its effective role is a superuser,
  has BYPASSRLS, or inherits sla_maintenance; when the database is down at
  start it starts and checks on the first connection instead.

Logins and databases made here have unique names and are dropped afterwards;
the shared sla_app / sla_maintenance roles are only granted to test roles.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from models import tenants as tenant_sql
from models.config import Settings, normalize_database_url
from models.db import TenantIsolationOff, make_engine, tenant_scope
from models.sla import utcnow
from tasks.firing import fire_due
from tests.support.api import assert_problem
from tests.support.common import ROOT
from tests.support.outage_proxy import OutageProxy

TENANT_TABLES = ("tenants", "api_keys", "sla_timers", "sla_escalation_events", "outbox_events")


def _server() -> psycopg.Connection:
    return psycopg.connect(os.environ["SLA_TEST_SERVER_URL"], autocommit=True)


def _url_as(login: str, database: str | None = None) -> str:
    url = make_url(os.environ["DATABASE_URL"]).set(username=login, password=None)
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


def _alembic(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_URL": url},
    )


@pytest.fixture
def make_role() -> Iterator:
    """make_role(attributes, member_of=()) -> a new role's unique name, dropped afterwards."""
    made: list[str] = []

    def make(attributes: str, member_of: tuple[str, ...] = ()) -> str:
        name = f"sla_test_{secrets.token_hex(4)}"
        with _server() as server:
            server.execute(f"CREATE ROLE {name} {attributes}")
            made.append(name)
            for role in member_of:
                server.execute(f"GRANT {role} TO {name}")
        return name

    yield make
    with _server() as server:
        for name in made:
            server.execute(f"DROP ROLE IF EXISTS {name}")


@pytest.fixture
def owner_database(make_role) -> Iterator[tuple[str, str]]:
    """(login, URL) of a PaaS-like owner login and the database it owns, unmigrated."""
    login = make_role("LOGIN NOSUPERUSER NOCREATEROLE NOBYPASSRLS")
    database = f"{make_url(os.environ['DATABASE_URL']).database}_owner_{secrets.token_hex(3)}"
    with _server() as server:
        server.execute(f'CREATE DATABASE "{database}" OWNER {login}')
    yield login, _url_as(login, database)
    with _server() as server:
        server.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        server.execute(f"DROP OWNED BY {login}")  # grants it held elsewhere, if any


def _single_login(settings: Settings, url: str) -> Settings:
    """The settings of single-login mode on ``url``, migrated as its login."""
    migrated = _alembic(url, "upgrade", "head")
    assert migrated.returncode == 0, migrated.stderr
    return dataclasses.replace(
        settings,
        database_url=normalize_database_url(url),
        db_app_role=None,
        db_maintenance_role=None,
    )


def _counts(conn) -> dict[str, set[str]]:
    out = {}
    for table in TENANT_TABLES:
        column = "id" if table == "tenants" else "tenant_id"
        out[table] = {str(t) for t in conn.execute(text(f"SELECT {column} FROM {table}")).scalars()}
    return out


# -- single-login mode ----------------------------------------------------------


def test_an_owner_login_that_cannot_create_roles_migrates_up_and_down(owner_database):
    login, url = owner_database
    with psycopg.connect(url) as conn:
        can = conn.execute(
            "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert can == (False, False)

    up = _alembic(url, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    # 0004 down and up again as the same login.
    down = _alembic(url, "downgrade", "0003")
    assert down.returncode == 0, down.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_policies WHERE policyname LIKE 'owner_%'"
        ).fetchone() == (0,)
    again = _alembic(url, "upgrade", "head")
    assert again.returncode == 0, again.stderr
    with psycopg.connect(url) as conn:
        owners = conn.execute(
            "SELECT DISTINCT roles FROM pg_policies WHERE policyname LIKE 'owner_%'"
        ).fetchall()
    assert owners == [([login],)]


def _assert_single_login_isolation(single: Settings) -> None:
    """The web app (a plain owner passes its start-up check) sees one tenant per
    transaction; an engine made as the workers make theirs sees every tenant."""
    from web import create_app

    app = create_app(single)
    web = app.extensions["sla"].engine
    maintenance = make_engine(single, role=None, all_tenants=True, pool_size=2)
    try:
        with maintenance.begin() as conn:
            a, key_a = tenant_sql.create_tenant(conn, "acme")
        with maintenance.begin() as conn:
            b, _ = tenant_sql.create_tenant(conn, "globex")
        started = app.test_client().post(
            "/v1/timers",
            json={"lead_id": "lead-a", "window_seconds": 60},
            headers={"Authorization": f"Bearer {key_a}"},
        )
        assert started.status_code == 201, started.get_json()

        with tenant_scope(web, a) as conn:
            owner = conn.execute(text("SELECT current_user")).scalar_one()
            assert owner == make_url(single.database_url).username
            scoped = _counts(conn)
        assert all(tenants <= {str(a)} for tenants in scoped.values()), scoped
        assert scoped["tenants"] == {str(a)} and scoped["sla_timers"] == {str(a)}
        with web.connect() as conn:  # outside a scope: nothing
            assert all(not tenants for tenants in _counts(conn).values())
        with pytest.raises(ProgrammingError, match="row-level security"):  # noqa: SIM117
            with tenant_scope(web, a) as conn:
                conn.execute(text("UPDATE sla_timers SET tenant_id = :b"), {"b": b})

        with maintenance.connect() as conn:
            everything = _counts(conn)
        assert everything["tenants"] == {str(a), str(b)}
        assert everything["api_keys"] == {str(a), str(b)}
        # The firing routine, as a worker runs it, writes across tenants.
        fired = fire_due(maintenance, single, now=lambda: utcnow() + timedelta(minutes=2))
        assert fired.claimed == 1
        with tenant_scope(web, a) as conn:
            events = conn.execute(text("SELECT event_type FROM outbox_events")).scalars()
            assert "sla.timer.due" in set(events)
    finally:
        maintenance.dispose()
        web.dispose()
        app.extensions["sla"].api_keys.close()


def test_single_login_mode_scopes_web_transactions_and_lets_maintenance_see_all(
    owner_database, settings
):
    """On this cluster sla_app and sla_maintenance exist, but the owner may not grant them."""
    _, url = owner_database
    _assert_single_login_isolation(_single_login(settings, url))


def test_single_login_mode_on_a_cluster_without_the_roles(settings):
    """A fresh cluster, as a PaaS gives one: the roles do not exist and the owner
    may not create them. The release phase succeeds and isolation holds."""
    services = _ci_services()
    data = Path(tempfile.mkdtemp(prefix="sla-test-single-login-"))
    data.chmod(0o755)  # the server may run as another user (nobody, under root)
    port = _free_port()
    try:
        server_url = services.start_pg(data / "pg", port)
        login = f"sla_test_owner_{secrets.token_hex(4)}"
        with psycopg.connect(server_url, autocommit=True) as server:
            server.execute(f"CREATE ROLE {login} LOGIN NOSUPERUSER NOCREATEROLE NOBYPASSRLS")
            server.execute(f"CREATE DATABASE app OWNER {login}")
        url = make_url(server_url).set(username=login, database="app")
        single = _single_login(settings, url.render_as_string(hide_password=False))
        with psycopg.connect(server_url) as server:
            roles = server.execute(
                "SELECT count(*) FROM pg_roles WHERE rolname IN ('sla_app', 'sla_maintenance')"
            ).fetchone()
        assert roles == (0,)
        _assert_single_login_isolation(single)
    finally:
        services.stop_pg(data / "pg", "immediate")
        shutil.rmtree(data, ignore_errors=True)


def _ci_services():
    """The embedded servers (devtools/services.py)."""
    from devtools import services

    return services


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_workers_engine_marks_its_sessions_all_tenants(engine):
    from models.db import get_maintenance_engine

    with get_maintenance_engine().connect() as conn:
        setting = conn.execute(text("SELECT current_setting('app.all_tenants', true)"))
        assert setting.scalar_one() == "on"


# -- refusing to start ------------------------------------------------------------


def test_the_web_app_refuses_to_start_as_a_superuser(engine, settings):
    """The default login, postgres, with SLA_DB_APP_ROLE empty."""
    from web import create_app

    with pytest.raises(TenantIsolationOff) as refused:
        create_app(dataclasses.replace(settings, db_app_role=None))
    message = str(refused.value)
    assert "\n" not in message
    assert "'postgres' is a superuser" in message
    assert "SLA_DB_APP_ROLE is empty" in message and "set SLA_DB_APP_ROLE=sla_app" in message


def test_the_web_app_refuses_to_start_as_a_role_with_bypassrls(engine, settings, make_role):
    from web import create_app

    role = make_role("NOLOGIN BYPASSRLS")  # the postgres login may switch to any role
    with pytest.raises(TenantIsolationOff, match=f"'{role}' has BYPASSRLS"):
        create_app(dataclasses.replace(settings, db_app_role=role))


def test_a_login_member_of_both_roles_sees_every_tenant_and_is_refused(
    engine, settings, tenant, other_tenant, make_role
):
    """The issue's case: SLA_DB_APP_ROLE empty, a login inheriting sla_app and
    sla_maintenance. The maintenance policy applies, so a tenant-scoped
    transaction sees the other tenant; the app refuses to start."""
    from web import create_app

    login = make_role("LOGIN INHERIT", member_of=("sla_app", "sla_maintenance"))
    as_login = dataclasses.replace(
        settings, database_url=normalize_database_url(_url_as(login)), db_app_role=None
    )
    leaky = make_engine(as_login, role=None, pool_size=1)
    try:
        with tenant_scope(leaky, tenant[0]) as conn:
            seen = set(conn.execute(text("SELECT id FROM tenants")).scalars())
        assert seen == {tenant[0], other_tenant[0]}  # what the check prevents
    finally:
        leaky.dispose()

    with pytest.raises(TenantIsolationOff, match=f"'{login}' inherits sla_maintenance"):
        create_app(as_login)

    # The same login switching to sla_app: its own grant of sla_maintenance does
    # not reach sla_app, so the check passes and one tenant is visible.
    app = create_app(dataclasses.replace(as_login, db_app_role="sla_app"))
    with tenant_scope(app.extensions["sla"].engine, tenant[0]) as conn:
        assert set(conn.execute(text("SELECT id FROM tenants")).scalars()) == {tenant[0]}
    app.extensions["sla"].engine.dispose()


def test_a_noinherit_member_of_sla_maintenance_may_start(engine, settings, tenant, make_role):
    """What PostgreSQL reports for a NOINHERIT member: MEMBER but not USAGE, and
    policies follow USAGE, so the maintenance policy does not apply to it and
    the check (which asks for USAGE) lets it start. It sees no tenant at all."""
    from web import create_app

    login = make_role("LOGIN NOINHERIT", member_of=("sla_maintenance",))
    app = create_app(
        dataclasses.replace(
            settings, database_url=normalize_database_url(_url_as(login)), db_app_role=None
        )
    )
    web = app.extensions["sla"].engine
    try:
        with web.connect() as conn:
            member, usage = conn.execute(
                text(
                    "SELECT pg_has_role(current_user, 'sla_maintenance', 'MEMBER'), "
                    "pg_has_role(current_user, 'sla_maintenance', 'USAGE')"
                )
            ).one()
        assert (member, usage) == (True, False)
        with pytest.raises(ProgrammingError, match="permission denied"):  # noqa: SIM117
            with tenant_scope(web, tenant[0]) as conn:
                conn.execute(text("SELECT id FROM tenants"))
    finally:
        web.dispose()


def test_a_database_down_at_start_defers_the_check_to_the_first_connection(engine, settings):
    from web import create_app

    with OutageProxy.for_url(os.environ["DATABASE_URL"]) as proxy:
        proxy.down("refuse")
        app = create_app(
            dataclasses.replace(
                settings,
                database_url=normalize_database_url(proxy.url_for(os.environ["DATABASE_URL"])),
                db_app_role=None,  # the superuser login: unsafe
                db_connect_timeout_seconds=2,
            )
        )
        client = app.test_client()
        body = assert_problem(client.get("/readyz"), 503)
        assert body["database"] == "down"

        proxy.up()
        ready = client.get("/readyz")
        body = assert_problem(ready, 503)
        assert body["database"] == "isolation-off"
        assert "is a superuser" in body["detail"]
        refused = client.get("/v1/timers", headers={"Authorization": "Bearer sla_0123456789ab_x"})
        body = assert_problem(refused, 503)
        assert body["type"].endswith("tenant-isolation-off")
        app.extensions["sla"].engine.dispose()
