"""P3 recovery: timers due while Redis is wiped and every worker is SIGKILLed.

Real worker processes and a real periodiq scheduler run; N timers with a
two-step ladder (step 1 at due, step 2 a few seconds later) are seeded due a
few seconds ahead and their wake-ups scheduled as a start would. Once the
workers hold the delayed wake-ups in memory, every worker and the scheduler
are SIGKILLed (whole process groups) and the bench Redis database is flushed
(FLUSHDB, never FLUSHALL): every wake-up and dedupe key is gone. After the
last due instant has passed, the processes are started again and the clock
runs until every timer has both step rows and its three outbox events.

The database is then checked: exactly one step row per (timer, step), one
outbox event per idempotency key and per (timer, kind, step), nothing
written before its instant, and no timer left unfired after a generous
deadline.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .common import BIN, Bench, Service, percentile, seed_timers

QUICK = {
    "timers": 5_000,
    "processes": 2,
    "threads": 8,
    "due_in_s": 8.0,  # from the seeding to the first due instant
    "spread_s": 1.0,  # due instants spread over this window
    "step2_after_s": 8,  # far enough for step 2 to be due only after the recovery
    "restart_after_due_s": 1.0,  # restart this long after the last due instant
    "deadline_s": 100.0,  # generous: beyond one scheduler tick plus a lease
}
FULL = {
    **QUICK,
    "timers": 50_000,
    "due_in_s": 15.0,
    # The same 5k timers/s as QUICK: step 2 then measures re-established wake-ups,
    # not the firing capacity of 2 cores (which 25k timers/s exceeds).
    "spread_s": 10.0,
    "step2_after_s": 30,  # recovering 50k timers takes longer than 8 s on 2 cores
    "deadline_s": 200.0,
}

TICK_S = 60  # the scheduler's sweep interval: the recovery bound the design promises

STEPS = 2
EVENTS_PER_TIMER = 1 + STEPS  # sla.timer.due + one sla.escalation.triggered per step


def _ladder(step2_after_s: int) -> str:
    return json.dumps(
        [
            {"step": 1, "after_seconds": 0, "action": "notify", "target": "owner"},
            {
                "step": 2,
                "after_seconds": step2_after_s,
                "action": "reassign",
                "target": "team-lead",
            },
        ]
    )


def start_service(
    services: list[Service],
    args: list[str],
    env: dict[str, str],
    log: Path,
    ready: str,
    count: int = 1,
    timeout: float = 60,
) -> float:
    """Start a service, registered for cleanup before it can fail; wait until
    ``ready`` appears ``count`` times in its log. Returns seconds to ready."""
    log.unlink(missing_ok=True)
    started = time.monotonic()
    service = Service(args, env, log, ready=None)
    services.append(service)
    deadline = started + timeout
    while log.read_text(errors="replace").count(ready) < count:
        if service.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{args[0]} did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.02)
    return time.monotonic() - started


def start_worker(services, bench, log, params) -> float:
    # The command of bench.common.worker, but registered for cleanup before it
    # can fail to start, and ready only once every process is.
    args = [
        str(BIN / "dramatiq"),
        "tasks",
        "--processes",
        str(params["processes"]),
        "--threads",
        str(params["threads"]),
    ]
    return start_service(
        services,
        args,
        bench.env,
        log,
        "Worker process is ready for action",
        count=params["processes"],
    )


def start_scheduler(services, bench, log) -> float:
    return start_service(
        services, [str(BIN / "periodiq"), "tasks"], bench.env, log, ready="tasks.actors:sweep@sla"
    )


_PROGRESS = """
SELECT (SELECT count(*) FROM sla_escalation_events WHERE escalation_step = 1),
       (SELECT count(*) FROM sla_escalation_events WHERE escalation_step = 2),
       (SELECT count(*) FROM outbox_events WHERE event_type = 'sla.timer.due'),
       (SELECT count(*) FROM outbox_events WHERE event_type = 'sla.escalation.triggered')
"""

_CHECK_STEPS = """
SELECT count(*),
       count(DISTINCT (e.timer_id, e.escalation_step)),
       count(*) FILTER (WHERE e.executed_at < t.due_at
                        + make_interval(secs => (e.escalation_config ->> 'after_seconds')::int)),
       count(*) FILTER (WHERE e.outcome <> 'SUCCESS')
