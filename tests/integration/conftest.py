"""The integration tier's fixtures: the API as one tenant (``app``, ``api``,
``other_api``) and, for the firing path's fault tests, counting actions and
poisoned rows."""

from __future__ import annotations

import pytest

from tests.support.actions import POISON_SQL, CountingAction
from tests.support.api import Api

# No module of the service at import time: importing ``tasks`` reads the
# settings (the broker), which must wait until tests/conftest.py has pointed
# DATABASE_URL at the test database.


@pytest.fixture
def counting():
    """A fresh CountingAction registered as the action "count"."""
    from tasks import escalation

    action = CountingAction()
    escalation.register_action("count", action)
    yield action
    escalation.unregister_action("count")


@pytest.fixture
def poison(engine):
    """``poison(timer_id, sqlstate="P0001", times=None)``: writing a step row of
    that timer raises that SQLSTATE (``times`` times, or always)."""
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE NONE")  # triggers are the owner's
        conn.exec_driver_sql(POISON_SQL)

    def add(timer_id, sqlstate: str = "P0001", times: int | None = None) -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL ROLE NONE")
            conn.exec_driver_sql(
                "INSERT INTO test_poison VALUES (%s, %s, %s)", (timer_id, sqlstate, times)
            )

    yield add
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE NONE")
        conn.exec_driver_sql("DROP TRIGGER IF EXISTS test_poison ON sla_escalation_events")


@pytest.fixture
def app(engine):
    from web import create_app

    return create_app()


@pytest.fixture
def api(app, tenant) -> Api:
    return Api(app.test_client(), tenant[1])


@pytest.fixture
def other_api(app, other_tenant) -> Api:
    return Api(app.test_client(), other_tenant[1])
