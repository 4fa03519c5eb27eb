"""Helpers for the firing path's fault tests: an action that counts its calls,
and the SQL of a trigger that poisons chosen timers' step rows. The fixtures
that use them (``counting``, ``poison``) are in tests/integration/conftest.py."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


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