FROM sla_escalation_events e JOIN sla_timers t ON t.id = e.timer_id
"""

_CHECK_EVENTS = """
SELECT count(*),
       count(DISTINCT (o.tenant_id, o.idempotency_key)),
       count(DISTINCT (o.timer_id, o.event_type, coalesce(o.payload ->> 'escalation_step', ''))),
       count(*) FILTER (WHERE o.created_at < t.due_at
                        + make_interval(secs => coalesce(
                            (o.payload ->> 'after_seconds')::int, 0)))
FROM outbox_events o JOIN sla_timers t ON t.id = o.timer_id
"""

_CHECK_TIMERS = """
WITH s AS (SELECT timer_id, count(DISTINCT escalation_step) AS n
           FROM sla_escalation_events GROUP BY timer_id),
     o AS (SELECT timer_id, count(DISTINCT idempotency_key) AS n
           FROM outbox_events GROUP BY timer_id)
SELECT count(*),
       count(*) FILTER (WHERE coalesce(s.n, 0) < %(steps)s OR coalesce(o.n, 0) < %(events)s),
       count(*) FILTER (WHERE t.status <> 'ESCALATED' OR t.processing_status <> 'COMPLETED')
FROM sla_timers t LEFT JOIN s ON s.timer_id = t.id LEFT JOIN o ON o.timer_id = t.id
"""

_LATENESS = """
SELECT e.escalation_step,
       extract(epoch FROM e.executed_at - t.due_at) - (e.escalation_config ->> 'after_seconds')::int
