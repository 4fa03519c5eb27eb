"""P1 burst: N timers due at the same instant, fired by real worker processes.

Measures the time from the due instant until every timer has its step row and
outbox events, as fires/s, and beside it the raw-SQL limit: the same writes
done as pure batched SQL (claim with SKIP LOCKED, timer update, step row, due
and step events in one statement per batch) on the same database and machine.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .common import Bench, percentile, running, seed_timers, worker

QUICK = {"timers": 20_000, "worker_processes": 2, "worker_threads": 8, "raw_connections": 2}
FULL = {"timers": 100_000, "worker_processes": 2, "worker_threads": 8, "raw_connections": 2}

TARGET_FIRES = 10_000
TARGET_RATIO = 0.25

# The raw limit: everything the firing path writes for a one-step timer, as one
# statement per batch of 500, with no application code in between.
RAW_FIRE = """
WITH claimed AS (
    SELECT id, tenant_id, lead_id, correlation_id, escalation_steps -> 0 AS step
    FROM sla_timers
    WHERE processing_status = 'PENDING' AND next_fire_at <= now()
    ORDER BY next_fire_at
    LIMIT 500
    FOR UPDATE SKIP LOCKED
),
updated AS (
    UPDATE sla_timers t SET status = 'ESCALATED', processing_status = 'COMPLETED',
        steps_done = 1, next_fire_at = NULL, updated_at = now()
    FROM claimed c WHERE t.id = c.id
),
steps AS (
    INSERT INTO sla_escalation_events (tenant_id, lead_id, timer_id, escalation_step,
        executed_at, outcome, escalation_config, correlation_id, idempotency_key)
    SELECT tenant_id, lead_id, id, 1, now(), 'SUCCESS', step, correlation_id, id::text || '-1'
    FROM claimed
    ON CONFLICT DO NOTHING
)
INSERT INTO outbox_events (tenant_id, timer_id, event_type, payload, correlation_id,
    idempotency_key)
SELECT c.tenant_id, c.id, k.event_type,
       jsonb_build_object('type', k.event_type, 'timer_id', c.id, 'lead_id', c.lead_id,
                          'step', c.step, 'correlation_id', c.correlation_id),
       c.correlation_id, c.id::text || k.suffix
FROM claimed c,
     (VALUES ('sla.timer.due', ':due'), ('sla.escalation.triggered', ':step:1'))
         AS k(event_type, suffix)
ON CONFLICT DO NOTHING
"""


def _count(bench: Bench) -> int:
    with bench.connect() as c:
        return c.execute("SELECT count(*) FROM sla_escalation_events").fetchone()[0]


def _fired_over_time(bench: Bench, due: datetime) -> list[tuple[float, int]]:
    """Cumulative fires against seconds since due, from the step rows' times."""
    with bench.connect() as c:
        rows = c.execute(
            """
            SELECT extract(epoch FROM executed_at - %s) AS s, count(*)
            FROM sla_escalation_events GROUP BY 1 ORDER BY 1
            """,
            (due,),
        ).fetchall()
    total, series = 0, []
    for seconds, n in rows:
        total += n
        series.append((float(seconds), total))
    return series


def _measure_ours(bench: Bench, params: dict, out_dir: Path) -> dict:
    from tasks.wakeups import schedule_wakeups

    n = params["timers"]
    tenant, _ = bench.tenant()
    log = out_dir / "p1-worker.log"
    log.unlink(missing_ok=True)
    with running(
        worker(
            bench,
            log,
            processes=params["worker_processes"],
            threads=params["worker_threads"],
            extra_env={
                "SLA_BATCH_SIZE": str(params.get("batch_size", 1000)),
                "SLA_FIRE_PARALLELISM": str(params.get("parallelism", 4)),
            },
        )
    ):
        due = datetime.now(UTC) + timedelta(seconds=5)
        seed_timers(bench, tenant, n, "%(due)s::timestamptz", params={"due": due})
        schedule_wakeups([due])  # one bucket: one wake-up for the whole burst
        samples = []
        deadline = time.monotonic() + 30 + n / 1000
        while time.monotonic() < deadline:
            fired = _count(bench)
            samples.append((time.time() - due.timestamp(), fired))
            if fired >= n:
                break
            time.sleep(0.25)  # counting is a scan: poll gently, it competes for the CPU
    done = samples[-1][0]
    with bench.connect() as c:
        first = c.execute("SELECT min(executed_at) FROM sla_escalation_events").fetchone()[0]
        events = c.execute(
            "SELECT count(*) FROM outbox_events WHERE event_type <> 'sla.timer.started'"
        ).fetchone()[0]
    series = _fired_over_time(bench, due)
    return {
        "fired": samples[-1][1],
        "seconds_from_due": done,
        "first_fire_lateness_s": (first - due).total_seconds() if first else None,
        "fires_per_s": samples[-1][1] / done,
        "events": events,
        "series": series,
        "p50_fire_s": percentile([s for s, _ in series], 50),
    }


def _measure_raw(bench: Bench, params: dict) -> dict:
    n = params["timers"]
    tenant, _ = bench.tenant()
    seed_timers(bench, tenant, n, "now() - interval '1 second'", prefix="raw-")

    def drain():
        with bench.connect() as c:
            while c.execute(RAW_FIRE).rowcount:
                pass

    threads = [threading.Thread(target=drain) for _ in range(params["raw_connections"])]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {"fired": _count(bench), "seconds": elapsed, "fires_per_s": _count(bench) / elapsed}


def run(bench: Bench, params: dict, out_dir: Path) -> dict:
    ours = _measure_ours(bench, params, out_dir)
    bench.reset()
    raw = _measure_raw(bench, params)
    ratio = ours["fires_per_s"] / raw["fires_per_s"]
    _plot(ours["series"], out_dir / "p1-burst.png", params["timers"])
    series = ours.pop("series")
    return {
        "params": params,
        "figures": {"ours": ours, "raw_sql": raw, "ratio": ratio, "series_points": len(series)},
        "plots": ["p1-burst.png"],
        "rows": [
            {
                "figure": f"burst of {params['timers']:,}: fires/s",
                "value": ours["fires_per_s"],
                "unit": "fires/s",
                "beside": "raw batched SQL",
                "beside_value": raw["fires_per_s"],
                "ratio": ratio,
                "target": f">= {TARGET_FIRES:,}/s and >= {TARGET_RATIO:.0%} of raw",
                "met": ours["fires_per_s"] >= TARGET_FIRES and ratio >= TARGET_RATIO,
            },
            {
                "figure": "burst: due until all fired",
                "value": ours["seconds_from_due"],
                "unit": "s",
                "target": "",
                "met": ours["fired"] == params["timers"],
            },
        ],
    }


def _plot(series: list[tuple[float, int]], path: Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([s for s, _ in series], [c for _, c in series], drawstyle="steps-post")
    ax.set_xlabel("seconds since the due instant")
    ax.set_ylabel("timers fired (cumulative)")
    ax.set_title(f"P1: burst of {n:,} timers due at one instant")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
