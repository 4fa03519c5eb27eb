"""Chaos: timers fire once and never early while processes and services fail.

Real worker processes (each ``dramatiq tasks --processes 1``) and periodiq
schedulers run against real PostgreSQL and Redis. N timers with a two-step
ladder (step 1 at due, step 2 later) are seeded due over a few minutes and
their wake-ups scheduled as a start would. Meanwhile the driver

- SIGKILLs a random worker (its whole process group) every few seconds and
  starts a new one in its place;
- flushes Redis once (FLUSHALL on its own Redis, FLUSHDB on a shared one);
- restarts PostgreSQL once (``pg_ctl -m fast stop``, a few seconds down, start);
- pauses Redis for 30 s (``CLIENT PAUSE ... ALL``);
- stops Redis for 60 s (SIGTERM, no persistence: it comes back empty), so that
  only the schedulers' firing from PostgreSQL can fire anything meanwhile.

Schedulers are never restarted, and a worker is only restarted after a kill
of the driver's: a process that exits on its own, or keeps running but stops
polling Redis, is reported. Every fault is recorded with its wall-clock
window. At the end the database is checked: every timer reached its final
state, one step row per (timer, step), one outbox event per (timer, kind,
step), no step row or event attempted twice and none before its instant (the
insert-attempt log of tests/support/attempt_log.py, by the database's clock), and the
lateness of each step (its first attempt minus its due instant) inside and
outside the fault windows, and for the steps due while Redis was stopped.

Every timer also warns before its breach (``warning_thresholds`` of its
``window_s``), and some are paused and resumed by the driver meanwhile
(``pause_every``): one in that many right after the seeding, resumed at
``resume_at_s``; another one in that many at its first warning's instant, so
the pause races the worker that claimed it, resumed ``timer_pause_s`` later.
The end check adds: one warning row per (timer, threshold), one
``sla.timer.warning`` per SENT row and none for a SKIPPED one, none recorded
before its instant; every paused timer resumed, with one paused and one resumed
event each (the steps' checks already use the shifted ``due_at``).

With ``webhooks`` (the default of ``make chaos``) the tenant also has a webhook
subscription to every event type, pointed at a flaky receiver
(``bench/receiver.py``: 500 on ``webhook_fail`` of the requests, no answer
until past the timeout on a further ``webhook_hang``), so deliveries are
claimed, sent, retried and recorded by the workers being killed. At the end
every event must have been answered 2xx by the receiver; a ``webhook-id``
answered 2xx twice is a duplicate, reported as a figure (delivery is at least
once, not exactly once).

The PostgreSQL restart, the FLUSHALL and the Redis stop need servers of our own: ``main()``
starts a dedicated embedded PostgreSQL and Redis (``devtools/services.py``) under
``.data/chaos-pg`` and ``.data/chaos-redis`` on their own ports, never the
machine's. ``run()`` also works against shared servers (the small version in
the test suite), with only the faults that harm nobody else: kills and
FLUSHDB.

    python -m bench.chaos --timers 50000        # or: make chaos
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devtools import services
from tests.support import attempt_log

from .common import BIN, RESULTS, ROOT, Bench, Service, machine, percentile, seed_timers
from .p3_recovery import _CHECK_EVENTS, _CHECK_STEPS, _CHECK_TIMERS, _PROGRESS, _ladder

STEPS = 2
EVENTS_PER_TIMER = 1 + STEPS  # sla.timer.due + one sla.escalation.triggered per step
TICK_S = 60  # the scheduler's sweep interval

# Times are seconds from the first due instant (t0); None leaves a fault out.
FULL = {
    "timers": 50_000,
    "spread_s": 300.0,  # due instants evenly over this window from t0
    "due_in_s": 20.0,  # from the seeding to t0
    "step2_after_s": 30,
    "workers": 4,  # worker process groups, one Dramatiq process each
    "threads": 4,
    "schedulers": 2,
    "kill_every_s": 5.0,  # mean interval between worker kills, until the last due instant
    "kill_at_s": [],  # extra one-off kills
    # Far enough apart that some steps fall due outside every window.
    "flush_at_s": 30.0,
    "pg_restart_at_s": 120.0,
    "pg_down_s": 5.0,
    "pause_at_s": 210.0,
    "pause_s": 30.0,
    "redis_outage_at_s": 255.0,
    "redis_outage_s": 60.0,
    # A step due within this long after a fault ended counts as inside its window:
    # one sweeper tick, the recovery bound of a lost wake-up.
    "window_tail_s": float(TICK_S),
    # ... and so does one due this long before it began: a wake-up is on its way
    # through Redis and the worker up to MAX_EARLY_WAIT_S (2 s) before its instant.
    "window_lead_s": 2.0,
    # Completion deadline after the last due instant: a lease, two ticks, a margin.
    "deadline_s": 240.0,
    # After the last timer: late writes would show as duplicates, deaf workers as deaf.
    "settle_s": 3.0,
    "seed": 1,
    # Webhooks to a flaky receiver (bench/receiver.py); 0 leaves them out.
    "webhooks": 1,
    "webhook_fail": 0.20,  # answered 500
    "webhook_hang": 0.05,  # a further 5 %: no answer until past the timeout
    "webhook_timeout_s": 1.0,  # SLA_WEBHOOK_TIMEOUT_SECONDS
    # Short retries, so every event gets through within the run: the chance that
    # twelve attempts all fail is 0.25^12, about 6e-8 per event.
    "webhook_retry_schedule": "0,1,1,2,2,2,2,2,2,2,2,2",
    # One subscription takes every event: room for the hangs (5 % of attempts,
    # 1 s each) beside the quick answers at the run's event rate.
    "webhook_max_in_flight": 64,
    # After the timers, how long the deliveries may still take.
    "webhook_deadline_s": 300.0,
    # Warnings: percentages of each timer's window (due_at - started_at).
    "warning_thresholds": [50, 80],
    "window_s": 10,
    # One timer in this many paused after the seeding (resumed at resume_at_s), and
    # another at its first warning (resumed timer_pause_s later); None: no pauses.
    "pause_every": 20,
    "resume_at_s": 60.0,
    "timer_pause_s": 5.0,
}
# The version in the default test suite: a few seconds, shared servers.
SMALL = {
    **FULL,
    "timers": 300,
    "spread_s": 2.0,
    "due_in_s": 4.0,
    "step2_after_s": 1,
    "workers": 2,
    "threads": 4,
    "schedulers": 1,
    "kill_every_s": None,
    # Both before the first due instant, so no claimed batch dies with the worker
    # (that would wait for its lease and the next tick, minutes, see FULL).
    "flush_at_s": -3.0,
    "kill_at_s": [-2.5],
    "pg_restart_at_s": None,
    "pause_at_s": None,
    "redis_outage_at_s": None,
    "window_tail_s": 5.0,
    "deadline_s": 20.0,
    "settle_s": 1.0,
    "webhooks": 0,
    # The first warning 1 s before due: after both faults.
    "window_s": 2,
    "warning_thresholds": [50],
    "pause_every": 10,
    "resume_at_s": 1.0,
    "timer_pause_s": 1.0,
}

READY_WORKER = "Worker process is ready for action"
READY_SCHEDULER = "tasks.actors:sweep@sla"
DIRECT_FIRING_STARTED = "Redis is unreachable: firing due timers from PostgreSQL"
# Steps due while Redis is stopped fire from PostgreSQL within this.
OUTAGE_P99_TARGET_S = 2.0
# An idle worker polls Redis every SLA_POLL_INTERVAL_MS (25 ms): one of its
# connections has been idle for less than this unless it stopped polling.
POLL_IDLE_S = 2

# Each step's due instant and lateness: its first insert attempt, by the
# database's clock (tests/support/attempt_log.py), minus its due instant.
_STEP_TIMES = f"""
SELECT a.escalation_step,
       extract(epoch FROM t.due_at) + (e.escalation_config ->> 'after_seconds')::int,
       extract(epoch FROM min(a.seen_at) - t.due_at)
           - (e.escalation_config ->> 'after_seconds')::int
