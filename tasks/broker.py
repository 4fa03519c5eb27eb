"""The Dramatiq broker: Redis, with bounded timeouts and the periodiq middleware.

Redis keys written by this service, beside Dramatiq's own ``dramatiq:*`` keys:

- ``sla:wakeup:<epoch_ms>``: set NX when a wake-up for that instant is enqueued,
  so many timers due in the same bucket share one message. Expires shortly
  after the instant; losing it only costs a duplicate (harmless) wake-up.

Everything in Redis is a hint: PostgreSQL holds the timers, and the sweeper
fires them even if every key and message here is lost.
"""

from __future__ import annotations

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
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


def make_broker(settings: Settings) -> RedisBroker:
    # Dramatiq's defaults less Prometheus, which would bind a port in every worker.
    middleware = [
        m() for m in (AgeLimit, TimeLimit, ShutdownNotifications, Callbacks, Pipelines, Retries)
    ]
    broker = RedisBroker(client=redis_client(settings), middleware=middleware)
    broker.add_middleware(PeriodiqMiddleware(skip_delay=50))
    return broker


broker = make_broker(get_settings())
dramatiq.set_broker(broker)
