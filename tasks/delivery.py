"""Webhook delivery: claim due deliveries, POST them signed, record the outcomes.

The fan-out happens in the database (a trigger writes one PENDING delivery per
new event and enabled matching subscription); this module sends them.

A delivery loop (``deliver_due``), run by the ``deliver`` actor, by the
scheduler's direct path while Redis is down, and woken by the minute sweep:

1. claims as many due deliveries as this process has free sending slots
   (``SLA_DELIVERY_CONCURRENCY``, a sending thread each, so a claimed delivery
   never waits behind other requests), at most ``SLA_DELIVERY_BATCH_SIZE``, in one
   statement (models/sql/deliveries.sql) on the driver's connection: SKIP
   LOCKED, a lease of twice the timeout plus a margin, each subscription within
   its in-flight room (``SLA_WEBHOOK_MAX_IN_FLIGHT``, counted across all
   workers), per-timer order; each row comes with its envelope's text;
2. puts each on the process's sending queue, from which a sending thread
   takes it and sends it (tasks/sender.py: the destination checked again, the
   connection pinned to the checked address, the envelope's exact bytes POSTed
   signed, no redirect followed, all within ``SLA_WEBHOOK_TIMEOUT_SECONDS``)
   and puts the outcome on the loop's completion queue;
3. records whatever has completed, every few milliseconds, in one statement
   (attempt rows, retries, subscription health, auto-disable) on a thread of
   its own, while it claims again. A slow receiver holds only its own subscription's slots: the loop
   keeps claiming and recording for the others meanwhile.

It ends when nothing is due and nothing is in flight, or after
``LOOP_SECONDS`` (then it asks for another loop if work was left). At most
``MAX_LOOPS`` run per process; a ``deliver`` message beyond that wakes the
running ones instead, so delivery never takes every worker thread from the
timers' wake-ups.

Prompt start: ``wake_delivery()`` after every commit that wrote events sets
``sla:delivery:wake`` (NX, ``WAKE_FLAG_MS``) and sends a ``deliver`` message
only when it was not set; a loop deletes the flag before each claim, so an
event committed after the delete sends again and one committed before is seen
by the claim. Retries due within the wake-up horizon get a delayed message
(``sla:delivery:retry:<epoch_ms>``, deduplicated per second); later ones, and
anything a lost message missed, are found by the minute sweep.

At least once: an outcome is recorded only where the claim token still
matches; a worker that dies mid-request leaves its claim to end with its lease,
and the delivery is sent again (same ``webhook-id``). A lost claim is not
counted as an attempt.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any
from uuid import UUID, uuid4

import psycopg
import redis
from sqlalchemy import Engine

from models import deliveries as delivery_sql
from models import metrics
from models.config import Settings, get_settings
from models.db import get_maintenance_engine
from models.deliveries import Claimed, Outcome

from .broker import broker, redis_client
from .sender import Sender

log = logging.getLogger(__name__)

# The actor's name (tasks/actors.py declares it; importing ``tasks`` does).
DELIVER = "deliver"
WAKE_KEY = "sla:delivery:wake"
# How long a wake flag waits for a loop to delete it: if its message is lost,
# the next commit after this sends another.
WAKE_FLAG_MS = 1000
RETRY_KEY = "sla:delivery:retry:{}"
RETRY_BUCKET_MS = 1000
RETRY_KEY_GRACE_MS = 5000
# After a Redis error, leave Redis alone this long (requests must stay cheap).
REDIS_BACKOFF_S = 1.0

# A loop's wall time before it hands over to a fresh message.
LOOP_SECONDS = 20.0
MAX_LOOPS = 2
# Gather completions this long before recording them in one statement.
RECORD_GATHER_S = 0.005
# With nothing left to claim, look again at least this often (a kick, a
# completion or a new message come sooner).
IDLE_WAIT_S = 0.5
# After a claim that found less than it asked for (the subscriptions' rooms
# full, or nothing more due), claim again only once this many of the loop's
# deliveries were recorded (freeing room), or after this long, or when kicked:
# claiming at every completion kept PostgreSQL busy with claims that found
# nothing, at ≈ 6 ms of database CPU per delivery with a 100,000-event backlog.
CLAIM_AFTER_RECORDED = 16
CLAIM_AFTER_S = 0.02
# A subscription gets the failing room (SLA_WEBHOOK_FAILING_IN_FLIGHT) once it
# has had no success for this long: a dead endpoint within a second of its first
# recorded failures, never a flaky one whose successes keep resetting the clock
# (with "its last attempt failed" a receiver failing one request in five was
# throttled to two in flight for most of every second).
FAILING_AFTER_S = 1.0
# The lease covers a request (the timeout), its recording and a margin.
LEASE_MARGIN_S = 10.0

_TRANSIENT_SQLSTATES = frozenset({"40P01", "40001", "55P03"})


# ------------------------------------------------------------------ waking


@cache
def _client() -> redis.Redis:
    return redis_client(get_settings())


class _Redis:
    """The module's Redis client, left alone for a moment after an error."""

    def __init__(self) -> None:
        self._down_until = 0.0

    def client(self) -> redis.Redis:
        return _client()

    def run(self, what: str, call) -> Any:
        if time.monotonic() < self._down_until:
            return None
        try:
            return call(self.client())
        except (redis.RedisError, OSError) as exc:
            self._down_until = time.monotonic() + REDIS_BACKOFF_S
            log.warning("%s: Redis is unavailable (%s); the sweep delivers instead", what, exc)
        except Exception as exc:  # dramatiq's ConnectionError and the like
            self._down_until = time.monotonic() + REDIS_BACKOFF_S
            log.warning("%s failed (%s); the sweep delivers instead", what, exc)
        return None


