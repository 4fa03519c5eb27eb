"""The service tiers' shared fixtures (tests/integration and tests/acceptance):
the migrated test database, a clean database and Redis per test, the settings
and tenants.

tests/conftest.py registers this module as a plugin, so both tiers share one
session database; the unit tier never asks for these fixtures, and nothing
here runs until a test does. ``services`` (tests/conftest.py) has pointed
``DATABASE_URL`` at the test database by then.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy.engine import make_url

from devtools import processes
from tests.support import attempt_log
from tests.support.common import redis_conn


def create_database() -> None:
    """Drop and recreate the test database beside the server's, and migrate it."""
    processes.create_database(
        os.environ["SLA_TEST_SERVER_URL"], make_url(os.environ["DATABASE_URL"]).database
    )
    processes.migrate()


@pytest.fixture(scope="session")
def database(services):
    """The migrated test database (created once per session), with the insert
    attempt log (tests/support/attempt_log.py) installed by the tables' owner."""
    create_database()
    from models.config import get_settings
    from models.db import make_engine

    # The tests' own engine acts as the maintenance role, like the workers: it
    # sees every tenant. The API's engine (sla_app) is scoped per transaction.
    engine = make_engine(get_settings(), role=get_settings().db_maintenance_role)
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE NONE")
        attempt_log.install(conn)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def settings(services):
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
        attempt_log.reset(conn)
    redis_conn().flushdb()
    return database


@pytest.fixture
def tenant(engine):
    """(tenant_id, api_key) of a fresh tenant."""
    from models import tenants as tenant_sql

    with engine.begin() as conn:
        return tenant_sql.create_tenant(conn, "acme")


@pytest.fixture
def other_tenant(engine):
    from models import tenants as tenant_sql

    with engine.begin() as conn:
        return tenant_sql.create_tenant(conn, "globex")
