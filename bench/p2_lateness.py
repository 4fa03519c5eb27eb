"""P2 lateness at scale: a steady stream of timers due now among many far-off ones.

Our design: M active timers spread over 7 days (only those within the horizon
have a wake-up in Redis) while a stream of timers is started, like the API
does, each due a few seconds later; real workers and a real scheduler fire
them. Lateness is the step row's execution time minus the due time.

Beside it, in the same run, the naive design: every timer is a Dramatiq
delayed message (no horizon, no shared wake-ups, no sweeper), with K far-off
timers in Redis ahead of the same stream.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .common import ROOT, Bench, Service, percentile, running, seed_timers, worker

QUICK = {
    "active_timers": 100_000,
    "stream_rate": 100,
    "stream_seconds": 30,
    "window_seconds": 5,
    "naive_far_timers": 20_000,
}
FULL = {
    "active_timers": 1_000_000,
    "stream_rate": 100,
    "stream_seconds": 60,
    "window_seconds": 5,
    "naive_far_timers": 100_000,
}
TARGET_P50_MS = 100
TARGET_P99_MS = 1000

# Every timer its own delayed message, held in Redis for as long as it takes.
NAIVE_ENV = {
    "SLA_WAKEUP_HORIZON_SECONDS": str(8 * 86400),
    "SLA_WAKEUP_BUCKET_MS": "1",
    "SLA_WAKEUP_LEAD_MS": "0",
}


def _stream(rate: int, seconds: int, window: int, prefix: str) -> None:
    """Start timers as the API does (commit, then schedule the wake-up)."""
    from models import tenants as tenant_sql
    from models import timers as timer_sql
    from models.db import get_maintenance_engine
    from models.sla import DEFAULT_LADDER, due_at, utcnow
    from tasks.wakeups import schedule_wakeups

    engine = get_maintenance_engine()
    with engine.begin() as conn:
        tenant, _ = tenant_sql.create_tenant(conn, "stream")
    started = time.monotonic()
    for i in range(rate * seconds):
        pause = started + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        now = utcnow()
        new = timer_sql.NewTimer(
            lead_id=f"{prefix}{i}",
            sla_contract_id="default",
            started_at=now,
            window_seconds=window,
            escalation_steps=[dict(s) for s in DEFAULT_LADDER],
            correlation_id=f"{prefix}{i}",
            metadata={},
        )
        with engine.begin() as conn:
            timer, _ = timer_sql.start_timer(conn, tenant, new, due_at(now, window), now)
        schedule_wakeups([timer["due_at"]])


def _far_wakeups(n: int) -> None:
    """Naive design: one delayed message per far-off timer (seeded separately)."""
    from tasks.wakeups import schedule_wakeups

    now = datetime.now(UTC)
    span = 7 * 86400
    schedule_wakeups([now + timedelta(seconds=600 + i * span / n) for i in range(n)], now=now)


def _run_stream(bench: Bench, params: dict, prefix: str, extra_env: dict) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.p2_lateness",
            "stream",
            "--rate",
            str(params["stream_rate"]),
            "--seconds",
            str(params["stream_seconds"]),
            "--window",
            str(params["window_seconds"]),
            "--prefix",
            prefix,
        ],
        cwd=ROOT,
        env={**bench.env, **extra_env},
        check=True,
    )


def _lateness(bench: Bench, prefix: str, expected: int, wait_s: float) -> dict:
    deadline = time.monotonic() + wait_s
    query = """
        SELECT extract(epoch FROM e.executed_at - t.due_at) * 1000
        FROM sla_escalation_events e JOIN sla_timers t ON t.id = e.timer_id
        WHERE t.lead_id LIKE %s
    """
    with bench.connect() as c:
        while True:
            values = [float(v) for (v,) in c.execute(query, (prefix + "%",)).fetchall()]
            if len(values) >= expected or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    return {
        "fired": len(values),
        "expected": expected,
        "p50_ms": percentile(values, 50),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values) if values else float("nan"),
        "min_ms": min(values) if values else float("nan"),
        "values_ms": values,
    }


def _seed_far(bench: Bench, tenant: str, n: int) -> None:
    """n timers due from 10 minutes on, spread evenly over 7 days."""
    seed_timers(
        bench,
        tenant,
        n,
        "now() + interval '10 minutes' + g * (interval '7 days' / %(n)s)",
        prefix="far-",
        params={"n": n},
    )


def run(bench: Bench, params: dict, out_dir: Path) -> dict:
    expected = params["stream_rate"] * params["stream_seconds"]
    tenant, _ = bench.tenant()

    # Our design: far-off timers in PostgreSQL only; the scheduler's sweeps
    # bring the ones entering the horizon into Redis.
    _seed_far(bench, tenant, params["active_timers"])
    log = out_dir / "p2-ours.log"
    log.unlink(missing_ok=True)
    with running(
        worker(bench, log),
        Service(
            [sys.executable, "-m", "tasks.scheduler"],
            bench.env,
            log,
            ready="Registered periodic actors",
        ),
    ):
        _run_stream(bench, params, "stream-", {})
        ours = _lateness(bench, "stream-", expected, 30)

    # Naive: the same stream behind K far-off delayed messages, no sweeper.
    bench.reset()
    tenant, _ = bench.tenant()
    _seed_far(bench, tenant, params["naive_far_timers"])
    subprocess.run(
        [sys.executable, "-m", "bench.p2_lateness", "far", "--n", str(params["naive_far_timers"])],
        cwd=ROOT,
        env={**bench.env, **NAIVE_ENV},
        check=True,
    )
    log = out_dir / "p2-naive.log"
    log.unlink(missing_ok=True)
    with running(worker(bench, log, extra_env=NAIVE_ENV)):
        _run_stream(bench, params, "naive-", NAIVE_ENV)
        naive = _lateness(bench, "naive-", expected, 30)

    _plot(ours["values_ms"], naive["values_ms"], out_dir / "p2-lateness.png", expected)

    def naive_figure(key: str):
        return naive[key] if naive["fired"] else "none fired"

    ours_values, naive_values = ours.pop("values_ms"), naive.pop("values_ms")
    lost_naive = expected - naive["fired"]
    return {
        "params": params,
        "figures": {
            "ours": ours,
            "naive": naive,
            "naive_unfired_after_30s": lost_naive,
            "samples": {"ours": len(ours_values), "naive": len(naive_values)},
        },
        "plots": ["p2-lateness.png"],
        "rows": [
            {
                "figure": f"lateness p50 ({params['active_timers']:,} active)",
                "value": ours["p50_ms"],
                "unit": "ms",
                "beside": f"naive, {params['naive_far_timers']:,} far msgs",
                "beside_value": naive_figure("p50_ms"),
                "ratio": None,
                "target": f"<= {TARGET_P50_MS} ms",
                "met": ours["p50_ms"] <= TARGET_P50_MS and ours["fired"] == expected,
            },
            {
                "figure": "lateness p99",
                "value": ours["p99_ms"],
                "unit": "ms",
                "beside": "naive",
                "beside_value": naive_figure("p99_ms"),
                "ratio": None,
                "target": f"<= {TARGET_P99_MS} ms",
                "met": ours["p99_ms"] <= TARGET_P99_MS,
            },
            {
                "figure": "lateness max",
                "value": ours["max_ms"],
                "unit": "ms",
                "beside": "naive",
                "beside_value": naive_figure("max_ms"),
                "ratio": None,
                "target": "",
                "met": None,
            },
            {
                "figure": "stream timers fired within 30 s of the end",
                "value": ours["fired"],
                "unit": f"of {expected}",
                "beside": "naive",
                "beside_value": naive["fired"],
                "ratio": None,
                "target": "all",
                "met": ours["fired"] == expected,
            },
        ],
    }


def _plot(ours: list[float], naive: list[float], path: Path, naive_expected: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for values, label in ((ours, "horizon + shared wake-ups"), (naive, "naive: one message each")):
        if values:
            ordered = sorted(values)
            ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
    if not naive:
        ax.text(
            0.98,
            0.05,
            f"naive design: 0 of {naive_expected:,} fired within 30 s",
            transform=ax.transAxes,
            ha="right",
        )
    ax.set_xlabel("lateness (ms, fire - due)")
    ax.set_ylabel("fraction of stream timers (cumulative)")
    ax.set_title("P2: fire lateness with many active timers")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- beyond the horizon

HORIZON_QUICK = {
    "rate": 1000,  # timers falling due per second
    "seconds": 180,
    # Every window is longer than the horizon: no start sends a wake-up, the
    # sweeps do. The shortest horizon allowed, so that each minute's tick must
    # bring the next minute's timers in while the stream runs.
    "window_seconds": 600,
    "horizon_seconds": 90,
    "lead_seconds": 45,  # from the seeding to the first due instant
}
# The default horizon: the first sweeps read 300,000 timers of it.
HORIZON_FULL = {**HORIZON_QUICK, "seconds": 300, "horizon_seconds": 300}
TARGET_HORIZON_P99_MS = 100
# What one sweep once read of the horizon: its first 10,000 distinct instants.
OLD_INSTANT_LIMIT = 10_000


def run_horizon(bench: Bench, params: dict, out_dir: Path) -> dict:
    rate, seconds = params["rate"], params["seconds"]
    n = rate * seconds
    env = {"SLA_WAKEUP_HORIZON_SECONDS": str(params["horizon_seconds"])}
    tenant, _ = bench.tenant()
    t0 = datetime.now(UTC) + timedelta(seconds=params["lead_seconds"])
    # Written straight to the database, as starts long ago would have left them.
    seed_timers(
        bench,
        tenant,
        n,
        "%(t0)s::timestamptz + make_interval(secs => (g - 1)::float / %(rate)s)",
        prefix="hz-",
        window_seconds=params["window_seconds"],
        params={"t0": t0, "rate": rate},
    )
    log = out_dir / "p2h.log"
    log.unlink(missing_ok=True)
    with running(
        worker(bench, log, extra_env=env),
        Service(
            [sys.executable, "-m", "tasks.scheduler"],
            {**bench.env, **env},
            log,
            ready="Registered periodic actors",
        ),
    ):
        ready_s_before_due = (t0 - datetime.now(UTC)).total_seconds()
        if ready_s_before_due < 5:
            raise RuntimeError("seeding and start-up took longer than lead_seconds: raise it")
        wait = (t0 - datetime.now(UTC)).total_seconds() + seconds + 30
        result = _lateness(bench, "lead-hz-", n, wait)
    values = result.pop("values_ms")
    _plot_horizon(bench, out_dir / "p2h-lateness.png", t0)
    instants_per_sweep = rate * params["horizon_seconds"]
    # Every bucket of the stream holds a timer (at 1,000/s, 50 per 50 ms bucket),
    # and each must have had its wake-up from a sweep: none is sent at start.
    from models.config import get_settings
    from models.sla import wakeup_instant

    bucket_ms = get_settings().wakeup_bucket_ms
    with bench.connect() as c:
        dues = c.execute("SELECT due_at FROM sla_timers WHERE lead_id LIKE 'lead-hz-%'")
        buckets = len({wakeup_instant(due, bucket_ms) for (due,) in dues})
    sent = sum(int(x) for x in re.findall(r"sweep: .* wakeups=(\d+)", log.read_text()))
    return {
        "params": params,
        "figures": {
            **result,
            "ready_s_before_due": round(ready_s_before_due, 1),
            "wakeups_sent_by_sweeps": sent,
            "buckets_holding_a_timer": buckets,
        },
        "plots": ["p2h-lateness.png"],
        "rows": [
            {
                "figure": f"lateness p50 ({rate:,} due/s beyond the horizon, {seconds} s)",
                "value": result["p50_ms"],
                "unit": "ms",
                "beside": "instants in the horizon per sweep",
                "beside_value": instants_per_sweep,
                "ratio": None,
                "target": "",
                "met": None,
            },
            {
                "figure": "lateness p99",
                "value": result["p99_ms"],
                "unit": "ms",
                "beside": "instants one sweep once covered",
                "beside_value": OLD_INSTANT_LIMIT,
                "ratio": None,
                "target": f"<= {TARGET_HORIZON_P99_MS} ms",
                "met": result["p99_ms"] <= TARGET_HORIZON_P99_MS,
            },
            {
                "figure": "lateness max",
                "value": result["max_ms"],
                "unit": "ms",
                "beside": "",
                "beside_value": None,
                "ratio": None,
                "target": "",
                "met": None,
            },
            {
                "figure": "wake-ups sent by the sweeps",
                "value": sent,
                "unit": "wake-ups",
                "beside": "buckets holding a timer",
                "beside_value": buckets,
                "ratio": round(sent / buckets, 3) if buckets else None,
                "target": "one per bucket",
                "met": sent == buckets,
            },
            {
                "figure": "timers fired within 30 s of the last due instant",
                "value": result["fired"],
                "unit": f"of {n}",
                "beside": "",
                "beside_value": None,
                "ratio": None,
                "target": "all",
                "met": result["fired"] == n and len(values) == n,
            },
        ],
    }


def _plot_horizon(bench: Bench, path: Path, t0: datetime) -> None:
    """Lateness against due instant: a sweep that left part of the horizon
    without wake-ups shows as a saw of minute-long teeth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with bench.connect() as c:
        rows = c.execute(
            """
            SELECT extract(epoch FROM t.due_at - %s), extract(epoch FROM e.executed_at - t.due_at)
            FROM sla_escalation_events e JOIN sla_timers t ON t.id = e.timer_id
            WHERE t.lead_id LIKE 'lead-hz-%%'
            """,
            (t0,),
        ).fetchall()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.scatter(
        [float(r[0]) for r in rows],
        [max(float(r[1]) * 1000, 0.1) for r in rows],
        s=1,
        alpha=0.3,
        rasterized=True,
    )
    ax.set_yscale("log")
    ax.set_xlabel("due instant, seconds from the first")
    ax.set_ylabel("lateness (ms)")
    ax.set_title("P2 beyond the horizon: wake-ups from the sweeps only")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class Horizon:
    """P2 beyond the horizon: 1,000 timers due per second, each started beyond the wake-up horizon, so only the sweeps send their wake-ups."""  # noqa: E501

    QUICK = HORIZON_QUICK
    FULL = HORIZON_FULL
    run = staticmethod(run_horizon)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("stream", "far"))
    parser.add_argument("--rate", type=int)
    parser.add_argument("--seconds", type=int)
    parser.add_argument("--window", type=int)
    parser.add_argument("--prefix")
    parser.add_argument("--n", type=int)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.what == "stream":
        _stream(args.rate, args.seconds, args.window, args.prefix)
    else:
        _far_wakeups(args.n)
