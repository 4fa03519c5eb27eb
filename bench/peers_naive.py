"""The naive design as a peer in ``bench/peers.py``: one Dramatiq delayed message per job.

Workers are Dramatiq's own CLI on this module::

    dramatiq bench.peers_naive:broker --queues peers --processes 2 --threads 8

The broker is a plain ``RedisBroker`` on ``REDIS_URL`` with Dramatiq's default
middleware less Prometheus (which would bind a port per worker command, as
``tasks/broker.py`` notes), and with idle consumers polling at most every
``POLL_MS``, the service's own broker setting (``SLA_POLL_INTERVAL_MS``'s
default): by default Dramatiq polls an idle queue every second, which would
add up to a second to the peer's time from the due instant. Prefetch is
Dramatiq's default (1,000 delayed messages per thread, two per thread from
the queue). At its due instant, each delayed message is moved by its worker
to the queue, fetched again and run: ``peer_fire`` runs ``peers_job.JOB``
on a psycopg connection of its thread, in autocommit. The broker is named on
the command line and never made global, so importing this module in the
benchmark's process changes no other scenario's broker.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import dramatiq
import psycopg
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from .peers_job import JOB, job_args

POLL_MS = 25
QUEUE = "peers"
CALIBRATION = "peers-calibration"


class PromptBroker(RedisBroker):
    def consume(self, queue_name, prefetch=1, timeout=5000):
        return super().consume(queue_name, prefetch, min(timeout, POLL_MS))


broker = PromptBroker(
    url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    middleware=[
        m() for m in (AgeLimit, TimeLimit, ShutdownNotifications, Callbacks, Pipelines, Retries)
    ],
)

_local = threading.local()


def _connection() -> psycopg.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(
            os.environ["DATABASE_URL"], autocommit=True, cursor_factory=psycopg.RawCursor
        )
    return conn


@dramatiq.actor(broker=broker, queue_name=QUEUE, max_retries=3)
def peer_fire(args: list[str]) -> None:
    _connection().execute(JOB, args)


@dramatiq.actor(broker=broker, queue_name=CALIBRATION)
def calibrate(args: list[str]) -> None:
    """Never run: its queue has no worker (``--queues peers``)."""


def _send_all(actor, n: int, due: datetime, threads: int) -> float:
    started = time.time()

    def send_slice(k: int) -> None:
        for i in range(k, n, threads):
            delay_ms = max(0, int((due.timestamp() - time.time()) * 1000))
            actor.send_with_options(args=(job_args(i),), delay=delay_ms)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send_slice, range(threads)))
    return time.time() - started


def sends_per_second(k: int = 500, threads: int = 4) -> float:
    """How fast this process sends delayed messages now (to a queue no worker reads),
    so that the burst's due instant leaves time to send it all."""
    return k / _send_all(calibrate, k, datetime.now(UTC) + timedelta(hours=1), threads)


def send(n: int, due: datetime, threads: int = 4) -> float:
    """One delayed message per job, all due at ``due``, sent from ``threads``
    threads (each send is a Redis round trip); returns the seconds it took."""
    return _send_all(peer_fire, n, due, threads)
