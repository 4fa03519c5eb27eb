"""Dramatiq actors: the wake-up (a hint to fire now), the periodic sweep and
webhook delivery (a hint to deliver now, tasks/delivery.py).

A PostgreSQL outage fails them, and Dramatiq's own retries (a few seconds'
worth) would leave timers that fell due during a longer one to the next
scheduler tick, up to a minute after the database is back. Instead, an
actor that cannot reach the database asks for a catch-up sweep about a second
later, deduplicated per instant in Redis: however many wake-ups fail, a
couple of sweeps at most are pending at any time, each trying once and asking
for the next, until one gets through and fires everything that fell due.
"""

from __future__ import annotations

import logging
import time

import dramatiq
import dramatiq.errors
import redis
from periodiq import cron

from models.errors import is_outage

from .broker import QUEUE, broker
from .delivery import DELIVER, run_delivery
from .sweeper import sweep_once
from .wakeups import WAKE_UP, fire_with_help

log = logging.getLogger(__name__)

# A wake-up that arrives early (it is sent early on purpose, by the wake-up
# lead) waits for its instant rather than finding nothing due yet.
MAX_EARLY_WAIT_S = 2.0

# While the database is unreachable, catch-up sweeps run on whole multiples of this.
OUTAGE_RETRY_MS = 1000
OUTAGE_KEY = "sla:catch-up:{}"


def catch_up_after(exc: BaseException, what: str) -> bool:
    """Ask for one sweep on the next-but-one whole ``OUTAGE_RETRY_MS`` unless one is
    already pending for that instant. False if Redis is unreachable as well: then
    the scheduler's next tick catches up."""
    reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [repr(exc)])[0]
    now_ms = int(time.time() * 1000)
    eta_ms = (now_ms // OUTAGE_RETRY_MS + 2) * OUTAGE_RETRY_MS
    try:
        if broker.client.set(OUTAGE_KEY.format(eta_ms), 1, nx=True, px=eta_ms - now_ms + 5000):
            sweep.send_with_options(delay=eta_ms - now_ms)
    except (redis.RedisError, dramatiq.errors.ConnectionError) as redis_exc:
        log.warning(
            "%s: the database is unavailable (%s) and Redis too (%s); the next tick catches up",
            what,
            reason,
            redis_exc,
        )
        return False
    log.warning("%s: the database is unavailable (%s); sweeping again shortly", what, reason)
    return True


@dramatiq.actor(
    actor_name=WAKE_UP, queue_name=QUEUE, max_retries=3, min_backoff=500, max_backoff=5_000
)
def wake_up(eta_ms: int | None = None, fan_out: bool = True) -> None:
    """Fire whatever is due. Duplicate, late or spurious wake-ups are harmless."""
    if eta_ms is not None:
        early = eta_ms / 1000 - time.time()
        if early > MAX_EARLY_WAIT_S:
            wake_up.send_with_options(args=(eta_ms,), delay=int(early * 1000))
            return
        if early > 0:
            time.sleep(early)
    try:
        fire_with_help(fan_out=fan_out)
    except Exception as exc:
        if not is_outage(exc):
            raise
        catch_up_after(exc, "wake-up")


@dramatiq.actor(actor_name=DELIVER, queue_name=QUEUE, max_retries=0)
def deliver() -> None:
    """Deliver due webhooks until caught up (bounded). Messages are hints:
    duplicates only wake loops that are running already."""
    try:
        run_delivery()
    except Exception as exc:
        if not is_outage(exc):
            raise
        # The catch-up sweep wakes delivery again.
        catch_up_after(exc, "webhook delivery")


class TickActor(dramatiq.Actor):
    """A periodic actor whose scheduler survives a Redis outage: periodiq exits
    when sending a tick fails, so a missed tick is logged instead, and the
    scheduler's direct firing (``tasks/scheduler.py``) fires due timers from
    PostgreSQL until Redis is back; then the next tick or a worker's boot sweep
    takes over again."""

    def send_with_options(self, *, args=(), kwargs=None, delay=None, **options):
        try:
            return super().send_with_options(args=args, kwargs=kwargs, delay=delay, **options)
        except (redis.RedisError, dramatiq.errors.ConnectionError) as exc:
            if "scheduled_at" not in options:  # not a periodiq tick: the caller decides
                raise
            log.warning(
                "missed the %s tick at %s: %s", self.actor_name, options["scheduled_at"], exc
            )
            from . import scheduler  # the module runs periodiq: imported by now if in use

            if scheduler.current is not None:
                scheduler.current.broker_failed()
            return None


@dramatiq.actor(queue_name=QUEUE, periodic=cron("* * * * *"), max_retries=0, actor_class=TickActor)
def sweep() -> None:
    try:
        sweep_once()
    except Exception as exc:
        if not is_outage(exc):
            raise
        catch_up_after(exc, "sweep")
