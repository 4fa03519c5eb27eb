"""Test services: a real PostgreSQL and a real Redis.

The tests use ``DATABASE_URL`` and ``REDIS_URL`` when set, and otherwise start
the embedded ones (``.ci/services.py``). They never write to the database the
URL names: they create (and recreate) a dedicated database beside it,
``SLA_TEST_DATABASE`` (default ``sla_test``), and migrate it with alembic. The
Redis database the URL names is flushed between tests.

Tiers: ``tests/unit`` (no I/O), ``tests/integration`` (PostgreSQL + Redis,
in-process), ``tests/acceptance`` (real worker and scheduler processes).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent


def _embedded_services() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "services.py"), "env"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            found[name] = shlex.split(value)[0]
    return found


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run long chaos and fuzz tests")


def pytest_configure(config: pytest.Config) -> None:
    if not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
        os.environ.update(_embedded_services())
    server = make_url(os.environ["DATABASE_URL"].replace("postgres://", "postgresql://", 1)).set(
        drivername="postgresql"
    )
    test_db = os.environ.get("SLA_TEST_DATABASE", "sla_test")
    os.environ["SLA_TEST_SERVER_URL"] = server.render_as_string(hide_password=False)
    os.environ["DATABASE_URL"] = server.set(database=test_db).render_as_string(hide_password=False)
    # Quick retries and small batches, so failure paths and batching show in small tests.
    os.environ.setdefault("SLA_BACKOFF_BASE_SECONDS", "1")
    os.environ.setdefault("SLA_BACKOFF_MAX_SECONDS", "4")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _create_database() -> None:
    server = make_url(os.environ["SLA_TEST_SERVER_URL"])
    test_db = make_url(os.environ["DATABASE_URL"]).database
    admin = server.set(database=server.database or "postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{test_db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{test_db}"')
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="session")
def database():
    """The migrated test database (created once per session)."""
    _create_database()
    from models.config import get_settings
    from models.db import make_engine

    # The tests' own engine acts as the maintenance role, like the workers: it
    # sees every tenant. The API's engine (sla_app) is scoped per transaction.
    engine = make_engine(get_settings(), role=get_settings().db_maintenance_role)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def settings():
    from models.config import get_settings

    return get_settings()


@pytest.fixture
def engine(database):
    """A clean database and Redis for one test."""
    with database.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE NONE")  # TRUNCATE is the owner's
        conn.exec_driver_sql(
            "TRUNCATE outbox_events, sla_escalation_events, sla_timers, api_keys, tenants "
            "RESTART IDENTITY CASCADE"
        )
    redis_conn().flushdb()
    return database


def wait_until(predicate, timeout: float, what: str, *, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def redis_conn():
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"])


@pytest.fixture
def tenant(engine):
    """(tenant_id, api_key) of a fresh tenant."""
    from models import repository as repo

    with engine.begin() as conn:
        return repo.create_tenant(conn, "acme")


@pytest.fixture
def other_tenant(engine):
    from models import repository as repo

    with engine.begin() as conn:
        return repo.create_tenant(conn, "globex")