FROM sla_escalation_events e JOIN sla_timers t ON t.id = e.timer_id
"""


def _dist(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50_s": round(percentile(values, 50), 3),
        "p95_s": round(percentile(values, 95), 3),
        "p99_s": round(percentile(values, 99), 3),
        "max_s": round(max(values), 3) if values else None,
        "min_s": round(min(values), 3) if values else None,
    }


def run(bench: Bench, params: dict, out_dir: Path) -> dict:
    import redis

    from tasks.wakeups import schedule_wakeups  # only after Bench.create set the env

    n = params["timers"]
    r = redis.Redis.from_url(bench.redis_url)
    tenant, _ = bench.tenant()
    services: list[Service] = []
    logs = out_dir / "p3"
    logs.mkdir(parents=True, exist_ok=True)
    figures: dict = {"timers": n}
    try:
        figures["first_boot_s"] = round(
            start_worker(services, bench, logs / "worker-1.log", params), 2
        )
        start_scheduler(services, bench, logs / "scheduler-1.log")

        # Seed: due instants spread over spread_s from t0, 1,000 distinct instants.
        t0 = datetime.now(UTC) + timedelta(seconds=params["due_in_s"])
        seed_timers(
            bench,
            tenant,
            n,
            "%(t0)s::timestamptz + make_interval(secs => mod(g - 1, 1000) * %(spread)s / 1000.0)",
            steps=_ladder(params["step2_after_s"]),
            params={"t0": t0, "spread": params["spread_s"]},
        )
        with bench.connect() as c:
            instants = [row[0] for row in c.execute("SELECT DISTINCT next_fire_at FROM sla_timers")]
        last_due = max(instants)
        figures["wakeups_sent"] = schedule_wakeups(instants)

        # Let the workers fetch the delayed wake-ups into memory.
        fetch_started = time.monotonic()
        try:
            while r.llen("dramatiq:sla.DQ") > 0:
                if time.monotonic() - fetch_started > 10:
                    raise TimeoutError
                time.sleep(0.02)
            figures["wakeups_fetched_by_workers"] = True
        except TimeoutError:
            figures["wakeups_fetched_by_workers"] = False
        figures["wakeups_held_in_worker_ack_sets"] = sum(
            r.scard(k) for k in r.scan_iter("dramatiq:__acks__.*.sla.DQ")
        )

        lead = (t0 - datetime.now(UTC)).total_seconds()
        if lead < 0.3:
            raise RuntimeError(f"setup took too long: {lead:.2f} s before due; raise due_in_s")
        with bench.connect() as c:
            fired_before_kill = c.execute("SELECT count(*) FROM sla_escalation_events").fetchone()[
                0
            ]

        # The outage: every process group SIGKILLed, then the bench Redis db wiped.
        for s in services:
            s.kill()
        r.flushdb()
        figures["killed_s_before_due"] = round(lead, 2)
        figures["fired_before_kill"] = fired_before_kill

        time.sleep(
            max(0.0, (last_due - datetime.now(UTC)).total_seconds() + params["restart_after_due_s"])
        )
        with bench.connect() as c:
            figures["fired_while_down"] = c.execute(
                "SELECT count(*) FROM sla_escalation_events"
            ).fetchone()[0]

        # Processes return; the clock runs from the moment they are spawned.
        restart_wall = datetime.now(UTC)
        restart = time.monotonic()
        figures["restart_s_after_last_due"] = round((restart_wall - last_due).total_seconds(), 3)
        figures["reboot_s"] = round(start_worker(services, bench, logs / "worker-2.log", params), 2)
        start_scheduler(services, bench, logs / "scheduler-2.log")

        recovered = complete = None
        deadline = restart + params["deadline_s"]
        with bench.connect() as c:
            while time.monotonic() < deadline:
                step1, step2, due_events, step_events = c.execute(_PROGRESS).fetchone()
                now = time.monotonic()
                if recovered is None and step1 >= n and due_events >= n:
                    recovered = now - restart
                if step1 >= n and step2 >= n and due_events >= n and step_events >= STEPS * n:
                    complete = now - restart
                    break
                time.sleep(0.05)
            time.sleep(1.0)  # anything written late would show up as a duplicate below

            steps_total, steps_distinct, steps_early, steps_failed = c.execute(
                _CHECK_STEPS
            ).fetchone()
            events_total, events_distinct_key, events_distinct_kind, events_early = c.execute(
                _CHECK_EVENTS
            ).fetchone()
            timers, lost, unfinished = c.execute(
                _CHECK_TIMERS, {"steps": STEPS, "events": EVENTS_PER_TIMER}
            ).fetchone()
            lateness: dict[int, list[float]] = {1: [], 2: []}
            for step, late in c.execute(_LATENESS):
                lateness[step].append(float(late))
    finally:
        for s in services:
            s.stop()

    duplicates = (steps_total - steps_distinct) + (
        events_total - min(events_distinct_key, events_distinct_kind)
    )
    early = steps_early + events_early + fired_before_kill
    restart_after_due = figures["restart_s_after_last_due"]
    figures.update(
        {
            "recovery_s_after_restart": round(recovered, 3) if recovered is not None else None,
            "complete_s_after_restart": round(complete, 3) if complete is not None else None,
            "recovery_s_after_last_due": (
                round(recovered + restart_after_due, 3) if recovered is not None else None
            ),
            "step_rows": steps_total,
            "outbox_events": events_total,
            "duplicates": duplicates,
            "fired_early": early,
            "failed_steps": steps_failed,
            "lost": lost,
            "unfinished": unfinished,
            "timers_checked": timers,
            # Step 1 is late by the whole outage; step 2 (due after the restart) should not be.
            "lateness_step1": _dist(lateness[1]),
            "lateness_step2": _dist(lateness[2]),
        }
    )
    rec = figures["recovery_s_after_restart"]
    rows = [
        {
            "figure": "recovery after restart (all due steps fired)",
            "value": rec,
            "unit": "s",
            "beside": "scheduler tick bound",
            "beside_value": TICK_S,
            "ratio": round(rec / TICK_S, 3) if rec is not None else None,
            "target": f"≤ {TICK_S} s",
            "met": rec is not None and rec <= TICK_S,
        },
        {
            "figure": "recovery after the last due instant",
            "value": figures["recovery_s_after_last_due"],
            "unit": "s",
            "beside": "outage past due (restart - due)",
            "beside_value": restart_after_due,
            "ratio": None,
            "target": f"≤ {TICK_S} s",
            "met": rec is not None and figures["recovery_s_after_last_due"] <= TICK_S,
        },
        {
            "figure": f"step 2 lateness p99 (due {params['step2_after_s']} s after step 1)",
            "value": figures["lateness_step2"]["p99_s"],
            "unit": "s",
            "beside": "step 1 lateness p99 (due in outage)",
            "beside_value": figures["lateness_step1"]["p99_s"],
            "ratio": None,
            "target": "",
            "met": None,
        },
        {
            "figure": "lost timers",
            "value": lost,
            "unit": "timers",
            "beside": "timers due in the outage",
            "beside_value": n,
            "ratio": None,
            "target": "0",
            "met": lost == 0 and unfinished == 0 and timers == n,
        },
        {
            "figure": "duplicate step rows / events",
            "value": duplicates,
            "unit": "rows",
            "beside": "step rows + events written",
            "beside_value": steps_total + events_total,
            "ratio": None,
            "target": "0",
            "met": duplicates == 0,
        },
        {
            "figure": "fired before due",
            "value": early,
            "unit": "rows",
            "beside": "",
            "beside_value": None,
            "ratio": None,
            "target": "0",
            "met": early == 0,
        },
    ]
    return {"params": params, "figures": figures, "rows": rows}
