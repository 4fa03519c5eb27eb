"""The Dramatiq broker: Redis, with bounded timeouts and the periodiq middleware.

Every Redis key the service writes, in one place. Everything in Redis is a
hint or a guard: PostgreSQL holds the timers, the sweeper fires them even if
every key and message here is lost, and while Redis is unreachable the
scheduler fires them from PostgreSQL (``tasks/scheduler.py``).

- ``dramatiq:*``: Dramatiq's own (``tasks/broker.py``): the queue ``dramatiq:sla``
  (``sla`` is ``SLA_QUEUE``'s default; the tests use a queue of their own)
  and its delay queue ``dramatiq:sla.DQ`` (lists of message ids), their messages
  (``dramatiq:sla.msgs``, ``dramatiq:sla.DQ.msgs``, hashes), each worker's
  unacknowledged messages (``dramatiq:__acks__.<worker>.<queue>``, sets), the
  workers' heartbeats (``dramatiq:__heartbeats__``, a sorted set) and the dead
  messages of a queue (``dramatiq:<queue>.XQ`` and ``.XQ.msgs``, kept a week).
  Wake-ups, sweeps and delivery loops (``deliver``) are these messages.
- ``sla:wakeup:<epoch_ms>`` (``tasks/wakeups.py``): set NX when a wake-up for
  that instant is enqueued, so many timers due in the same bucket share one
  message. Expires 5 s after the instant; losing it only costs a duplicate
  (harmless) wake-up.
- ``sla:catch-up:<epoch_ms>`` (``tasks/actors.py``): set NX when a wake-up or
  sweep that could not reach PostgreSQL asks for a catch-up sweep at that
  instant, so however many fail together one sweep is pending per instant.
  Expires 5 s after the instant.
- ``sla:delivery:wake`` (``tasks/delivery.py``): set NX for 1 s by
  ``wake_delivery()`` after a commit that wrote events; a ``deliver`` message
  is sent only when it was not set, and a delivery loop deletes it before each
  claim, so a stream of commits costs a few messages, not one each. Losing it
  costs a duplicate (harmless) message.
- ``sla:delivery:retry:<epoch_ms>`` (``tasks/delivery.py``): set NX when a
  delayed ``deliver`` message is sent for the second (rounded up) at which
  webhook retries fall due within the wake-up horizon. Expires 5 s after it.
- ``LIMITS:{LIMITER/sla-writes/<tenant>/<amount>/<multiples>/<unit>}`` and the
  same key with ``/-1`` appended (``web/ratelimit.py``, the ``limits``
  library's layout): the current and previous window of a tenant's
  sliding-window write counter, per limit of ``SLA_RATE_LIMIT``, shared by
  every web process. They expire with their window.

Not a key, but written too: the pub/sub channel ``sla:api-keys:revoked``
(``web/auth.py``), on which a revoked API key's prefix is published so that
every web process drops it from its cache.
"""

from __future__ import annotations

import logging

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker, _RedisConsumer
from dramatiq.errors import ConnectionClosed
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)
from periodiq import PeriodiqMiddleware

from models.config import Settings, get_settings

from .logs import LogContext
from .metrics import worker_middleware

# SLA_QUEUE: a test run's actors use their own queue, beside a running stack's.
QUEUE = get_settings().queue

log = logging.getLogger(__name__)


def redis_client(settings: Settings, timeout_seconds: float | None = None) -> redis.Redis:
    # Short timeouts: a Redis outage must not stall an API request that has
    # already committed its timer.
    timeout = settings.redis_timeout_seconds if timeout_seconds is None else timeout_seconds
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )


