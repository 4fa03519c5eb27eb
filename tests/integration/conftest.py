"""The integration tier's fixtures: the API as one tenant (``app``, ``api``,
``other_api``) and, for the firing path's fault tests, counting actions and
poisoned rows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.api import Api

# No module of the service at import time: importing ``tasks`` reads the
# settings (the broker), which must wait until tests/conftest.py has pointed
# DATABASE_URL at the test database.


@dataclass
class CountingAction:
    """A registered action that counts its calls per step idempotency key."""

    calls: Counter = field(default_factory=Counter)
    # Raised on a call to these idempotency keys (then forgotten, unless sticky).
    raise_for: dict[str, BaseException] = field(default_factory=dict)
    sticky: bool = False
    # Called with the StepContext before anything else.
    during: object = None

    def __call__(self, ctx: Any) -> None:  # a tasks.escalation.StepContext
        self.calls[ctx.idempotency_key] += 1
        if callable(self.during):
            self.during(ctx)
        exc = self.raise_for.get(ctx.idempotency_key)
        if exc is not None:
            if not self.sticky:
                del self.raise_for[ctx.idempotency_key]
            raise exc

    @property
    def total(self) -> int:
        return sum(self.calls.values())


@pytest.fixture
def counting():
    """A fresh CountingAction registered as the action "count"."""
    from tasks import escalation

    action = CountingAction()
    escalation.register_action("count", action)
    yield action
    escalation.unregister_action("count")


POISON_SQL = """
CREATE TABLE IF NOT EXISTS test_poison (timer_id uuid PRIMARY KEY, sqlstate text NOT NULL,
                                        times int);
CREATE SEQUENCE IF NOT EXISTS test_poison_hits;
-- SECURITY DEFINER: the firing path acts as sla_maintenance, which has no
-- rights on these test objects. A sequence counts the hits because it is not
-- rolled back with the statement the trigger fails.
CREATE OR REPLACE FUNCTION test_poison() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE p test_poison;
BEGIN
    SELECT * INTO p FROM test_poison WHERE timer_id = NEW.timer_id;
    IF FOUND AND (p.times IS NULL OR nextval('test_poison_hits') <= p.times) THEN
        RAISE EXCEPTION USING ERRCODE = p.sqlstate,
                              MESSAGE = 'poisoned row for timer ' || NEW.timer_id;
    END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS test_poison ON sla_escalation_events;
CREATE TRIGGER test_poison BEFORE INSERT ON sla_escalation_events
    FOR EACH ROW EXECUTE FUNCTION test_poison();
TRUNCATE test_poison;
ALTER SEQUENCE test_poison_hits RESTART;
"""


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
