"""Webhook delivery when Redis is down, and its wake-ups.

Redis is reached through an ``OutageProxy`` (tests/support/outage_proxy.py) by
every process-wide client of the test process (delivery's wake client, the
wake-up client, the Dramatiq broker); the shared Redis is never touched.

- an event committed while Redis is down (the API answers as usual) is
  delivered once Redis is back, through the sweep's wake;
- meanwhile the scheduler's direct path delivers from PostgreSQL alone;
- ``wake_delivery`` never raises, and debounces commits into few messages.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator

import pytest

from tasks.broker import QUEUE
from tests.integration.test_delivery import emit, subscribe
from tests.support.common import redis_conn, wait_until
from tests.support.outage_proxy import OutageProxy
from tests.support.receiver import Receiver

QUEUE_MSGS = f"dramatiq:{QUEUE}.msgs"


@pytest.fixture
def redis_proxy() -> Iterator[OutageProxy]:
    with OutageProxy.for_url(os.environ["REDIS_URL"]) as proxy:
        yield proxy


@pytest.fixture
def proxied(settings, redis_proxy, monkeypatch):
    """Settings whose Redis is the proxy (loopback receivers allowed), and the
    process's Redis clients through it."""
    from tasks import delivery, wakeups
    from tasks.broker import broker, redis_client

    proxied = dataclasses.replace(
        settings,
        redis_url=redis_proxy.url_for(settings.redis_url),
        redis_timeout_seconds=1,
        redis_check_ms=100,
        direct_poll_ms=100,
        webhook_allow_private_networks=True,
        webhook_timeout_seconds=1.0,
        delivery_concurrency=8,
    )
    client = redis_client(proxied)
    monkeypatch.setattr(wakeups, "_redis", lambda: client)
    monkeypatch.setattr(delivery, "_client", lambda: client)
    monkeypatch.setattr(delivery, "get_settings", lambda: proxied)
    monkeypatch.setattr(delivery._redis, "_down_until", 0.0)
    monkeypatch.setattr(broker.client, "connection_pool", client.connection_pool)
    yield proxied
    delivery.close_couriers()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def queued_actors() -> list[str]:
    return [json.loads(m)["actor_name"] for m in redis_conn().hvals(QUEUE_MSGS)]


def test_an_event_committed_while_redis_is_down_is_delivered_after_it_returns(
    engine, tenant, proxied, redis_proxy, receiver, monkeypatch
):
    from tasks import actors, delivery
    from tasks.sweeper import sweep_once
    from web import create_app

    subscribe(engine, tenant[0], receiver.url, event_types=["sla.timer.started"])
    client = create_app().test_client()
    redis_proxy.down("refuse")

    started = time.monotonic()
    response = client.post(
        "/v1/timers",
        json={"lead_id": "lead-7", "window_seconds": 600},
        headers={"Authorization": f"Bearer {tenant[1]}"},
    )
    assert response.status_code == 201, response.json  # committed, Redis or not
    assert time.monotonic() - started < 2 * proxied.redis_timeout_seconds + 1.5
    assert queued_actors() == []  # no wake reached Redis
    time.sleep(0.3)
    assert receiver.received() == []

    redis_proxy.up()
    monkeypatch.setattr(delivery._redis, "_down_until", 0.0)
    sweep_once()  # the minute sweep (or a worker's boot sweep) asks for delivery
    assert "deliver" in queued_actors()
    actors.deliver.fn()  # as a worker runs the message
    [request] = receiver.wait_for(1)
    body = request.json()
    assert body["type"] == "sla.timer.started"
    assert body["data"]["timer_id"] == response.json["id"]


def test_the_scheduler_delivers_from_postgresql_while_redis_is_down(
    engine, tenant, proxied, redis_proxy, receiver
):
    from tasks.scheduler import DirectFiring

    subscribe(engine, tenant[0], receiver.url)
    direct = DirectFiring(engine, proxied, handover_s=1).start()
    try:
        redis_proxy.down("refuse")
        wait_until(lambda: direct.active, 3, "direct firing to start")
        [event_id] = emit(engine, tenant[0])
        committed = time.time()
        [request] = receiver.wait_for(1, timeout=5)
        assert request.webhook_id == f"evt_{event_id}"
        assert request.at - committed < 1.0  # within a few direct polls
        wait_until(lambda: direct.delivered == 1, 3, "the delivery to be recorded")
    finally:
        redis_proxy.up()
        direct.stop()


def test_wake_delivery_never_raises_and_debounces_commits(engine, proxied, redis_proxy):
    from tasks import delivery

    redis_proxy.down("refuse")
    started = time.monotonic()
    assert delivery.wake_delivery() is False  # Redis down: no message, no exception
    assert delivery.wake_delivery() is False  # and the next call does not even try
    assert time.monotonic() - started < 2 * proxied.redis_timeout_seconds + 1
    redis_proxy.up()
    delivery._redis._down_until = 0.0

    sent = [delivery.wake_delivery() for _ in range(50)]
    assert sent == [True] + [False] * 49  # a burst of commits: one message
    assert queued_actors() == ["deliver"]
    delivery._clear_wake_flag()  # a loop about to claim
    assert delivery.wake_delivery() is True  # a commit after it: a message again
    assert delivery.wake_delivery(force=True) is True  # the sweep's, whatever the flag
