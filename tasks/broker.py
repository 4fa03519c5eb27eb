"""The Dramatiq broker: Redis, with bounded timeouts and the periodiq middleware.

Redis keys written by this service, beside Dramatiq's own ``dramatiq:*`` keys:

- ``sla:wakeup:<epoch_ms>``: set NX when a wake-up for that instant is enqueued,
  so many timers due in the same bucket share one message. Expires shortly
  after the instant; losing it only costs a duplicate (harmless) wake-up.

Everything in Redis is a hint: PostgreSQL holds the timers, and the sweeper
fires them even if every key and message here is lost.
"""

from __future__ import annotations

import logging

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
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

QUEUE = "sla"


def redis_client(settings: Settings) -> redis.Redis:
    # Short timeouts: a Redis outage must not stall an API request that has
    # already committed its timer.
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        health_check_interval=30,
    )


class PromptRedisBroker(RedisBroker):
    """A Redis broker whose idle consumers poll at most every ``poll_interval_ms``.

    Dramatiq backs an idle consumer off to its worker timeout (1 s, not settable
    from the CLI), and a delayed message is only moved to its queue between two
    polls: up to two seconds of lateness for a wake-up. A short poll bounds it.
    """

    def __init__(self, *, poll_interval_ms: int, **kwargs):
        super().__init__(**kwargs)
        self.poll_interval_ms = poll_interval_ms

    def consume(self, queue_name, prefetch=1, timeout=5000):
        return super().consume(queue_name, prefetch, min(timeout, self.poll_interval_ms))


class SweepOnBoot(Middleware):
    """A worker that (re)starts sweeps at once, so timers whose wake-ups died
    with the previous workers do not wait for the next scheduler tick."""

    def after_worker_boot(self, broker, worker):
        try:
            broker.get_actor("sweep").send()
        except Exception as exc:  # the minute tick still runs
            logging.getLogger(__name__).warning("could not enqueue the boot sweep: %s", exc)


def make_broker(settings: Settings) -> RedisBroker:
    # Dramatiq's defaults less Prometheus, which would bind a port in every worker.
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
    return broker


broker = make_broker(get_settings())
dramatiq.set_broker(broker)