_redis = _Redis()


def _send_deliver(delay_ms: int | None = None) -> None:
    broker.get_actor(DELIVER).send_with_options(delay=delay_ms)


def wake_delivery(*, force: bool = False) -> bool:
    """Ask for a delivery loop soon, after a commit that wrote events. Never
    raises, and costs one Redis command (none for a second after Redis
    failed): the flag debounces a stream of commits into a few messages.
    ``force`` sends a message even if one is pending (the sweep). Returns
    whether a message was sent."""

    def wake(client: redis.Redis) -> bool:
        fresh = client.set(WAKE_KEY, 1, nx=True, px=WAKE_FLAG_MS)
        if fresh or force:
            _send_deliver()
            return True
        return False

    return bool(_redis.run("waking delivery", wake))


def _clear_wake_flag() -> None:
    _redis.run("clearing the delivery wake flag", lambda client: client.delete(WAKE_KEY))


def schedule_retries(delays_s: Iterable[float]) -> int:
    """A delayed ``deliver`` message per second-bucket holding a retry within
    the wake-up horizon (later ones are the sweep's). Never raises."""
    settings = get_settings()
    now_ms = int(time.time() * 1000)
    etas = sorted(
        {
            -(-(now_ms + int(d * 1000)) // RETRY_BUCKET_MS) * RETRY_BUCKET_MS
            for d in delays_s
            if d <= settings.wakeup_horizon_seconds
        }
    )
    if not etas:
        return 0

    def send(client: redis.Redis) -> int:
        pipe = client.pipeline(transaction=False)
        for eta in etas:
            pipe.set(RETRY_KEY.format(eta), 1, nx=True, px=eta - now_ms + RETRY_KEY_GRACE_MS)
        sent = 0
        for eta, fresh in zip(etas, pipe.execute(), strict=True):
            if fresh:
                _send_deliver(max(eta - now_ms, 0) or None)
                sent += 1
        return sent

    return _redis.run("scheduling delivery retries", send) or 0


# ------------------------------------------------------------------ the loop


class _Slots:
    """The process's free sending slots: claimed deliveries not yet sent."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._lock = threading.Lock()

    def take(self, most: int) -> int:
        with self._lock:
            n = min(most, self._free)
            self._free -= n
            return n

    def give(self, n: int) -> None:
        with self._lock:
            self._free += n


class _Senders:
    """The process's sending threads: each takes a claimed delivery from one
    queue, sends it and puts its outcome on its loop's completion queue. No
    future per request: a claim's rows are handed over with one put each, and
    a thread is started only while fewer run than deliveries were ever handed
    over (never more than ``size``), so every delivery waiting in the queue has
    a thread that will take it once its current request ends."""

    def __init__(self, sender: Sender, slots: _Slots, size: int) -> None:
        self._sender, self._slots, self._size = sender, slots, size
        self._jobs: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._handed = 0
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, rows: list[Claimed], token: UUID, done: queue.SimpleQueue) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the courier is closed")
            self._handed += len(rows)
            while len(self._threads) < min(self._size, self._handed):
                thread = threading.Thread(
                    target=self._run, name=f"webhook_{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)
        put = self._jobs.put
        for row in rows:
            put((row, token, done))

    def _run(self) -> None:
        send, give, jobs = self._sender.send, self._slots.give, self._jobs
        while (job := jobs.get()) is not None:
            row, token, done = job
            try:
                result = send(row, token)
            except BaseException:  # a bug in sending: the lease returns the delivery
                log.exception("sending a webhook failed unexpectedly")
                result = _LOST
            give(1)
            done.put(result)

    def close(self) -> None:
        """Let the threads finish their current request and stop (deliveries not
        yet taken are left to their leases)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        while True:  # what no thread took yet is not sent: its lease returns it
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._slots.give(1)
                job[2].put(_LOST)
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join()


class Courier:
    """A process's sending capacity for one configuration: the sending threads,
    their slots and the sender."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sender = Sender(settings)
        # A thread for every slot: a claimed delivery never waits in the queue
        # behind requests to a dead endpoint. (With twice the slots and a room of
        # SLA_WEBHOOK_MAX_IN_FLIGHT = the threads, a dead subscription's first
        # claim filled every thread of a process for a timeout, and the
        # deliveries claimed behind it waited seconds.)
        self.slots = _Slots(settings.delivery_concurrency)
        self.senders = _Senders(self.sender, self.slots, settings.delivery_concurrency)

    def close(self) -> None:
        self.senders.close()
        self.sender.close()


_couriers: dict[Settings, Courier] = {}
_couriers_lock = threading.Lock()


def close_couriers() -> None:
    """Stop every courier's threads and close its connections (tests, shutdown)."""
    with _couriers_lock:
        couriers = list(_couriers.values())
        _couriers.clear()
    for courier in couriers:
        courier.close()


def courier_for(settings: Settings) -> Courier:
    with _couriers_lock:
        courier = _couriers.get(settings)
        if courier is None:
            courier = _couriers[settings] = Courier(settings)
        return courier


@dataclass
class DeliveryReport:
    claims: int = 0
    claimed: int = 0
    delivered: int = 0
    failed_attempts: int = 0
    dead: int = 0  # FAILED: the schedule ran out
    disabled: int = 0  # subscriptions disabled
    more: bool = False  # stopped with work left


class _Loop:
    """One running loop: its completion queue, and whether it was kicked
    (asked to claim again) since its last claim."""

    def __init__(self) -> None:
        self.done: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.kicked = False


_KICK = object()  # put by a kick: claim again
_LOST = object()  # a send that raised (a bug): its delivery waits for the lease
_loops: set[_Loop] = set()
_loops_lock = threading.Lock()


def _kick_all() -> int:
    with _loops_lock:
        for loop in _loops:
            loop.kicked = True
            loop.done.put(_KICK)
        return len(_loops)


def _take_or_pass_on(courier: Courier, loop: _Loop, most: int) -> int:
    """No free slot: the process's other loop holds them all, perhaps for a claim
    whose snapshot predates the commit this loop was woken for. Under the
    registry's lock, where a loop decides to stop, take again or kick the other
    loops to claim once more: the wake is passed on instead of dropped (its
    event would wait for the wake flag to expire). A loop already kicked is not
    kicked again, so two loops without slots never wake each other in turn."""
    with _loops_lock:
        taken = courier.slots.take(most)
        if not taken:
            for other in _loops:
                if other is not loop and not other.kicked:
                    other.kicked = True
                    other.done.put(_KICK)
        return taken


def lease_seconds(settings: Settings) -> float:
    return 2 * settings.webhook_timeout_seconds + LEASE_MARGIN_S


def run_delivery(
    engine: Engine | None = None, settings: Settings | None = None
) -> DeliveryReport | None:
    """The ``deliver`` actor's work: a loop, unless ``MAX_LOOPS`` already run in
    this process (then they are kicked to claim again, and None is returned).
    A loop that stopped with work left asks for another."""
    engine = engine or get_maintenance_engine()
    settings = settings or get_settings()
    loop = _Loop()
    with _loops_lock:
        if len(_loops) >= MAX_LOOPS:
            loop = None
        else:
            _loops.add(loop)
    if loop is None:
        _kick_all()
        return None
    try:
        report = deliver_due(engine, settings, _loop=loop)
    finally:
        with _loops_lock:
            _loops.discard(loop)
    if report.more:
        wake_delivery(force=True)
    return report


def deliver_due(
    engine: Engine,
    settings: Settings,
    *,
    max_seconds: float = LOOP_SECONDS,
    use_redis: bool = True,
    now=None,
    _loop: _Loop | None = None,
) -> DeliveryReport:
    """Claim, send and record until nothing is due and nothing is in flight, or
    for ``max_seconds`` (see the module). ``use_redis`` False (the scheduler's
    direct path) leaves the wake flag and retry messages alone. ``now``, a
    callable, overrides the database's clock (tests)."""
    courier = courier_for(settings)
    loop = _loop or _Loop()
    report = DeliveryReport()
    recorder = _Recorder(engine, settings, loop, report, use_redis=use_redis, now=now)
    deadline = time.monotonic() + max_seconds
    # Claimed and not yet recorded: being sent, or sent and waiting for the recorder.
    sending = unrecorded = 0
    brought_work = False  # the last claim found something
    short = False  # the last claim found less than it asked for
    last_claim = 0.0
    recorded_since = 0  # deliveries recorded since the last claim

    try:
        while True:
            now_s = time.monotonic()
            claiming = now_s < deadline
            asked = claimed = 0
            ready = (
                not short
                or loop.kicked
                or sending + unrecorded == 0
                or recorded_since >= CLAIM_AFTER_RECORDED
                or now_s - last_claim >= CLAIM_AFTER_S
            )
            if claiming and ready:
                asked = courier.slots.take(settings.delivery_batch_size) or _take_or_pass_on(
                    courier, loop, settings.delivery_batch_size
                )
            if asked:
                loop.kicked = False
                if use_redis:
                    _clear_wake_flag()
                token = uuid4()
                try:
                    rows = _claim(engine, settings, token, asked, now)
                except BaseException:
                    courier.slots.give(asked)
                    raise
                claimed = len(rows)
                courier.slots.give(asked - claimed)
                brought_work = claimed > 0
                short, last_claim, recorded_since = claimed < asked, time.monotonic(), 0
                report.claims += 1
                report.claimed += claimed
                sending += claimed
                if rows:
                    courier.senders.submit(rows, token, loop.done)
            if sending + unrecorded == 0:
                with _loops_lock:
                    if claiming and asked and not claimed and loop.kicked:
                        continue  # kicked since the claim: claim again
                    # Stopping: leave the registry in the same critical section,
                    # so a message from now on starts a loop instead of kicking
                    # this one (a kick landing here would be lost, its event
                    # left to the wake flag's expiry or the minute sweep).
                    _loops.discard(loop)
                # Caught up; or out of time; or every slot is another loop's,
                # which goes on claiming (kicked by _take_or_pass_on).
                report.more = not claiming and (brought_work or loop.kicked)
                return report
            # A claim that filled every slot asked for leaves work behind: hand
            # what is done to the recorder and claim again soon. Otherwise wait
            # for a completion (or a recording, or a kick).
            if claimed and claimed == asked:
                wait = RECORD_GATHER_S
            elif short and claiming:  # wake in time to claim again
                wait = max(0.001, CLAIM_AFTER_S - (time.monotonic() - last_claim))
            else:
                wait = IDLE_WAIT_S
            outcomes = []
            for item in _gather(loop.done, wait, sending):
                if type(item) is Outcome:
                    outcomes.append(item)
                    sending -= 1
                elif item is _LOST:
                    sending -= 1
                elif isinstance(item, _Recorded):
                    if item.error is not None:
                        raise item.error
                    unrecorded -= item.count
                    recorded_since += item.count
            if outcomes:
                unrecorded += len(outcomes)
                recorder.add(outcomes)
    finally:
        recorder.stop()


@dataclass
class _Recorded:
    """The recorder wrote ``count`` outcomes (or failed with ``error``)."""

    count: int
    error: BaseException | None = None


class _Recorder:
    """Records a loop's outcomes on a thread of its own, everything waiting in
    one statement, so claiming and sending go on while the database writes."""

    def __init__(self, engine, settings, loop: _Loop, report, *, use_redis: bool, now) -> None:
        self.engine, self.settings, self.loop, self.report = engine, settings, loop, report
        self.use_redis, self.now = use_redis, now
        self._queue: queue.Queue[list[Outcome] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def add(self, outcomes: list[Outcome]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="webhook-recorder", daemon=True)
            self._thread.start()
        self._queue.put(outcomes)

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            stop = batch is None
            outcomes = list(batch or [])
            while True:  # everything waiting, in one statement
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    outcomes += more
            if outcomes:
                try:
                    _record(
                        self.engine,
                        self.settings,
                        outcomes,
                        self.report,
                        use_redis=self.use_redis,
                        now=self.now,
                    )
                    self.loop.done.put(_Recorded(len(outcomes)))
                except BaseException as exc:  # the loop raises it
                    self.loop.done.put(_Recorded(len(outcomes), exc))
            if stop:
                return


def _gather(done: queue.SimpleQueue, wait: float, most: int) -> list[Any]:
    """The first item within ``wait`` seconds, then whatever else arrives
    within ``RECORD_GATHER_S``, until ``most`` sends have completed."""
    try:
        items = [done.get(timeout=wait)]
    except queue.Empty:
        return []
    sent = _is_sent(items[0])
    until = time.monotonic() + RECORD_GATHER_S
    while sent < most:
        try:
            item = done.get_nowait()
        except queue.Empty:
            left = until - time.monotonic()
            if left <= 0:
                break
            try:
                item = done.get(timeout=left)
            except queue.Empty:
                break
        items.append(item)
        sent += _is_sent(item)
    return items


def _is_sent(item: Any) -> bool:
    return type(item) is Outcome or item is _LOST


def _claim(engine: Engine, settings: Settings, token: UUID, limit: int, now) -> list[Claimed]:
    schedule = settings.webhook_retry_schedule
    return _on_driver(
        engine,
        lambda driver: delivery_sql.claim(
            driver,
            token,
            limit=limit,
            max_in_flight=settings.webhook_max_in_flight,
            failing_in_flight=settings.webhook_failing_in_flight,
            failing_after=FAILING_AFTER_S,
            lease_seconds=lease_seconds(settings),
            first_delay=float(schedule[0]) if schedule else 0.0,
            now=None if now is None else now(),
        ),
        autocommit=True,
    )


def _record(
    engine: Engine,
    settings: Settings,
    outcomes: list[Outcome],
    report: DeliveryReport,
    *,
    use_redis: bool,
    now,
) -> None:
    schedule = settings.webhook_retry_schedule
    decisions = [delivery_sql.decide(o, schedule) for o in outcomes]
    disabled = _on_driver(
        engine,
        lambda driver: delivery_sql.record(
            driver,
            outcomes,
            schedule,
            disable_after_seconds=settings.webhook_disable_after_seconds,
            now=None if now is None else now(),
            decisions=decisions,
        ),
    )
    retries = []
    results: Counter[str] = Counter()
    observe = metrics.DELIVERY_LATENCY.observe
    for o, (status, delay) in zip(outcomes, decisions, strict=True):
        observe(o.duration_ms / 1000)
        if status == delivery_sql.DELIVERED:
            report.delivered += 1
            results["delivered"] += 1
        else:
            report.failed_attempts += 1
            if status == delivery_sql.FAILED:
                report.dead += 1
                results["failed"] += 1
            else:
                retries.append(delay)
                results["retry"] += 1
    for result, n in results.items():
        metrics.DELIVERIES.labels(result).inc(n)
    metrics.SUBSCRIPTIONS_DISABLED.inc(len(disabled))
    report.disabled += len(disabled)
    for sub in disabled:
        log.warning(
            "webhook subscription %s (%s) disabled: %s",
            sub["id"],
            sub["url"],
            sub["disabled_reason"],
        )
    if use_redis:
        schedule_retries(retries)
        if disabled:
            wake_delivery()  # webhook.disabled goes to the tenant's other subscriptions


def _on_driver(engine: Engine, work, *, autocommit: bool = False):
    """``work(driver)`` on a pooled connection's psycopg connection, in a
    transaction of its own committed after it (``autocommit``: its one
    statement is the transaction, one round trip), retried after deadlocks and
    serialization failures (two rounds recording the same subscriptions). A
    connection the driver found broken is invalidated, not returned to the pool."""
    for pause in (0.05, 0.2, 0.5, None):
        pooled = engine.raw_connection()
        driver = pooled.driver_connection
        try:
            if autocommit:
                driver.autocommit = True
                try:
                    return work(driver)
                finally:
                    if not (driver.closed or driver.broken):
                        driver.autocommit = False
            try:
                result = work(driver)
                driver.commit()
                return result
            except BaseException:
                if not (driver.closed or driver.broken):
                    driver.rollback()
                raise
        except psycopg.Error as exc:
            lost = driver.closed or driver.broken
            if lost:
                pooled.invalidate(exc)
            if pause is None or lost or exc.sqlstate not in _TRANSIENT_SQLSTATES:
                raise
        finally:
            pooled.close()
        time.sleep(pause)
    raise AssertionError("unreachable")