FROM {attempt_log.TABLE} a
JOIN sla_escalation_events e
  ON e.timer_id = a.timer_id AND e.escalation_step = a.escalation_step
JOIN sla_timers t ON t.id = a.timer_id
WHERE a.table_name = 'sla_escalation_events'
GROUP BY a.timer_id, a.escalation_step, t.due_at, e.escalation_config
"""


# p3's event check, over the events of due and steps (warnings and pauses are
# checked on their own, against their own instants).
_CHECK_DUE_AND_STEP_EVENTS = f"""
SELECT * FROM ({
    _CHECK_EVENTS.replace(
        "FROM outbox_events o JOIN sla_timers t ON t.id = o.timer_id",
        "FROM outbox_events o JOIN sla_timers t ON t.id = o.timer_id"
        " WHERE o.event_type IN ('sla.timer.due', 'sla.escalation.triggered')",
    )
}) AS c
"""

# Warning rows: how many, sent, skipped, recorded before their instant; timers
# with fewer rows than thresholds; SENT rows without their event.
_CHECK_WARNING_ROWS = """
SELECT count(*),
       count(*) FILTER (WHERE outcome = 'SENT'),
       count(*) FILTER (WHERE outcome = 'SKIPPED'),
       count(*) FILTER (WHERE recorded_at < scheduled_at),
       (SELECT count(*) FROM sla_timers t
        WHERE (SELECT count(*) FROM sla_timer_warnings w WHERE w.timer_id = t.id)
              < cardinality(t.warning_thresholds)),
       count(*) FILTER (WHERE outcome = 'SENT' AND NOT EXISTS (
           SELECT FROM outbox_events o
           WHERE o.timer_id = w.timer_id AND o.event_type = 'sla.timer.warning'
             AND (o.payload ->> 'threshold')::int = w.threshold))
FROM sla_timer_warnings w
"""

# Warning events: how many, distinct (timer, threshold), written before their
# instant, and those without a SENT row.
_CHECK_WARNING_EVENTS = """
SELECT count(*),
       count(DISTINCT (o.timer_id, o.payload ->> 'threshold')),
       count(*) FILTER (WHERE o.created_at < (o.payload ->> 'scheduled_at')::timestamptz),
       count(*) FILTER (WHERE NOT EXISTS (
           SELECT FROM sla_timer_warnings w
           WHERE w.timer_id = o.timer_id AND w.threshold = (o.payload ->> 'threshold')::int
             AND w.outcome = 'SENT'))
FROM outbox_events o WHERE o.event_type = 'sla.timer.warning'
"""

_CHECK_PAUSES = """
SELECT count(*) FILTER (WHERE event_type = 'sla.timer.paused'),
       count(*) FILTER (WHERE event_type = 'sla.timer.resumed'),
       (SELECT count(*) FROM sla_timers WHERE status = 'PAUSED')
FROM outbox_events
"""


def _check_warnings(conn) -> dict:
    rows, sent, skipped, rows_early, short, sent_without_event = conn.execute(
        _CHECK_WARNING_ROWS
    ).fetchone()
    events, distinct, events_early, without_row = conn.execute(_CHECK_WARNING_EVENTS).fetchone()
    return {
        "warning_rows": rows,
        "warnings_sent": sent,
        "warnings_skipped": skipped,
        "warning_events": events,
        "timers_short_of_warnings": short,
        "sent_warnings_without_event": sent_without_event,
        "warning_events_without_sent_row": without_row,
        "duplicate_warning_events": events - distinct,
        "early_warnings": rows_early + events_early,
    }


# --------------------------------------------------------------------------- own servers


@dataclass
class OwnServers:
    """A dedicated embedded PostgreSQL and Redis the chaos may restart, flush and pause."""

    pg_port: int = 54339
    redis_port: int = 63809
    # Where the server's user reaches it (root runs it as nobody: devtools/services.py).
    pg_data: Path = field(default_factory=lambda: services.pg_data_dir("chaos-pg"))
    redis_dir: Path = ROOT / ".data" / "chaos-redis"

    def start(self) -> tuple[str, str]:
        """(DATABASE_URL, REDIS_URL) of the running servers."""
        return self.start_pg(), self.start_redis()

    def start_redis(self) -> str:
        # No dumps: the flush, the pause and the stop are the faults, not a slow
        # disk; a stopped Redis comes back empty.
        options = {"save": "", "appendonly": "no"}
        return services.start_redis(self.redis_dir, self.redis_port, options)

    def stop_redis(self) -> None:
        services.stop_redis(self.redis_dir)

    def start_pg(self) -> str:
        return services.start_pg(self.pg_data, self.pg_port)

    def stop_pg(self) -> None:
        services.stop_pg(self.pg_data, mode="fast")

    def stop(self) -> None:
        services.stop_pg(self.pg_data)
        services.stop_redis(self.redis_dir)

    @contextmanager
    def exclusive(self):
        """Hold these servers for one run: another run on the same data directories
        (``make chaos`` beside the slow test) would restart and stop them under it."""
        lock = self.pg_data.parent / f"chaos-{self.pg_port}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"another chaos run holds {lock}; waiting for it", flush=True)
                fcntl.flock(f, fcntl.LOCK_EX)
            yield


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A worker or scheduler process group and when it said it was ready."""

    role: str
    slot: int
    service: Service
    started: float  # wall-clock epoch seconds
    offset: int  # where this process's lines start in its log
    ready_at: float | None = None
    killed: bool = False
    exited_at: float | None = None

    def log_text(self) -> str:
        with self.service.log.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")


