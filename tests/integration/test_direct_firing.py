"""Firing from PostgreSQL while Redis is unreachable (tasks/scheduler.py).

The scheduler's ``DirectFiring`` and every process-wide Redis client of the
test process (the wake-up dedupe client, the Dramatiq broker) reach Redis
through an ``OutageProxy`` (tests/support/outage_proxy.py); the shared Redis is never
touched. Timers are written straight to the database, with no wake-up, so
only the database can make them fire. Lateness is the insert-attempt log's
(tests/support/attempt_log.py): the database's clock when the step row reached it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from sqlalchemy import text

from models.sla import utcnow, wakeup_instant
from tasks.broker import QUEUE
from tasks.scheduler import DirectFiring
from tests.support import attempt_log
from tests.support.common import redis_conn, wait_until
from tests.support.factories import start_timer
from tests.support.outage_proxy import OutageProxy

CHECK_MS = 100
LATENESS_BOUND_S = 2.0


@pytest.fixture
def redis_proxy() -> Iterator[OutageProxy]:
    with OutageProxy.for_url(os.environ["REDIS_URL"]) as proxy:
        yield proxy


@pytest.fixture
def proxied(settings, redis_proxy, monkeypatch):
    """Settings whose Redis is the proxy, and the process's Redis clients through it."""
    from tasks import wakeups
    from tasks.broker import broker, redis_client

    proxied = dataclasses.replace(
        settings,
        redis_url=redis_proxy.url_for(settings.redis_url),
        redis_timeout_seconds=1,
        redis_check_ms=CHECK_MS,
        direct_poll_ms=100,
    )
    client = redis_client(proxied)
    monkeypatch.setattr(wakeups, "_redis", lambda: client)
    monkeypatch.setattr(broker.client, "connection_pool", client.connection_pool)
    return proxied


@pytest.fixture
def direct(engine, proxied) -> Iterator[DirectFiring]:
    firing = DirectFiring(engine, proxied, handover_s=1).start()
    yield firing
    firing.stop()


def due_in(engine, tenant_id, seconds: float, **kw) -> dict:
    """A 60 s timer due ``seconds`` from now, written without a wake-up."""
    started = utcnow() + timedelta(seconds=seconds - 60)
    return start_timer(engine, tenant_id, started_at=started, **kw)


def fired(engine, timers: list[dict]) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM sla_escalation_events WHERE timer_id = ANY(:ids)"),
            {"ids": [t["id"] for t in timers]},
        ).scalar_one()


def step_times(engine) -> list[tuple]:
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE NONE")  # the log is the owner's
        return attempt_log.step_times(conn)


def duplicates(engine) -> list[tuple]:
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE NONE")
        return attempt_log.duplicate_attempts(conn)


def wake_up_etas() -> list[int]:
    """The eta (epoch ms) of each wake-up on the shared Redis's delay queue."""
    messages = redis_conn().hvals(f"dramatiq:{QUEUE}.DQ.msgs")
    return sorted(json.loads(m)["args"][0] for m in messages)


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_timers_due_while_redis_is_down_fire_from_the_database_within_two_seconds(
    mode, engine, settings, tenant, redis_proxy, direct
):
    # With Redis up, firing is the wake-ups' job: the scheduler only pings.
    waiting = due_in(engine, tenant[0], 0)
    wait_until(lambda: direct.periods == 0 and direct.redis_up, 2, "the first ping")
    assert fired(engine, [waiting]) == 0

    cut = utcnow()
    redis_proxy.down(mode)
    wait_until(lambda: direct.active, 2, "direct firing to start")
    # Due at once, then over the next seconds; one enters the horizon meanwhile.
    timers = [waiting] + [due_in(engine, tenant[0], 0.5 + 0.4 * i) for i in range(6)]
    later = due_in(engine, tenant[0], 120)
    wait_until(lambda: fired(engine, timers) == len(timers), 8, "the outage's timers to fire")
    assert direct.active and not direct.redis_up
    # Nothing reached Redis: the database alone fired them.
    assert redis_conn().llen(f"dramatiq:{QUEUE}.DQ") == 0

    times = {timer_id: (observed, due) for timer_id, _, observed, due in step_times(engine)}
    assert set(times) == {t["id"] for t in timers}
    lateness = []
    for timer in timers:
        observed, due = times[timer["id"]]
        # The first was due before the cut: it counts from there.
        lateness.append((observed - max(due, cut)).total_seconds())
        assert due <= observed, "fired early"
    print(f"\n[direct firing] Redis {mode}: lateness max {max(lateness) * 1000:.0f} ms")
    assert max(lateness) <= LATENESS_BOUND_S

    # Redis back: wake-ups for the horizon, the one started in the outage included,
    # and direct firing stops after its handover.
    redis_proxy.up()
    wait_until(lambda: not direct.active, 10, "direct firing to stop")
    bucket = int(wakeup_instant(later["due_at"], settings.wakeup_bucket_ms).timestamp() * 1000)
    assert bucket in wake_up_etas()
    assert fired(engine, [later]) == 0
    assert duplicates(engine) == []

    # Back to normal: a timer due now waits for its wake-up again.
    waiting_again = due_in(engine, tenant[0], 0)
    wait_until(lambda: direct.redis_up, 2, "a ping")
    assert direct.periods == 1
    assert fired(engine, [waiting_again]) == 0


def test_a_tick_that_cannot_be_sent_starts_direct_firing_at_once(
    engine, tenant, monkeypatch, proxied
):
    from tasks import scheduler
    from tasks.actors import sweep
    from tasks.broker import broker

    # Redis answers pings, but the tick's send fails (a full or read-only Redis).
    firing = DirectFiring(engine, proxied, ping=lambda: True, handover_s=60).start()
    monkeypatch.setattr(scheduler, "current", firing)
    try:
        timer = due_in(engine, tenant[0], 0)

        def down(*args, **kwargs):
            raise redis.ConnectionError("Connection refused")

        monkeypatch.setattr(broker, "enqueue", down)
        assert sweep.send_with_options(scheduled_at="2026-01-01T00:00:00+00:00") is None
        wait_until(lambda: fired(engine, [timer]) == 1, 3, "the timer to fire directly")
        assert firing.periods == 1
    finally:
        firing.stop()
