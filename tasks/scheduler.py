"""The scheduler process: periodiq's ticks, and firing from PostgreSQL while
Redis is unreachable.

``python -m tasks.scheduler`` (the Procfile's ``scheduler``) runs periodiq's
scheduler, which sends the minute sweep, and beside it a ``DirectFiring``:

- one thread pings Redis every ``SLA_REDIS_CHECK_MS``; a ping that fails, or is
  not answered within twice that, means the broker is unreachable. So does a
  tick periodiq could not send (``TickActor``).
- while it is, another thread fires from the database alone: it finds the next
  due instant (``min(next_fire_at)`` of PENDING rows), sleeps until then, at
  most ``SLA_DIRECT_POLL_MS`` so that timers started meanwhile and Redis's
  return are noticed, and runs the firing routine ``fire_due`` in-process. Every
  minute it also returns rows whose lease expired, as the sweep would: the
  sweep is a Redis message too.
- a third thread delivers webhooks from the database alone meanwhile
  (``deliver_due`` in-process, without Redis: no wake flag, no retry
  messages), looking for due deliveries every ``SLA_DIRECT_POLL_MS``; so an
  event committed while Redis is down still reaches its receivers.
- once Redis answers again it schedules the wake-ups of the whole horizon
  (timers that entered it during the outage, and the wake-ups a restarted Redis
  lost), then goes on firing directly for ``HANDOVER_S`` while the workers'
  consumers reconnect (Dramatiq retries every 3 s), and stops.

Any number of schedulers may do this at once: claims skip locked rows, and a
step row and its event are written at most once whoever fires. With Redis up
the thread only pings: firing stays the wake-ups' job.

Why the scheduler and not the workers: it is the process that already owns the
clock (the ticks), it runs in one or two copies rather than one per worker
process, so the database sees a poll or two per interval instead of dozens,
and it has no Dramatiq consumers of its own that an outage leaves retrying.
The cost: a Redis outage while no scheduler runs fires nothing until one
does (as for the ticks).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

import dramatiq.worker
from sqlalchemy import Engine, text

from models import logs
from models.config import Settings, get_settings
from models.db import get_maintenance_engine

from .broker import redis_client
from .delivery import deliver_due, wake_delivery
from .firing import fire_due
from .sweeper import rescue_lost_work, schedule_horizon

log = logging.getLogger(__name__)

# After Redis is back: a worker's consumer reconnects within Dramatiq's restart
# delay (3 s); until then only direct firing fires anything.
HANDOVER_S = dramatiq.worker.CONSUMER_RESTART_DELAY_SECS + 2
# While firing directly, rescue expired leases as often as the sweep would.
RESCUE_EVERY_S = 60

# Seconds until the next instant anything must happen, by the database's clock
# (NULL: nothing pending). The index on next_fire_at (partial on IS NOT NULL) is
# read from its start, past the few rows being processed.
_NEXT_DUE = text(
    """
    SELECT extract(epoch FROM min(next_fire_at) - clock_timestamp())::float
    FROM sla_timers
    WHERE next_fire_at IS NOT NULL AND processing_status = 'PENDING'
    """
)
# Something looked due but nothing was claimed (another scheduler took it, or
# the claim's clock is behind the database's): look again this soon.
RETRY_S = 0.05


class DirectFiring:
    """Fires due timers from PostgreSQL while Redis is unreachable (see the module)."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        ping: Callable[[], object] | None = None,
        handover_s: float = HANDOVER_S,
    ):
        self.engine, self.settings = engine, settings
        check_s = settings.redis_check_ms / 1000
        if ping is None:
            ping = redis_client(settings, timeout_seconds=max(2 * check_s, 0.05)).ping
        self.ping = ping
        self.handover_s = handover_s
        self.redis_up = True
        self.active = False  # firing directly
        self.periods = 0  # how many times direct firing started
        self.fired = 0  # steps written by direct firing
        self.delivered = 0  # webhooks delivered directly
        self._redis_back_at: float | None = None
        self._changed = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- control

    def start(self) -> DirectFiring:
        for target, name in (
            (self._watch, "redis-watch"),
            (self._fire_loop, "direct-firing"),
            (self._deliver_loop, "direct-delivery"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 10) -> None:
        self._stopped.set()
        self._changed.set()
        for thread in self._threads:
            thread.join(timeout)

    def broker_failed(self) -> None:
        """Sending to Redis failed (a tick): fire directly now, the next ping decides."""
        self._mark(up=False)

    # -- the Redis watch

    def _watch(self) -> None:
        interval = self.settings.redis_check_ms / 1000
        while not self._stopped.is_set():
            try:
                self.ping()
                up = True
            except Exception:  # any failure: unreachable, timed out, paused, refusing
                up = False
            self._mark(up)
            self._stopped.wait(interval)

    def _mark(self, up: bool) -> None:
        if up == self.redis_up:
            return
        self.redis_up = up
        if up:
            self._redis_back_at = time.monotonic()
        else:
            self._redis_back_at = None
        self._changed.set()

    # -- direct firing

    def _fire_loop(self) -> None:
        poll = self.settings.direct_poll_ms / 1000
        horizon_scheduled = True  # wake-ups of the horizon sent since Redis came back
        last_rescue = 0.0
        failing = False
        while not self._stopped.is_set():
            self._changed.clear()
            try:
                if not self.redis_up:
                    horizon_scheduled = False
                    if not self.active:
                        self.active, self.periods = True, self.periods + 1
                        last_rescue = 0.0
                        log.warning("Redis is unreachable: firing due timers from PostgreSQL")
                elif self.active:
                    if not horizon_scheduled:
                        # If Redis goes again meanwhile, the watch notices and this
                        # is redone at its next return; firing goes on either way.
                        sent = schedule_horizon(self.engine, self.settings)
                        horizon_scheduled = True
                        log.warning(
                            "Redis is back: sent %d wake-ups for the horizon; firing from "
                            "PostgreSQL %.0f s more while workers reconnect",
                            sent,
                            self.handover_s,
                        )
                    back_at = self._redis_back_at
                    if back_at is not None and time.monotonic() - back_at >= self.handover_s:
                        self.active = False
                        log.warning(
                            "direct firing stopped: wake-ups fire timers again "
                            "(%d steps fired directly so far)",
                            self.fired,
                        )
                if not self.active:
                    self._changed.wait()
                    continue
                if time.monotonic() - last_rescue >= RESCUE_EVERY_S:
                    if last_rescue:
                        log.warning("Redis still unreachable: %d steps fired directly", self.fired)
                    rescue_lost_work(self.engine)
                    last_rescue = time.monotonic()
                self._changed.wait(self._fire_due_or_wait(poll))
                failing = False
            except Exception as exc:  # the database may be down too: keep trying
                # Once per run of failures, not once per poll.
                log.log(
                    logging.DEBUG if failing else logging.WARNING,
                    "direct firing failed (%s); retrying every %.2f s",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc),
                    poll,
                    exc_info=not failing,
                )
                failing = True
                self._stopped.wait(poll)

    # -- direct delivery

    def _deliver_loop(self) -> None:
        """While firing directly, deliver due webhooks too, on a thread of its
        own so that a slow receiver never delays firing."""
        poll = self.settings.direct_poll_ms / 1000
        failing, was_active = False, False
        while not self._stopped.is_set():
            if not self.active:
                if was_active:
                    was_active = False
                    wake_delivery(force=True)  # the workers take over
                self._stopped.wait(poll)
                continue
            was_active = True
            try:
                report = deliver_due(
                    self.engine, self.settings, max_seconds=max(poll, 1.0), use_redis=False
                )
                self.delivered += report.delivered
                failing = False
                if not report.claimed:
                    self._stopped.wait(poll)
            except Exception as exc:  # the database may be down too: keep trying
                log.log(
                    logging.DEBUG if failing else logging.WARNING,
                    "direct delivery failed (%s); retrying every %.2f s",
                    str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc),
                    poll,
                )
                failing = True
                self._stopped.wait(poll)

    def _fire_due_or_wait(self, poll: float) -> float:
        """Fire what is due; return how long to sleep before looking again."""
        with self.engine.begin() as conn:
            due_in: float | None = conn.execute(_NEXT_DUE).scalar_one()
        if due_in is None or due_in > 0:
            return poll if due_in is None else min(due_in, poll)
        report = fire_due(self.engine, self.settings)
        self.fired += report.steps
        if not report.claimed:
            return RETRY_S
        log.debug("fired directly: claimed=%d steps=%d", report.claimed, report.steps)
        return 0


# The scheduler process's DirectFiring, for TickActor to reach.
current: DirectFiring | None = None


def main(argv: list[str] | None = None) -> int:
    """``periodiq tasks`` with direct firing beside it."""
    import periodiq

    global current
    # Before periodiq's own basicConfig, which then leaves the root as it is.
    logs.configure("scheduler")
    current = DirectFiring(get_maintenance_engine(), get_settings()).start()
    if get_settings().metrics_port:  # a host without a web process (docs/metrics.md)
        from .metrics import start_server

        start_server(get_settings().metrics_port)
    # periodiq sets the root's level from its -v count: INFO, or DEBUG with one.
    verbose = ["-v"] if get_settings().log_level == "DEBUG" else []
    sys.argv = ["periodiq", "tasks", *verbose, *(sys.argv[1:] if argv is None else argv)]
    periodiq.entrypoint()  # exits
    return 0


if __name__ == "__main__":
    # Run the module's importable copy, the one TickActor reaches as tasks.scheduler.
    from tasks.scheduler import main as run

    sys.exit(run())
