"""The broker's consumers outlive a Redis that stops answering.

Found by the chaos suite (bench/chaos.py): during a 30 s ``CLIENT PAUSE`` a
Redis command timed out, Dramatiq's delay-queue consumer thread handled that
by requeueing over Redis, timed out again and died, leaving a worker process
that never fetched another wake-up. Here Redis "times out" by the dispatch
script raising ``redis.TimeoutError`` for a while, in an in-process worker on
the test's Redis.
"""

from __future__ import annotations

import threading
import time

import dramatiq
import pytest
import redis
from dramatiq import Worker
from dramatiq.errors import ConnectionClosed

from tasks.broker import make_broker
from tests.support.common import redis_conn


class Stall:
    """Makes every broker command raise redis.TimeoutError while on."""

    def __init__(self, broker):
        self.on = False
        self.timeouts = 0
        dispatch = broker.scripts["dispatch"]

        def stalled(*args, **kwargs):
            if self.on:
                self.timeouts += 1
                raise redis.TimeoutError("Timeout reading from socket")
            return dispatch(*args, **kwargs)

        broker.scripts["dispatch"] = stalled


@pytest.fixture
def broker(engine, settings):
    broker = make_broker(settings)
    yield broker
    broker.close()


def test_a_timeout_is_a_lost_connection_to_the_consumer(broker):
    Stall(broker).on = True
    consumer = broker.consume("sla.DQ")
    with pytest.raises(ConnectionClosed):
        next(consumer)


def test_delayed_messages_survive_redis_timing_out(broker):
    done = threading.Event()

    @dramatiq.actor(broker=broker, queue_name="chaos_probe", actor_name="chaos_probe")
    def probe():
        done.set()

    stall = Stall(broker)
    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        probe.send_with_options(delay=4_000)
        # The delay-queue consumer fetches the message and holds it in memory.
        deadline = time.monotonic() + 5
        while redis_conn().llen("dramatiq:chaos_probe.DQ"):
            assert time.monotonic() < deadline
            time.sleep(0.05)

        stall.on = True
        time.sleep(1.5)  # fetches time out, and so does the requeue that follows
        stall.on = False
        assert stall.timeouts >= 2

        consumers = [c for c in worker.consumers.values() if c.queue_name == "chaos_probe.DQ"]
        assert consumers and all(c.is_alive() for c in consumers)
        # The message forgotten with the failed consumer is back, and runs.
        assert done.wait(10), "the delayed message was lost with the consumer"
    finally:
        worker.stop()
