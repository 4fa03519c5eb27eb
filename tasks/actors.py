"""Dramatiq actors: the wake-up (a hint to fire now) and the periodic sweep."""

from __future__ import annotations

import logging
import time

import dramatiq
import dramatiq.errors
import redis
from periodiq import cron

from .broker import QUEUE
from .sweeper import sweep_once
from .wakeups import fire_with_help

log = logging.getLogger(__name__)

# A wake-up that arrives early (it is sent early on purpose, by the wake-up
# lead) waits for its instant rather than finding nothing due yet.
MAX_EARLY_WAIT_S = 2.0


@dramatiq.actor(queue_name=QUEUE, max_retries=3, min_backoff=500, max_backoff=5_000)
def wake_up(eta_ms: int | None = None, fan_out: bool = True) -> None:
    """Fire whatever is due. Duplicate, late or spurious wake-ups are harmless."""
    if eta_ms is not None:
        early = eta_ms / 1000 - time.time()
        if early > MAX_EARLY_WAIT_S:
            wake_up.send_with_options(args=(eta_ms,), delay=int(early * 1000))
            return
        if early > 0:
            time.sleep(early)
    fire_with_help(fan_out=fan_out)


class TickActor(dramatiq.Actor):
    """A periodic actor whose scheduler survives a Redis outage: periodiq exits
    when sending a tick fails, so a missed tick is logged instead. The next
    tick, or a worker's boot sweep, catches up; timers wait in PostgreSQL."""

    def send_with_options(self, *, args=(), kwargs=None, delay=None, **options):
        try:
            return super().send_with_options(args=args, kwargs=kwargs, delay=delay, **options)
        except (redis.RedisError, dramatiq.errors.ConnectionError) as exc:
            if "scheduled_at" not in options:  # not a periodiq tick: the caller decides
                raise
            log.warning(
                "missed the %s tick at %s: %s", self.actor_name, options["scheduled_at"], exc
            )
            return None


@dramatiq.actor(queue_name=QUEUE, periodic=cron("* * * * *"), max_retries=0, actor_class=TickActor)
def sweep() -> None:
    sweep_once()
