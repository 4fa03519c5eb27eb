"""The tests keep off a running stack (``make up``) on the same servers: their
own Redis database (``SLA_TEST_REDIS_DB``, default 15; the stack's is the one
``REDIS_URL`` names) and their own Dramatiq queue (``SLA_QUEUE``, set by
tests/conftest.py), so a stack's worker never consumes the tests' wake-ups and
the tests' flushes never reach the stack. ``.ci/run`` runs the whole suite
beside such a stack; this is the quick check of the same."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import redis

from devtools.processes import Service

BIN = Path(sys.executable).parent


def redis_conn() -> redis.Redis:
    return redis.Redis.from_url(os.environ["REDIS_URL"])  # the tests' own database


def test_the_tests_use_their_own_redis_database_and_queue(settings):
    assert settings.queue != "sla"  # the stack's, SLA_QUEUE's default
    assert urlsplit(settings.redis_url).path == f"/{os.environ.get('SLA_TEST_REDIS_DB', '15')}"


def test_a_running_stacks_worker_leaves_the_tests_wake_ups_alone(engine, tmp_path):
    """Even on the tests' own Redis database (the worst case), a worker of the
    default queue, as ``make up`` runs it, does not take the tests' messages."""
    from tasks.actors import wake_up

    message = wake_up.send()  # due at once, on the tests' queue
    queued = f"dramatiq:{message.queue_name}.msgs", message.options["redis_message_id"]
    assert redis_conn().hexists(*queued)

    stack = Service(
        [str(BIN / "dramatiq"), "tasks", "--processes", "1", "--threads", "2"],
        {**os.environ, "SLA_QUEUE": "sla"},
        tmp_path / "stack-worker.log",
        # Its boot sweep (tasks/broker.py) went through its own queue: it is consuming.
        ready="sweep: rescued=",
    )
    try:
        assert redis_conn().hexists(*queued), stack.said()
        assert "wake_up" not in stack.said()
    finally:
        stack.stop()