class Chaos:
    """The processes of one run, the faults injected into them, and what was seen."""

    def __init__(self, bench: Bench, params: dict, log_dir: Path, own: OwnServers | None):
        import redis

        self.bench, self.params, self.log_dir, self.own = bench, params, log_dir, own
        self.rng = random.Random(params["seed"])
        self.workers: list[Proc] = []
        self.schedulers: list[Proc] = []
        self.retired: list[Proc] = []  # killed workers
        self.faults: list[dict] = []
        self.polling_samples: list[dict] = []
        self.lock = threading.Lock()
        # A short timeout: the driver must not hang on a paused Redis either.
        self.redis = redis.Redis.from_url(bench.redis_url, socket_timeout=1)
        log_dir.mkdir(parents=True, exist_ok=True)

    # -- processes

    def _spawn(self, role: str, slot: int) -> Proc:
        log = self.log_dir / f"{role}-{slot}.log"
        offset = log.stat().st_size if log.exists() else 0
        if role == "worker":
            args = [str(BIN / "dramatiq"), "tasks", "--processes", "1"]
            args += ["--threads", str(self.params["threads"])]
        else:  # the Procfile's scheduler
            args = [str(BIN / "python"), "-m", "tasks.scheduler"]
        service = Service(args, self.bench.env, log, ready=None)
        return Proc(role, slot, service, time.time(), offset)

    def start(self, timeout: float = 60) -> None:
        """Start every worker and scheduler at once; wait until all are ready."""
        self.workers = [self._spawn("worker", i) for i in range(self.params["workers"])]
        self.schedulers = [self._spawn("scheduler", i) for i in range(self.params["schedulers"])]
        deadline = time.monotonic() + timeout
        while not all(p.ready_at for p in self.workers + self.schedulers):
            self.watch()
            for p in self.workers + self.schedulers:
                if p.exited_at:
                    raise RuntimeError(f"{p.role} {p.slot} did not start:\n{p.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("processes did not start in time")
            time.sleep(0.05)

    def watch(self) -> None:
        """Note processes that became ready or exited."""
        now = time.time()
        for p in self.workers + self.schedulers:
            if p.ready_at is None:
                ready = READY_WORKER if p.role == "worker" else READY_SCHEDULER
                if ready in p.log_text():
                    p.ready_at = now
            if p.exited_at is None and p.service.proc.poll() is not None:
                p.exited_at = now

    def kill_worker(self, slot: int | None = None) -> None:
        """SIGKILL a worker's process group (a random ready one) and start a new one."""
        ready = [p for p in self.workers if p.ready_at and not p.exited_at]
        if slot is None:
            if not ready:
                return
            slot = self.rng.choice(ready).slot
        victim = self.workers[slot]
        at = time.time()
        victim.service.kill()
        victim.killed, victim.exited_at = True, time.time()
        self.retired.append(victim)
        self.workers[slot] = self._spawn("worker", slot)
        self.record("worker SIGKILL", at, at, f"worker {slot}, pid {victim.service.pid}")

    def stop(self) -> None:
        for p in self.workers + self.schedulers:
            p.service.stop()

    # -- faults

    def record(self, kind: str, start: float, end: float, detail: str = "") -> dict:
        fault = {"kind": kind, "start": start, "end": end, "detail": detail}
        with self.lock:
            self.faults.append(fault)
        logging.getLogger("chaos").warning(
            "%s %s (%.1f s) %s",
            datetime.fromtimestamp(start, UTC).strftime("%H:%M:%S"),
            kind,
            end - start,
            detail,
        )
        return fault

    def flush_redis(self) -> None:
        """FLUSHALL on our own Redis; FLUSHDB on a shared one, whose other databases
        belong to others."""
        at = time.time()
        if self.own:
            self.redis.flushall()
            self.record("Redis FLUSHALL", at, at)
        else:
            self.redis.flushdb()
            self.record("Redis FLUSHDB", at, at)

    def restart_pg(self, down_s: float) -> None:
        """Fast shutdown, ``down_s`` seconds down, start (blocks until it accepts)."""
        assert self.own, "never restart a shared PostgreSQL"
        started = time.time()
        self.own.stop_pg()
        time.sleep(down_s)
        for attempt in range(10):  # a start that fails (port not yet free) is retried
            try:
                self.own.start_pg()
                break
            except (SystemExit, subprocess.CalledProcessError) as exc:
                logging.getLogger("chaos").warning("PostgreSQL start %d failed: %s", attempt, exc)
                time.sleep(1)
        self.record("PostgreSQL restart", started, time.time(), f"fast stop, {down_s:g} s down")

    def pause_redis(self, seconds: float) -> None:
        """CLIENT PAUSE ALL: every client's commands wait ``seconds``."""
        assert self.own, "never pause a shared Redis"
        at = time.time()
        self.redis.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")
        self.record("Redis CLIENT PAUSE", at, at + seconds, f"{seconds:g} s, ALL")

    def stop_redis(self, down_s: float) -> None:
        """Redis stopped (SIGTERM), ``down_s`` seconds down, started again empty."""
        assert self.own, "never stop a shared Redis"
        started = time.time()
        self.own.stop_redis()
        stopped = time.time()
        time.sleep(max(0.0, down_s - (stopped - started)))
        for attempt in range(10):  # a start that fails (port not yet free) is retried
            try:
                self.own.start_redis()
                break
            except (SystemExit, subprocess.CalledProcessError) as exc:
                logging.getLogger("chaos").warning("Redis start %d failed: %s", attempt, exc)
                time.sleep(1)
        self.record("Redis stopped", started, time.time(), f"{down_s:g} s down, back empty")

    def sample_polling(self) -> None:
        """Which running workers polled Redis in the last POLL_IDLE_S: the idle
        time Redis reports (CLIENT LIST) for the connections of each worker
        process. A worker alive but not polling would never fire anything."""
        import psutil

        now = time.time()
        running = [p for p in self.workers if p.ready_at and not p.exited_at]
        try:
            idle = {c["addr"]: int(c["idle"]) for c in self.redis.client_list()}
        except Exception:  # paused or flushed mid-call: no sample
            return
        port = int(self.bench.redis_url.split(":")[-1].split("/")[0])
        deaf = []
        for p in running:
            if now - p.ready_at < POLL_IDLE_S:
                continue  # just booted
            try:
                procs = psutil.Process(p.service.pid).children(recursive=True)
                addrs = {
                    f"{c.laddr.ip}:{c.laddr.port}"
                    for proc in procs
                    for c in proc.net_connections(kind="tcp")
                    if c.raddr and c.raddr.port == port
                }
            except psutil.Error:  # exited meanwhile
                continue
            if min((idle[a] for a in addrs if a in idle), default=POLL_IDLE_S + 1) > POLL_IDLE_S:
                deaf.append(p.service.pid)
        self.polling_samples.append({"at": now, "running": len(running), "deaf": deaf})


# --------------------------------------------------------------------------- the run


def _seed(
    bench: Bench, params: dict, webhooks: _Webhooks | None = None
) -> tuple[datetime, list[datetime]]:
    from tasks.wakeups import schedule_wakeups  # only once the environment is set

    tenant, _ = bench.tenant()
    if webhooks:  # before any event: the trigger fans out only to existing subscriptions
        from .p6_webhooks import subscribe

        subscribe(bench, tenant, webhooks.url, webhooks.secret)
    n = params["timers"]
    t0 = datetime.now(UTC) + timedelta(seconds=params["due_in_s"])
    seed_timers(
        bench,
        tenant,
        n,
        "%(t0)s::timestamptz + make_interval(secs => (g - 1) * %(spread)s / %(n)s)",
        steps=_ladder(params["step2_after_s"]),
        window_seconds=params["window_s"],
        params={"t0": t0, "spread": params["spread_s"]},
    )
    thresholds = sorted(params["warning_thresholds"])
    with bench.connect() as c:
        if thresholds:  # as a start stores them: the first fire is the first warning
            c.execute(
                "UPDATE sla_timers SET warning_thresholds = %(t)s, next_fire_at = started_at"
                " + make_interval(secs => window_seconds * %(first)s / 100.0)",
                {"t": thresholds, "first": thresholds[0]},
            )
        instants = [r[0] for r in c.execute("SELECT DISTINCT next_fire_at FROM sla_timers")]
    schedule_wakeups(instants)  # as the starts would have
    return t0, instants


def _timeline(params: dict, t0: float, last_due: float, rng: random.Random) -> list:
    """(epoch, action, argument), sorted."""
    events = []
    for name, action, arg in (
        ("flush_at_s", "flush", None),
        ("pg_restart_at_s", "pg_restart", params["pg_down_s"]),
        ("pause_at_s", "pause", params["pause_s"]),
        ("redis_outage_at_s", "redis_outage", params.get("redis_outage_s")),
    ):
        if params.get(name) is not None:
            events.append((t0 + params[name], action, arg))
    events += [(t0 + at, "kill", None) for at in params["kill_at_s"]]
    if params.get("kill_every_s"):
        at = t0
        while at < last_due:
            events.append((at, "kill", None))
            at += rng.uniform(0.5, 1.5) * params["kill_every_s"]
    return sorted(events, key=lambda e: e[0])


def run(bench: Bench, params: dict, log_dir: Path, own: OwnServers | None = None) -> dict:
    """Seed, start the processes, inject the faults, wait, check. ``own``: servers
    the run may restart; without, only kills and FLUSHDB are allowed."""
    if not own and any(
        params.get(name) is not None
        for name in ("pg_restart_at_s", "pause_at_s", "redis_outage_at_s")
    ):
        raise ValueError("a PostgreSQL restart, a Redis pause or stop needs servers of our own")
    webhooks = _Webhooks(params, log_dir) if params.get("webhooks") else None
    if webhooks:  # every worker and scheduler sends to it, with the run's settings
        bench = dataclasses.replace(bench, env={**bench.env, **webhooks.env})
    chaos = Chaos(bench, params, log_dir, own)
    n = params["timers"]
    with bench.connect() as c:  # the tables' owner
        attempt_log.install(c)
    run_started = time.time()
    threads: list[threading.Thread] = []
    try:
        chaos.start()
        booted = time.time()
        t0_dt, _ = _seed(bench, params, webhooks)
        t0 = t0_dt.timestamp()
        last_due = t0 + params["spread_s"] + params["step2_after_s"]
        timeline = _timeline(params, t0, last_due, chaos.rng)
        if time.time() > min([t0, *(at for at, _, _ in timeline)]):
            raise RuntimeError("seeding took longer than due_in_s: raise it")

        deadline = last_due + params["deadline_s"]
        timer_pauses = _TimerPauses(params, t0) if params.get("pause_every") else None
        if timer_pauses:
            timer_pauses.start()
            t = threading.Thread(target=timer_pauses.run, args=(deadline,), daemon=True)
            t.start()
            threads.append(t)
        complete_at = None
        next_sample = 0.0
        progress = _Progress(bench)
        try:
            while time.time() < deadline:
                now = time.time()
                while timeline and timeline[0][0] <= now:
                    _, action, arg = timeline.pop(0)
                    if action == "kill":
                        chaos.kill_worker()
                    elif action == "flush":
                        chaos.flush_redis()
                    elif action == "pause":
                        chaos.pause_redis(arg)
                    elif action in ("pg_restart", "redis_outage"):  # in the background
                        target = chaos.restart_pg if action == "pg_restart" else chaos.stop_redis
                        t = threading.Thread(target=target, args=(arg,), daemon=True)
                        t.start()
                        threads.append(t)
                chaos.watch()
                if now >= next_sample:
                    chaos.sample_polling()
                    next_sample = now + 1.0
                if not timeline and not any(t.is_alive() for t in threads) and progress.done(n):
                    complete_at = time.time()
                    break
                time.sleep(0.1)
            if webhooks and complete_at is not None:
                # Then every event to the receiver (the kills have ended by now).
                until = time.time() + params["webhook_deadline_s"]
                with bench.connect() as c:  # due, steps, warnings, pauses: every event
                    expected = c.execute("SELECT count(*) FROM outbox_events").fetchone()[0]
                while time.time() < until and not webhooks.done(expected):
                    chaos.watch()
                    if time.time() >= next_sample:
                        chaos.sample_polling()
                        next_sample = time.time() + 1.0
                    time.sleep(0.5)
                if webhooks.done(expected):
                    webhooks.complete_at = time.time()
        finally:
            progress.close()
            for _ in range(max(1, round(params["settle_s"]))):
                time.sleep(1)
                chaos.watch()
                chaos.sample_polling()
        processes = _processes(chaos)
        with bench.connect() as c:
            figures = check(c, n)
            if timer_pauses:
                figures.update(timer_pauses.figures(c))
            step_times = [(s, float(a), float(b)) for s, a, b in c.execute(_STEP_TIMES)]
            if webhooks:
                figures.update(webhooks.figures(c, last_due))
    finally:
        for t in threads:
            t.join(60)
        chaos.stop()
        if webhooks:
            webhooks.stop()

    figures.update(
        _lateness(step_times, chaos.faults, params["window_lead_s"], params["window_tail_s"])
    )
    figures.update(processes)
    from models.config import get_settings  # the workers' environment is ours

    figures.update(
        {
            "timers": n,
            # A batch claimed by a killed worker waits for its lease, then a sweep.
            "lateness_bound_s": get_settings().lease_seconds + TICK_S,
            "worker_kills": sum(f["kind"] == "worker SIGKILL" for f in chaos.faults),
            "processes_ready_s": round(booted - run_started, 2),
            "complete_s_after_last_due": (
                round(complete_at - last_due, 1) if complete_at is not None else None
            ),
            "duration_s": round(time.time() - run_started, 1),
        }
    )
    faults = [
        {
            "kind": f["kind"],
            "start": datetime.fromtimestamp(f["start"], UTC).isoformat(timespec="milliseconds"),
            "end": datetime.fromtimestamp(f["end"], UTC).isoformat(timespec="milliseconds"),
            "start_s": round(f["start"] - t0, 2),  # from the first due instant
            "seconds": round(f["end"] - f["start"], 2),
            "detail": f["detail"],
        }
        for f in chaos.faults
    ]
    return {
        "params": params,
        "t0": t0_dt.isoformat(timespec="milliseconds"),
        "last_due": datetime.fromtimestamp(last_due, UTC).isoformat(timespec="milliseconds"),
        "figures": figures,
        "faults": faults,
        "polling_samples": chaos.polling_samples,
        "lateness_by_10_s": _bins(step_times, t0, 10),
        # (step, due instant, lateness) of every step: for the plot, not the JSON.
        "step_times": step_times,
    }


class _Webhooks:
    """The run's webhook subscription: a flaky receiver process and what it saw."""

    PATH = "/hook"

    def __init__(self, params: dict, log_dir: Path):
        from models.signatures import new_secret

        from .receiver import ReceiverProcess

        log_dir.mkdir(parents=True, exist_ok=True)
        self.secret = new_secret()
        timeout = params["webhook_timeout_s"]
        # A hang outlasts the sender's timeout, then the receiver closes the connection.
        spec = f"{self.PATH}=flaky:{params['webhook_fail']},{params['webhook_hang']},{timeout + 1}"
        self.receiver = ReceiverProcess(
            log_dir / "receiver.log", [spec], secrets={self.PATH: self.secret}, verify_every=50
        )
        self.url = self.receiver.url(self.PATH)
        self.env = {
            "SLA_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "1",
            "SLA_WEBHOOK_TIMEOUT_SECONDS": str(timeout),
            "SLA_WEBHOOK_RETRY_SCHEDULE": params["webhook_retry_schedule"],
            "SLA_WEBHOOK_MAX_IN_FLIGHT": str(params["webhook_max_in_flight"]),
        }
        self.complete_at: float | None = None

    def done(self, expected: int) -> bool:
        try:
            return self.receiver.received(self.PATH) >= expected
        except OSError:
            return False

    def figures(self, conn, last_due: float) -> dict:
        """Every event against the receiver's record: received, duplicates, latency."""
        receipts = self.receiver.receipts()[self.PATH]
        stats = self.receiver.stats()[self.PATH]
        events = conn.execute("SELECT id, extract(epoch FROM created_at) FROM outbox_events")
        latency, missing, total = [], 0, 0
        for outbox_id, created in events:
            total += 1
            got = receipts.get(f"evt_{outbox_id}")
            if got is None or got[0] is None:
                missing += 1
            else:
                latency.append(got[0] - float(created))
        statuses = dict(
            conn.execute("SELECT status, count(*) FROM webhook_deliveries GROUP BY 1").fetchall()
        )
        attempts = conn.execute("SELECT count(*) FROM webhook_attempts").fetchone()[0]
        return {
            "webhook_events": total,
            "webhook_received": total - missing,
            "webhook_missing": missing,
            # The same webhook-id answered 2xx more than once: at least once, not exactly once.
            "webhook_duplicates": stats["duplicates"],
            "webhook_ids_duplicated": stats["ids_duplicated"],
            "webhook_requests": stats["requests"],
            "webhook_answered_2xx": stats["answered_2xx"],
            "webhook_answered_500": stats["answered_500"],
            "webhook_hung": stats["hung"],
            "webhook_verified": stats["verified"],
            "webhook_bad_signatures": stats["bad_signatures"],
            "webhook_deliveries": statuses,
            "webhook_attempts_recorded": attempts,
            "webhook_latency": _dist(latency),
            "webhook_complete_s_after_last_due": (
                round(self.complete_at - last_due, 1) if self.complete_at else None
            ),
        }

    def stop(self) -> None:
        self.receiver.stop()


class _Progress:
    """Whether every timer has both steps and its events; survives a restart."""

    def __init__(self, bench: Bench):
        self.bench, self.conn = bench, None

    def done(self, n: int) -> bool:
        try:
            self.conn = self.conn or self.bench.connect()
            step1, step2, due, step_events = self.conn.execute(_PROGRESS).fetchone()
        except Exception:  # the server restarted under us: a new connection next time
            self.close()
            return False
        return min(step1, step2, due) >= n and step_events >= STEPS * n

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class _TimerPauses:
    """The driver pausing and resuming some timers while the faults go on, as
    the API does (models/pauses.py on locked rows, a wake-up after the commit).
    A failed attempt (the database restarting) is tried again; a timer no longer
    ACTIVE when its turn comes (its due fired meanwhile) is left running."""

    def __init__(self, params: dict, t0: float):
        from models.db import get_maintenance_engine  # once the environment is set

        self.engine = get_maintenance_engine()
        every = params["pause_every"]
        self.resume_at = t0 + params["resume_at_s"]
        self.pause_s = params["timer_pause_s"]
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT id, lead_id, next_fire_at FROM sla_timers").all()
        number = {r.id: int(r.lead_id.rsplit("-", 1)[1]) for r in rows}
        self.at_start = [r.id for r in rows if number[r.id] % every == 1]
        self.at_warning = sorted(
            (r.next_fire_at.timestamp(), r.id) for r in rows if number[r.id] % every == 2
        )
        self.to_resume: list[tuple[float, list]] = []  # (when, ids)
        self.paused = 0
        self.resumed = 0
        self.errors = 0

    def _locked(self, conn, ids: list, active_only: bool) -> list[dict]:
        only = " AND status = 'ACTIVE'" if active_only else ""
        return [
            dict(r)
            for r in conn.exec_driver_sql(
                f"SELECT * FROM sla_timers WHERE id = ANY(%(ids)s){only} ORDER BY id FOR UPDATE",
                {"ids": ids},
            ).mappings()
        ]

    def pause(self, ids: list) -> list:
        from models import pauses

        with self.engine.begin() as conn:
            done = pauses.pause_timers(conn, self._locked(conn, ids, True), "chaos")
        self.paused += len(done)
        return [t["id"] for t in done]

    def resume(self, ids: list) -> None:
        from models import pauses
        from tasks.wakeups import schedule_wakeups

        with self.engine.begin() as conn:
            done = pauses.resume_timers(conn, self._locked(conn, ids, False))
        self.resumed += len(done)
        schedule_wakeups([t["next_fire_at"] for t in done if t["next_fire_at"]])

    def start(self) -> None:
        """Pause the first group, before anything of theirs is due."""
        self.to_resume.append((self.resume_at, self.pause(self.at_start)))

    def run(self, deadline: float) -> None:
        while time.time() < deadline and (self.at_warning or self.to_resume):
            now = time.time()
            try:
                due = [tid for at, tid in self.at_warning if at <= now]
                if due:
                    paused = self.pause(due)
                    self.at_warning = self.at_warning[len(due) :]
                    self.to_resume.append((now + self.pause_s, paused))
                for entry in [e for e in self.to_resume if e[0] <= now]:
                    self.resume(entry[1])
                    self.to_resume.remove(entry)
            except Exception:  # the database restarting, say: again in a moment
                self.errors += 1
                time.sleep(0.5)
                continue
            time.sleep(0.02)

    def figures(self, conn) -> dict:
        paused_events, resumed_events, still_paused = conn.execute(_CHECK_PAUSES).fetchone()
        return {
            "timers_paused": self.paused,
            "timers_resumed": self.resumed,
            "paused_events": paused_events,
            "resumed_events": resumed_events,
            "still_paused": still_paused,
            "pause_errors_retried": self.errors,
        }


def check(conn, n: int) -> dict:
    """The invariants, from the database: its rows, and the insert attempts
    logged by its own trigger (which sees a duplicate ``ON CONFLICT DO NOTHING``
    drops, and times each attempt with the database's clock)."""
    steps_total, steps_distinct, steps_early, steps_failed = conn.execute(_CHECK_STEPS).fetchone()
    events_total, events_distinct_key, events_distinct_kind, events_early = conn.execute(
        _CHECK_DUE_AND_STEP_EVENTS
    ).fetchone()
    timers, missing, unfinished = conn.execute(
        _CHECK_TIMERS, {"steps": STEPS, "events": EVENTS_PER_TIMER}
    ).fetchone()
    warnings = _check_warnings(conn)
    return {
        **warnings,
        "timers_in_db": timers,
        "step_rows": steps_total,
        "outbox_events": events_total,
        # Timers short of a step row or an event, or not ESCALATED / COMPLETED.
        "lost": max(missing, unfinished, warnings["timers_short_of_warnings"]) + (n - timers),
        "missing_steps_or_events": missing,
        "not_final": unfinished,
        "duplicate_step_rows": steps_total - steps_distinct,
        "duplicate_events": events_total
        - min(events_distinct_key, events_distinct_kind)
        + warnings["duplicate_warning_events"],
        "early": steps_early + events_early + warnings["early_warnings"],
        "failed_steps": steps_failed,
        "duplicate_attempts": len(attempt_log.duplicate_attempts(conn)),
        "early_attempts": len(attempt_log.early_steps(conn)),
    }


def _dist(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50_s": round(percentile(values, 50), 3) if values else None,
        "p99_s": round(percentile(values, 99), 3) if values else None,
        "max_s": round(max(values), 3) if values else None,
    }


def _lateness(
    step_times: list[tuple[int, float, float]], faults: list[dict], lead_s: float, tail_s: float
) -> dict:
    """Lateness of each step by where its due instant falls: inside a fault's
    window (``lead_s`` before its start to ``tail_s`` after its end) or outside
    every one. Worker kills go on all the time: they are not windows."""
    windows = [
        (f["kind"], f["start"] - lead_s, f["end"] + tail_s)
        for f in faults
        if f["kind"] != "worker SIGKILL"
    ]
    outside, inside = [], []
    per_kind: dict[str, list[float]] = {kind: [] for kind, _, _ in windows}
    for _, instant, late in step_times:
        kinds = {kind for kind, start, end in windows if start <= instant <= end}
        (inside if kinds else outside).append(late)
        for kind in kinds:
            per_kind[kind].append(late)
    # Steps due while Redis was stopped, from its stop to its start: the
    # schedulers' direct firing alone could fire them.
    outages = [(f["start"], f["end"]) for f in faults if f["kind"] == "Redis stopped"]
    during_outage = [
        late
        for _, instant, late in step_times
        if any(start <= instant <= end for start, end in outages)
    ]
    return {
        "lateness_outside_windows": _dist(outside),
        "lateness_inside_windows": _dist(inside),
        "lateness_by_fault": {kind: _dist(v) for kind, v in per_kind.items()},
        "lateness_during_redis_outage": _dist(during_outage) if outages else None,
        "lateness_all": _dist([late for _, _, late in step_times]),
    }


def _bins(step_times: list[tuple[int, float, float]], t0: float, width: float) -> list[dict]:
    """Lateness by due instant, in bins of ``width`` seconds from t0."""
    bins: dict[int, list[float]] = {}
    for _, instant, late in step_times:
        bins.setdefault(int((instant - t0) // width), []).append(late)
    return [{"from_s": k * width, **_dist(bins[k])} for k in sorted(bins)]


def _processes(chaos: Chaos) -> dict:
    """Processes that died or went deaf without being killed."""
    chaos.watch()
    died = [p for p in chaos.workers if p.exited_at and not p.killed]
    # A thread that raised out of its loop (Python prints this line) leaves a
    # process that looks alive, e.g. without a consumer for its wake-ups.
    logs = [p.log_text() for p in chaos.workers + chaos.retired]
    dead_threads = sum(text.count("Exception in thread") for text in logs)
    schedulers_dead = [p for p in chaos.schedulers if p.exited_at]
    ticks = [p.log_text().count("Scheduling Actor") for p in chaos.schedulers]
    missed = [p.log_text().count("missed the sweep tick") for p in chaos.schedulers]
    direct = [p.log_text().count(DIRECT_FIRING_STARTED) for p in chaos.schedulers]
    # Per worker process, the longest run of samples (about a second apart) in
    # which it ran but did not poll Redis, while Redis answered.
    longest: dict[int, int] = {}
    current: dict[int, int] = {}
    for sample in chaos.polling_samples:
        current = {pid: current.get(pid, 0) + 1 for pid in sample["deaf"]}
        for pid, count in current.items():
            longest[pid] = max(longest.get(pid, 0), count)
    last = chaos.polling_samples[-1] if chaos.polling_samples else None
    return {
        "workers_exited_unkilled": len(died),
        "worker_threads_died": dead_threads,
        "schedulers_alive_at_end": len(chaos.schedulers) - len(schedulers_dead),
        "schedulers": len(chaos.schedulers),
        "scheduler_ticks_sent": ticks,
        "scheduler_ticks_missed": missed,
        "scheduler_direct_firing_periods": direct,
        # A consumer restarts a second after a connection error: a few samples
        # are a hiccup, more a worker that stopped listening.
        "workers_deaf_over_10_s": sum(n > 10 for n in longest.values()),
        "longest_deaf_s": max(longest.values(), default=0),
        "workers_polling_at_end": last["running"] - len(last["deaf"]) if last else None,
        "workers_running_at_end": last["running"] if last else None,
    }


# --------------------------------------------------------------------------- report


def rows(result: dict) -> list[dict]:
    f = result["figures"]
    out = f["lateness_outside_windows"]
    ins = f["lateness_inside_windows"]
    ok_procs = f["workers_exited_unkilled"] == 0 and f["schedulers_alive_at_end"] == f["schedulers"]

    def late(d: dict) -> str:
        if not d["n"]:
            return "none"
        return f"{d['p50_s']:.2f} / {d['p99_s']:.2f} / {d['max_s']:.2f} s ({d['n']:,} steps)"

    return [
        {
            "figure": "timers (two steps each)",
            "value": f"{f['timers']:,}",
            "target": "",
            "met": None,
        },
        {
            "figure": "faults injected",
            "value": ", ".join(
                f"{k} x{c}" if c > 1 else k
                for k, c in Counter(x["kind"] for x in result["faults"]).items()
            ),
            "target": "",
            "met": None,
        },
        {
            "figure": "lost (not final, or a step row / event short)",
            "value": f["lost"],
            "target": "0",
            "met": f["lost"] == 0,
        },
        {
            "figure": "duplicate step rows / outbox events",
            "value": f"{f['duplicate_step_rows']} / {f['duplicate_events']}",
            "target": "0 / 0",
            "met": f["duplicate_step_rows"] == 0 and f["duplicate_events"] == 0,
        },
        {
            "figure": "step rows or events attempted twice (insert-attempt log)",
            "value": f.get("duplicate_attempts", "not logged"),
            "target": "0",
            "met": f.get("duplicate_attempts") == 0 if "duplicate_attempts" in f else None,
        },
        {
            "figure": "written before their instant (worker's clock / database's clock)",
            "value": f"{f['early']} / {f.get('early_attempts', 'not logged')}",
            "target": "0 / 0",
            "met": f["early"] == 0 and f.get("early_attempts", 0) == 0,
        },
        {
            "figure": "lateness p50 / p99 / max outside fault windows",
            "value": late(out),
            "target": f"max ≤ {f['lateness_bound_s']} s (lease + tick)",
            "met": out["max_s"] is None or out["max_s"] <= f["lateness_bound_s"],
        },
        {
            "figure": "lateness p50 / p99 / max inside fault windows",
            "value": late(ins),
            "target": "",
            "met": None,
        },
        *[
            {
                "figure": f"  due in the window of: {kind}",
                "value": late(d),
                "target": "",
                "met": None,
            }
            for kind, d in f["lateness_by_fault"].items()
        ],
        *(
            [
                {
                    "figure": "lateness p50 / p99 / max of steps due while Redis was stopped",
                    "value": late(during),
                    "target": f"p99 ≤ {OUTAGE_P99_TARGET_S:g} s",
                    "met": during["n"] > 0 and during["p99_s"] <= OUTAGE_P99_TARGET_S,
                }
            ]
            if (during := f.get("lateness_during_redis_outage"))
            else []
        ),
        {
            "figure": "workers exited unkilled / schedulers alive at end",
            "value": f"{f['workers_exited_unkilled']} / "
            f"{f['schedulers_alive_at_end']} of {f['schedulers']}",
            "target": f"0 / {f['schedulers']} of {f['schedulers']}",
            "met": ok_procs,
        },
        {
            "figure": "worker threads that died (a consumer, a worker thread)",
            "value": f["worker_threads_died"],
            "target": "0",
            "met": f["worker_threads_died"] == 0,
        },
        {
            "figure": "workers polling Redis at end / running",
            "value": f"{f['workers_polling_at_end']} / {f['workers_running_at_end']}",
            "target": "all",
            "met": f["workers_polling_at_end"] == f["workers_running_at_end"],
        },
        {
            "figure": "workers running but not polling Redis for > 10 s (longest)",
            "value": f"{f['workers_deaf_over_10_s']} ({f['longest_deaf_s']} s)",
            "target": "0",
            "met": f["workers_deaf_over_10_s"] == 0,
        },
        {
            "figure": "scheduler ticks sent / missed (per scheduler)",
            "value": f"{f['scheduler_ticks_sent']} / {f['scheduler_ticks_missed']}",
            "target": "",
            "met": None,
        },
        *(
            [
                {
                    "figure": "periods of firing from PostgreSQL (per scheduler)",
                    "value": str(f["scheduler_direct_firing_periods"]),
                    "target": "",
                    "met": None,
                }
            ]
            if "scheduler_direct_firing_periods" in f
            else []
        ),
        {
            "figure": "all fired, after the last due instant",
            "value": "never"
            if f["complete_s_after_last_due"] is None
            else f"{f['complete_s_after_last_due']:.1f} s",
            "target": "",
            "met": f["complete_s_after_last_due"] is not None,
        },
        *_webhook_rows(f),
        {"figure": "run duration", "value": f"{f['duration_s']:.0f} s", "target": "", "met": None},
    ]


def _webhook_rows(f: dict) -> list[dict]:
    """The webhook figures, when the run had its flaky receiver."""
    if "webhook_events" not in f:
        return []
    late = f["webhook_latency"]
    done = f["webhook_complete_s_after_last_due"]
    statuses = f["webhook_deliveries"]
    return [
        {
            "figure": "webhook events answered 2xx by the flaky receiver",
            "value": f"{f['webhook_received']:,} of {f['webhook_events']:,}",
            "target": "all",
            "met": f["webhook_missing"] == 0 and f["webhook_events"] > 0,
        },
        {
            "figure": "webhook duplicates (same webhook-id answered 2xx again)",
            "value": f"{f['webhook_duplicates']} ({f['webhook_ids_duplicated']} ids)",
            "target": "a figure: at least once",
            "met": None,
        },
        {
            "figure": "receiver: requests / 2xx / 500 / hung past the timeout",
            "value": f"{f['webhook_requests']:,} / {f['webhook_answered_2xx']:,} / "
            f"{f['webhook_answered_500']:,} / {f['webhook_hung']:,}",
            "target": "",
            "met": None,
        },
        {
            "figure": "signatures verified (a sample) / bad",
            "value": f"{f['webhook_verified']:,} / {f['webhook_bad_signatures']}",
            "target": "- / 0",
            "met": f["webhook_bad_signatures"] == 0,
        },
        {
            "figure": "deliveries DELIVERED / PENDING / FAILED; attempts recorded",
            "value": f"{statuses.get('DELIVERED', 0):,} / {statuses.get('PENDING', 0):,} / "
            f"{statuses.get('FAILED', 0):,}; {f['webhook_attempts_recorded']:,}",
            "target": "all / 0 / 0",
            "met": statuses.get("PENDING", 0) == 0 and statuses.get("FAILED", 0) == 0,
        },
        {
            "figure": "webhook event to first 2xx p50 / p99 / max",
            "value": "none"
            if not late["n"]
            else f"{late['p50_s']:.2f} / {late['p99_s']:.2f} / {late['max_s']:.2f} s",
            "target": "",
            "met": None,
        },
        {
            "figure": "all webhooks received, after the last due instant",
            "value": "never" if done is None else f"{done:.1f} s",
            "target": "",
            "met": done is not None,
        },
    ]


def print_table(result: dict) -> None:
    lines = [("figure", "value", "target", "met")]
    for r in rows(result):
        met = {True: "yes", False: "NO", None: ""}[r["met"]]
        lines.append((r["figure"], str(r["value"]), r["target"], met))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    for i, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- chaos:begin -->", "<!-- chaos:end -->"
SECTION = f"""## Chaos suite

`make chaos` starts a dedicated embedded PostgreSQL and Redis under `.data/chaos-pg` and
`.data/chaos-redis` (ports 54339 and 63809; never the machine's servers, which are shared),
seeds 50,000 timers with a two-step ladder (step 1 at due, step 2 30 s later) due evenly
over five minutes, schedules their wake-ups as starts would, and runs four worker processes
(`dramatiq tasks --processes 1`, each in its own process group) and two schedulers
(`python -m tasks.scheduler`, the Procfile's: periodiq, and firing from PostgreSQL while
Redis is unreachable). Meanwhile it SIGKILLs a random worker every 5 s on average and
starts a new one in its place, flushes Redis once (FLUSHALL, 30 s after the first due
instant), restarts PostgreSQL once (`pg_ctl -m fast stop`, 5 s down, start; at 120 s),
pauses Redis for 30 s (`CLIENT PAUSE 30000 ALL`, at 210 s) and stops it for 60 s (SIGTERM
at 255 s; without persistence it comes back empty, as a crashed or replaced Redis would).
Schedulers are never restarted, and workers only after the driver's own kills: a process
that exits on its own, a thread that dies in one, or a worker that runs without polling
Redis is reported.

At the end it checks from the database that every timer reached its final state
(ESCALATED, processing COMPLETED) with one step row per (timer, step) and one outbox event
per (timer, kind, step), none attempted twice and none before its instant (by the
workers' `executed_at` and by the database's insert-attempt log, see
[How the tests count](#how-the-tests-count)), and reports the lateness of every step: its
first insert attempt, by the database's clock, minus its due instant. A step is inside a
fault's window when it falls due from 2 s before the fault began (a wake-up is on its way
through Redis and the worker up to 2 s ahead of its instant) to one sweeper tick (60 s)
after it ended; the kills go on throughout and have no window. The steps due while Redis
was stopped, from its stop to its start, are reported on their own (target p99 ≤ 2 s):
only the schedulers' firing from PostgreSQL can fire them.

With webhooks on (the default; `--webhooks 0` leaves them out) the tenant also has a
webhook subscription to every event type, pointed at a flaky receiver
(`bench/receiver.py`, a process of its own) that answers 500 to 20 % of requests and,
on a further 5 %, reads the request and answers nothing until past the sender's timeout
(`SLA_WEBHOOK_TIMEOUT_SECONDS=1`), then closes the connection. The workers being killed
claim, send, retry and record these deliveries; the retry schedule is shortened to
`0,1,1,2,2,2,2,2,2,2,2,2` (twelve attempts all failing: about 6e-8 per event) and
`SLA_WEBHOOK_MAX_IN_FLIGHT` raised to 64, so that one subscription taking every event has
room for the hung requests. After the timers, the run waits (at most 300 s) until the
receiver has answered 2xx to every event's `webhook-id`, and checks it against the outbox:
every event received, none FAILED or still PENDING, no bad signature in the sample it
verifies. Duplicates, the same `webhook-id` answered 2xx more than once (a worker killed
between the receiver's answer and its record, a lease that ended), are a figure, not a
failure: delivery is at least once, and receivers deduplicate by `webhook-id`
([docs/webhooks.md](webhooks.md)).

```sh
make chaos                                  # about 7 minutes on 2 cores
make chaos CHAOS_ARGS='--timers 5000 --no-doc --results /tmp/chaos.json'
.venv/bin/python -m bench.chaos --help      # every size and time; 'none' leaves a fault out
```

It writes `bench/results/chaos.json` (machine, parameters, every fault with its wall-clock
start and end, figures, lateness per 10 s of due instants), the process logs and the plot
under `bench/results/chaos/`, and the part of this section between the markers below.
`--keep-servers` leaves the servers running for a look at the database
(`psql -h 127.0.0.1 -p 54339 -U postgres chaos`). A small version (300 timers, one kill
and one FLUSHDB of the test's own Redis database, no restart or pause, about 15 s) runs in
the default test suite: `tests/acceptance/test_chaos.py`, which also checks the insert
attempts ([How the tests count](#how-the-tests-count)); `--slow` adds a run of
`bench.chaos` with 5,000 timers and every fault.

### Reading the figures

- A worker prefetches delayed wake-ups by the thousand, so a killed worker takes the ones
  it held, and their dedupe keys keep the sweeper from sending them again. The steps they
  were for fire at the next sweep: the boot sweep of the next worker to start (within
  seconds here, as a kill comes every 5 s) or else the scheduler's tick (at most 60 s).
  These are the teeth of the saw in the plot, and most of the lateness outside the
  windows. A boot sweep that sent the wake-ups of the whole horizon again, dedupe keys
  or not, would cut them to the replacement's start-up time; it does not, yet.
- A worker killed between claiming a batch and committing it leaves those rows PROCESSING
  until their lease expires (`SLA_LEASE_SECONDS`, 60 s); the next tick's sweep returns and
  fires them. These few steps are the maximum, bounded by lease + tick (120 s).
- The FLUSHALL costs little by itself: the workers hold the wake-ups in memory. Steps due
  during the Redis pause fire as it ends (lateness falls from 30 s to 0 across it); steps
  due during the PostgreSQL restart, within seconds of its end.

### Found by it

- **Workers stopped fetching wake-ups after Redis timed out.** During the pause a Redis
  command timed out (`SLA_REDIS_TIMEOUT_SECONDS`); Dramatiq's delay-queue consumer thread
  handles errors other than `ConnectionError` by requeueing its held messages over Redis,
  which timed out too and ended the thread. The worker process kept running, polling its
  other queue, and never fetched a wake-up again; with every worker in that state timers
  would only fire at the scheduler's ticks. The broker's consumers now treat every Redis
  error as a lost connection (Dramatiq then reconnects), and a replacing delay-queue
  consumer first puts back the wake-ups its predecessor held
  (`tasks/broker.py`, `OutageProofConsumer`; `tests/integration/test_broker.py`).

{BEGIN}
{END}
"""


PLOT = "chaos-lateness.png"


def plot(result: dict, step_times: list[tuple[int, float, float]], path: Path) -> None:
    """Lateness of every step against its due instant, the faults drawn behind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = datetime.fromisoformat(result["t0"]).timestamp()
    lead, tail = result["params"]["window_lead_s"], result["params"]["window_tail_s"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    colors = {
        "Redis FLUSHALL": "tab:red",
        "Redis FLUSHDB": "tab:red",
        "PostgreSQL restart": "tab:purple",
        "Redis CLIENT PAUSE": "tab:orange",
        "Redis stopped": "tab:brown",
    }
    kills = [f["start_s"] for f in result["faults"] if f["kind"] == "worker SIGKILL"]
    for f in result["faults"]:
        if f["kind"] in colors:
            start, end = f["start_s"], f["start_s"] + max(f["seconds"], 0.5)
            ax.axvspan(start, end, color=colors[f["kind"]], alpha=0.3, label=f["kind"])
            # The rest of its window: a step due here still counts as inside.
            ax.axvspan(start - lead, start, color=colors[f["kind"]], alpha=0.08)
            ax.axvspan(end, end + tail, color=colors[f["kind"]], alpha=0.08)
    ax.vlines(
        kills,
        0,
        1,
        transform=ax.get_xaxis_transform(),
        color="grey",
        alpha=0.3,
        linewidth=0.6,
        label="worker SIGKILL",
    )
    for step, marker in ((2, "tab:green"), (1, "tab:blue")):
        xs = [instant - t0 for s, instant, _ in step_times if s == step]
        ys = [max(late, 1e-3) for s, _, late in step_times if s == step]
        ax.scatter(xs, ys, s=1, color=marker, alpha=0.4, rasterized=True, label=f"step {step}")
    ax.set_yscale("log")
    ax.set_xlabel("due instant, seconds from the first")
    ax.set_ylabel("lateness (s)")
    ax.set_title(f"Chaos: {result['figures']['timers']:,} timers, two steps each")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7, markerscale=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"Run {m['date']} on {m['cores']} cores, {m['memory_gb']} GB, {m['platform']}; "
        f"Python {m['python']}, PostgreSQL {m['postgresql']} and Redis {m['redis']} "
        f"(dedicated), dramatiq {m['versions']['dramatiq']}; code at {m['commit']}"
        + (f" to {m['commit_at_end']}" if m.get("service_code_changed") else "")
        + ". First due instant "
        f"{result['t0']}, last step due {result['last_due']}.",
        "",
        "| figure | value | target | met |",
        "|---|---|---|---|",
    ]
    for r in rows(result):
        met = {True: "yes", False: "**no**", None: ""}[r["met"]]
        lines.append(f"| {r['figure']} | {r['value']} | {r['target']} | {met} |")
    lines += ["", "Faults other than the worker kills (seconds from the first due instant):", ""]
    lines += [
        f"- {f['start_s']:+.1f} s ({f['start']}): {f['kind']}"
        + (f", {f['seconds']:.1f} s" if f["seconds"] else "")
        + (f" ({f['detail']})" if f["detail"] else "")
        for f in result["faults"]
        if f["kind"] != "worker SIGKILL"
    ]
    kills = [f for f in result["faults"] if f["kind"] == "worker SIGKILL"]
    if kills:
        lines.append(
            f"- {len(kills)} worker SIGKILLs from {kills[0]['start_s']:+.1f} s "
            f"to {kills[-1]['start_s']:+.1f} s"
        )
    if result.get("plot"):
        lines += ["", f"![Lateness of every step against its due instant](../{result['plot']})"]
    return "\n".join(lines)


def update_doc(result: dict) -> None:
    """Rewrite only the chaos section's generated part of docs/reliability.md."""
    text = DOC.read_text() if DOC.exists() else "# Reliability\n"
    if BEGIN not in text:
        text = text.rstrip("\n") + "\n\n" + SECTION
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{render(result)}\n{END}{tail}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, default in FULL.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, list):
            parser.add_argument(flag, type=float, nargs="*", default=default)
        elif name in (
            "kill_every_s",
            "flush_at_s",
            "pg_restart_at_s",
            "pause_at_s",
            "redis_outage_at_s",
        ):
            parser.add_argument(
                flag,
                type=_optional_float,
                default=default,
                help=f"default {default} ('none' leaves it out)",
            )
        elif isinstance(default, str):
            parser.add_argument(flag, default=default, help=f"default {default}")
        elif isinstance(default, float):
            parser.add_argument(flag, type=float, default=default, help=f"default {default}")
        else:
            parser.add_argument(flag, type=int, default=default, help=f"default {default}")
    parser.add_argument("--pg-port", type=int, default=54339)
    parser.add_argument("--redis-port", type=int, default=63809)
    parser.add_argument(
        "--keep-servers",
        action="store_true",
        help="leave the dedicated PostgreSQL and Redis running",
    )
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/reliability.md")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="print the table of the results file and rewrite the doc from it; no run",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS / "chaos.json",
        help="where to write the results (process logs go beside it, in <name>/)",
    )
    args = parser.parse_args(argv)
    params = {name: getattr(args, name) for name in FULL}
    if args.render_only:
        result = json.loads(args.results.read_text())
        print_table(result)
        if not args.no_doc:
            update_doc(result)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    own = OwnServers(pg_port=args.pg_port, redis_port=args.redis_port)
    with own.exclusive():
        result, step_times = _run_on(own, params, args)
    log_dir = args.results.with_suffix("")
    out = args.results
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        plot(result, step_times, log_dir / PLOT)
        result["plot"] = (
            f"{log_dir.relative_to(ROOT)}/{PLOT}"
            if log_dir.is_relative_to(ROOT)
            else str(log_dir / PLOT)
        )
    except Exception as exc:  # the figures matter more than the picture
        print(f"no plot: {exc!r}")
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print()
    print_table(result)
    print(f"\nwrote {out}")
    if not args.no_doc:
        update_doc(result)
        print(f"updated {DOC}")
    return 0 if all(r["met"] is not False for r in rows(result)) else 1


def _run_on(own: OwnServers, params: dict, args) -> tuple[dict, list]:
    database_url, redis_url = own.start()
    os.environ.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SLA_BENCH_DATABASE": "chaos",
            "SLA_BENCH_REDIS_DB": "0",
        }
    )
    try:
        import redis

        bench = Bench.create()
        server = redis.Redis.from_url(bench.redis_url)
        server.flushall()  # ours: whatever a previous run left
        info = machine()
        info["redis"] = server.info("server")["redis_version"]
        info["commit"] = _commit()
        print(f"== chaos {params}", flush=True)
        result = run(bench, params, args.results.with_suffix(""), own)
        result = {"machine": info, **result}
        # Restarted workers import the code of the moment: did it change?
        info["commit_at_end"] = _commit()
        info["service_code_changed"] = _service_code_changed(info["commit"], info["commit_at_end"])
        return result, result.pop("step_times")
    finally:
        if not args.keep_servers:
            own.stop()


def _commit() -> str:
    """HEAD, and whether the code the processes import differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = git("status", "--porcelain", "--", "tasks", "models")
    return git("rev-parse", "--short", "HEAD") + (" (tasks/ or models/ modified)" if dirty else "")


def _service_code_changed(start: str, end: str) -> bool:
    if "modified" in start or "modified" in end:
        return True
    diff = subprocess.run(
        ["git", "diff", "--quiet", start, end, "--", "tasks", "models"], cwd=ROOT, check=False
    )
    return diff.returncode != 0


def _optional_float(raw: str) -> float | None:
    return None if raw.lower() == "none" else float(raw)


if __name__ == "__main__":
    sys.exit(main())