class OutageProofConsumer(_RedisConsumer):
    """A Redis consumer that survives Redis outages of any kind.

    Dramatiq's consumer thread reconnects after a ``ConnectionError`` but not
    after other Redis errors: a command timing out (a paused or overloaded
    Redis, with our socket timeout) went to a handler that itself talks to
    Redis, and the second timeout ended the thread for good, leaving a worker
    process alive that never fetched a wake-up again. Every Redis error is a
    lost connection here.

    On that path Dramatiq forgets the delayed messages it holds in memory
    (wake-ups, prefetched by the thousand); they stay fetched under this
    process's id, so no other worker takes them over while it lives. A
    ``recover`` consumer (one that replaces a failed one) first puts this
    process's unacknowledged messages of its queue back, so the wake-ups
    return instead of waiting for the next sweep.
    """

    recover = False

    def __next__(self):
        try:
            if self.recover:
                self._requeue_orphans()
                self.recover = False
            return super().__next__()
        except redis.RedisError as exc:
            raise ConnectionClosed(exc) from None

    def _requeue_orphans(self) -> None:
        acks = f"{self.broker.namespace}:__acks__.{self.broker.broker_id}.{self.queue_name}"
        orphans = self.broker.client.smembers(acks)
        if orphans:
            self.broker.do_requeue(self.queue_name, *(m.decode() for m in orphans))
            log.warning(
                "requeued %d messages of %s after a lost connection", len(orphans), self.queue_name
            )

    def ack(self, message):
        try:
            return super().ack(message)
        except redis.RedisError as exc:
            raise ConnectionClosed(exc) from None

    def nack(self, message):
        try:
            return super().nack(message)
        except redis.RedisError as exc:
            raise ConnectionClosed(exc) from None

    def requeue(self, messages):
        try:
            return super().requeue(messages)
        except redis.RedisError as exc:
            raise ConnectionClosed(exc) from None


class PromptRedisBroker(RedisBroker):
    """A Redis broker whose idle consumers poll at most every ``poll_interval_ms``,
    through consumers that outlive Redis outages (``OutageProofConsumer``).

    Dramatiq backs an idle consumer off to its worker timeout (1 s, not settable
    from the CLI), and a delayed message is only moved to its queue between two
    polls: up to two seconds of lateness for a wake-up. A short poll bounds it:
    a wake-up waits for at most two polls (the delay queue's, then the queue's)
    plus a free thread, which its lead (``SLA_WAKEUP_LEAD_MS``) must cover. At
    100 ms, with 1,000 timers due per second on two cores, it often did not
    (P2h: p99 ≈ 110 ms); at 25 ms it does, for a few dozen more Redis polls a
    second per idle worker process.
    """

    def __init__(self, *, poll_interval_ms: int, **kwargs):
        super().__init__(**kwargs)
        self.poll_interval_ms = poll_interval_ms
        self._consumed: set[str] = set()

    @property
    def consumer_class(self):
        return OutageProofConsumer

    def consume(self, queue_name, prefetch=1, timeout=5000):
        consumer = super().consume(queue_name, prefetch, min(timeout, self.poll_interval_ms))
        # A queue's consumer is only replaced after its predecessor failed.
        # Only delayed messages are worth recovering: a failed queue consumer's
        # messages are still with the worker threads, which ack them.
        consumer.recover = queue_name in self._consumed and queue_name.endswith(".DQ")
        self._consumed.add(queue_name)
        return consumer


class SweepOnBoot(Middleware):
    """A worker that (re)starts sweeps at once, so timers whose wake-ups died
    with the previous workers do not wait for the next scheduler tick."""

    def after_worker_boot(self, broker, worker):
        try:
            broker.get_actor("sweep").send()
        except Exception as exc:  # the minute tick still runs
            log.warning("could not enqueue the boot sweep: %s", exc)


def make_broker(settings: Settings) -> RedisBroker:
    # Dramatiq's defaults less Prometheus, which would bind a port for every
    # worker command; tasks/metrics.py adds it back without that.
    middleware = [
        m() for m in (AgeLimit, TimeLimit, ShutdownNotifications, Callbacks, Pipelines, Retries)
    ]
    broker = PromptRedisBroker(
        client=redis_client(settings),
        middleware=middleware,
        poll_interval_ms=settings.poll_interval_ms,
    )
    broker.add_middleware(PeriodiqMiddleware(skip_delay=50))
    broker.add_middleware(SweepOnBoot())
    # Dramatiq's own worker metrics, into the shared multiprocess directory.
    for middleware in worker_middleware():
        broker.add_middleware(middleware)
    # JSON lines, correlation ids through messages; before periodiq's, whose lines it then names.
    broker.add_middleware(LogContext(), before=PeriodiqMiddleware)
    return broker


broker = make_broker(get_settings())
dramatiq.set_broker(broker)
