"""Peers: the same burst run by pgqueuer, by the naive design and by our firing path.

N jobs (20,000 quick) due at one instant, on the same machine and PostgreSQL,
with two worker processes each, one system at a time:

- **ours**: the firing path exactly as P1 runs it (``p1_burst._measure_ours``:
  real ``dramatiq tasks`` workers, one wake-up for the burst); a fire claims
  and updates its timer and writes a step row and two outbox events;
- **pgqueuer** (``bench/peers_pgqueuer.py``): jobs enqueued in one batch with
  ``execute_after`` (its deferred execution), consumed by two processes
  running ``pgqueuer.run`` (what ``pgq run`` runs); each job writes one step
  row and one event row
  (``bench/peers_job.py``);
- **naive** (``bench/peers_naive.py``): one Dramatiq delayed message per job
  on Redis, consumed by ``dramatiq`` worker processes; the same job.

Each figure is jobs/s from the due instant until the database holds every
job's step row (counted every 0.25 s, as P1 does), and the CPU each system
spent from the due instant to its last row, per job: its worker processes
and the PostgreSQL backends of the bench database, sampled from ``/proc``
every 0.1 s (Redis's CPU is not counted: its server is shared). The rows give
ours / pgqueuer (target >= 4) and ours / naive (target >= 10); the results
hold each peer's version and configuration.

``python -m bench.peers [--profile quick|full] [--param NAME=VALUE]`` runs it
alone and writes ``bench/results/peers-<profile>.json`` (with
``--param systems=pgqueuer`` or another subset, ``peers-<profile>-<subset>.json``).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

from .common import BIN, ROOT, Bench, Service, running

QUICK = {
    "jobs": 20_000,
    "worker_processes": 2,
    "worker_threads": 8,
    "pgq_batch_size": 100,
    "pgq_max_concurrent_tasks": 200,
    "pgq_pool_size": 8,
    "naive_threads": 8,
    # pgqueuer-default: pgqueuer as `pgq run` starts it (batches of 10, no task
    # limit, asyncpg's pool reset), reported beside the tuned one, not judged.
    "systems": "ours,pgqueuer,pgqueuer-default,naive",  # a subset runs only those
}
FULL = {**QUICK, "jobs": 100_000}

TARGET_PGQUEUER = 4.0
TARGET_NAIVE = 10.0

APP = "bench-peers"  # application_name of this process's own connections, left out of the CPU


class CpuSampler(threading.Thread):
    """CPU seconds of this process's descendants (the workers) and of the bench
    database's backends, sampled every ``interval`` seconds."""

    def __init__(self, bench: Bench, interval: float = 0.1):
        super().__init__(daemon=True)
        self.bench, self.interval = bench, interval
        self.samples: list[tuple[float, dict[int, tuple[str, float]]]] = []
        self.done = threading.Event()

    def run(self) -> None:
        import psutil

        me = psutil.Process()
        with self.bench.connect(application_name=APP) as c:
            while not self.done.is_set():
                kinds = {p.pid: "workers" for p in me.children(recursive=True)}
                for (pid,) in c.execute(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE datname = current_database() AND application_name <> %s",
                    (APP,),
                ):
                    kinds[pid] = "postgresql"
                snapshot = {}
                for pid, kind in kinds.items():
                    try:
                        t = psutil.Process(pid).cpu_times()
                    except psutil.Error:
                        continue
                    snapshot[pid] = (kind, t.user + t.system)
                self.samples.append((time.time(), snapshot))
                self.done.wait(self.interval)

    def stop(self) -> None:
        self.done.set()
        self.join()

    def between(self, t0: float, t1: float) -> dict[str, float]:
        """CPU seconds per kind from ``t0`` to ``t1`` (epoch seconds); a process
        first seen after ``t0`` counts from zero, one gone counts until last seen."""
        base = next((s for t, s in reversed(self.samples) if t <= t0), {})
        last: dict[int, tuple[str, float]] = {}
        for t, snapshot in self.samples:
            if t > t0:
                last.update(snapshot)
            if t >= t1:
                break
        out = {"workers": 0.0, "postgresql": 0.0}
        for pid, (kind, cpu) in last.items():
            out[kind] += cpu - base.get(pid, (kind, 0.0))[1]
        return out


def _count(conn) -> int:
    return conn.execute("SELECT count(*) FROM peer_steps").fetchone()[0]


def _wait_all(bench: Bench, n: int, due: datetime) -> dict:
    """Poll until every job has its step row; seconds from ``due``, as P1 counts."""
    deadline = time.monotonic() + 60 + n / 200
    with bench.connect(application_name=APP) as c:
        while time.monotonic() < deadline:
            done = _count(c)
            elapsed = time.time() - due.timestamp()
            if done >= n:
                break
            time.sleep(0.25)
        first, last, events = c.execute(
            "SELECT min(executed_at), max(executed_at), (SELECT count(*) FROM peer_events)"
            " FROM peer_steps"
        ).fetchone()
    return {
        "done": done,
        "events": events,
        "seconds_from_due": elapsed,
        "jobs_per_s": done / elapsed,
        "first_row_lateness_s": (first - due).total_seconds() if first else None,
        "last_row_s": (last - due).total_seconds() if last else None,
    }


def _scratch_tables(bench: Bench) -> None:
    from .peers_job import PEER_TABLES

    with bench.connect() as c:
        c.execute(PEER_TABLES)
        c.execute("VACUUM ANALYZE")


def _measure_pgqueuer_default(bench: Bench, params: dict, out_dir: Path) -> dict:
    return _measure_pgqueuer(bench, params, out_dir, tuned=False)


def _measure_pgqueuer(bench: Bench, params: dict, out_dir: Path, *, tuned: bool = True) -> dict:
    from . import peers_pgqueuer

    n = params["jobs"]
    _scratch_tables(bench)
    asyncio.run(peers_pgqueuer.install(bench.dsn))
    with bench.connect() as c:
        c.execute("TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")
    log = out_dir / f"peers-pgqueuer{'' if tuned else '-default'}.log"
    log.unlink(missing_ok=True)
    args = [sys.executable, "-m", "bench.peers_pgqueuer"]
    env = {**bench.env, "PEER_POOL_SIZE": str(params["pgq_pool_size"])}
    if tuned:
        args += ["--batch-size", str(params["pgq_batch_size"])]
        args += ["--max-concurrent-tasks", str(params["pgq_max_concurrent_tasks"])]
    else:
        env["PEER_POOL_RESET"] = "default"
    workers = [
        Service(args, env, log, ready="peer worker ready")
        for _ in range(params["worker_processes"])
    ]
    with running(*workers):
        # One statement; under a load average of 20 it took over 6 s for 20,000.
        due = datetime.now(UTC) + timedelta(seconds=5 + n / 2_000)
        asyncio.run(peers_pgqueuer.enqueue(bench.dsn, n, due))
        if datetime.now(UTC) > due:
            raise RuntimeError("enqueueing took longer than the lead before the due instant")
        result = _wait_all(bench, n, due)
    result["due"] = due.timestamp()
    return result


def _measure_naive(bench: Bench, params: dict, out_dir: Path) -> dict:
    from . import peers_naive

    n = params["jobs"]
    _scratch_tables(bench)
    log = out_dir / "peers-naive.log"
    log.unlink(missing_ok=True)
    worker = Service(
        [
            str(BIN / "dramatiq"),
            "bench.peers_naive:broker",
            "--queues",
            peers_naive.QUEUE,
            "--processes",
            str(params["worker_processes"]),
            "--threads",
            str(params["naive_threads"]),
        ],
        bench.env,
        log,
        ready="is ready for action",
        ready_count=params["worker_processes"],
    )
    with running(worker):
        # Sending is one Redis round trip per job, from 5,000/s down to 500/s here
        # depending on the load: the due instant leaves 2.5 times what it should take
        # (workers fetching the delayed messages slow the sending down).
        rate = peers_naive.sends_per_second()
        due = datetime.now(UTC) + timedelta(seconds=3 + 2.5 * n / rate)
        send_s = peers_naive.send(n, due)
        if datetime.now(UTC) > due:
            raise RuntimeError("sending took longer than the lead before the due instant")
        result = _wait_all(bench, n, due)
    result["due"] = due.timestamp()
    result["send_s"] = send_s
    result["sends_per_s_measured_before"] = rate
    return result


def _measure_ours(bench: Bench, params: dict, out_dir: Path) -> dict:
    from . import p1_burst

    ours = p1_burst._measure_ours(
        bench,
        {
            **p1_burst.QUICK,  # P1's own settings, whatever it adds
            "timers": params["jobs"],
            "worker_processes": params["worker_processes"],
            "worker_threads": params["worker_threads"],
        },
        out_dir,
    )
    ours.pop("series", None)
    with bench.connect() as c:
        due = c.execute("SELECT min(due_at) FROM sla_timers").fetchone()[0]
    ours["due"] = due.timestamp()
    ours["jobs_per_s"] = ours["fires_per_s"]
    return ours


def _configuration(bench: Bench, params: dict) -> dict:
    import redis

    from .peers_naive import POLL_MS

    info = redis.Redis.from_url(bench.redis_url).info("server")
    with bench.connect() as c:
        pg = c.execute("SHOW server_version").fetchone()[0]
    return {
        "postgresql": pg,
        "ours": {
            "firing path": "P1's: dramatiq tasks, one wake-up for the burst",
            "processes": params["worker_processes"],
            "threads": params["worker_threads"],
            "batch size": "SLA_BATCH_SIZE=1000, SLA_FIRE_PARALLELISM=4 (P1's)",
            "writes per job": "timer claim and update, step row, two outbox events",
        },
        "pgqueuer": {
            "version": version("pgqueuer"),
            "driver": f"asyncpg {version('asyncpg')}, uvloop (pgqueuer.run, as pgq run)",
            "processes": params["worker_processes"],
            "batch size": params["pgq_batch_size"],
            "max concurrent tasks per process": params["pgq_max_concurrent_tasks"],
            "job connections per process": params["pgq_pool_size"],
            "notify/polling": "LISTEN/NOTIFY, deferred jobs awaited by their eta",
            "durability": "durable (default); pgq autovac table settings",
            "writes per job": "step row, one event row (scratch tables)",
        },
        "pgqueuer-default": {
            "version": version("pgqueuer"),
            "as": "pgqueuer's defaults, as pgq run starts it: batch size 10, no limit on "
            "concurrent tasks, asyncpg's pool reset after every job; the rest as tuned",
        },
        "naive": {
            "version": f"dramatiq {version('dramatiq')}, redis-py {version('redis')}, "
            f"Redis {info['redis_version']}",
            "broker": f"plain RedisBroker, default middleware less Prometheus, "
            f"idle poll {POLL_MS} ms",
            "processes": params["worker_processes"],
            "threads": params["naive_threads"],
            "prefetch": "default: 1,000 delayed per thread, 2 per thread from the queue",
            "writes per job": "step row, one event row (scratch tables), psycopg",
        },
    }


def run(bench: Bench, params: dict, out_dir: Path) -> dict:
    import os

    n = params["jobs"]
    figures: dict = {"load_average": os.getloadavg()}
    sampler = CpuSampler(bench)
    sampler.start()
    try:
        for name, measure in (
            ("ours", _measure_ours),
            ("pgqueuer", _measure_pgqueuer),
            ("pgqueuer-default", _measure_pgqueuer_default),
            ("naive", _measure_naive),
        ):
            if name not in params["systems"].split(","):
                continue
            bench.reset()
            load = os.getloadavg()
            result = measure(bench, params, out_dir)
            result["load_average_before"] = load
            cpu = sampler.between(result["due"], result["due"] + result["seconds_from_due"])
            result["cpu_us_per_job"] = {k: v * 1e6 / n for k, v in cpu.items()}
            figures[name] = result
    finally:
        sampler.stop()
    figures["configuration"] = _configuration(bench, params)
    systems = [k for k in ("ours", "pgqueuer", "pgqueuer-default", "naive") if k in figures]
    rows = []
    if "ours" in figures:
        ours = figures["ours"]["jobs_per_s"]
        for name, beside, target in (
            (
                "pgqueuer",
                f"pgqueuer {version('pgqueuer')}, batches of {params['pgq_batch_size']}",
                TARGET_PGQUEUER,
            ),
            (
                "pgqueuer-default",
                f"pgqueuer {version('pgqueuer')} at its defaults (batches of 10)",
                None,
            ),
            (
                "naive",
                f"naive: a Dramatiq {version('dramatiq')} delayed message per job",
                TARGET_NAIVE,
            ),
        ):
            if name in figures:
                ratio = ours / figures[name]["jobs_per_s"]
                rows.append(
                    {
                        "figure": f"burst of {n:,}: ours, jobs/s",
                        "value": ours,
                        "unit": "jobs/s",
                        "beside": beside,
                        "beside_value": figures[name]["jobs_per_s"],
                        "ratio": ratio,
                        # The target is judged against the tuned peer only.
                        "target": f">= {target:g}x" if target else "(tuned pgqueuer's)",
                        "met": ratio >= target if target else None,
                    }
                )
    if "ours" in figures:
        # Load-proof: CPU per job does not depend on how the two cores were shared.
        ours_cpu = sum(figures["ours"]["cpu_us_per_job"].values())
        for name in ("pgqueuer", "pgqueuer-default", "naive"):
            if name in figures:
                peer_cpu = sum(figures[name]["cpu_us_per_job"].values())
                uncounted = " (Redis not counted)" if name == "naive" else ""
                rows.append(
                    {
                        "figure": f"{name}: CPU per job, workers + PostgreSQL{uncounted}",
                        "value": peer_cpu,
                        "unit": "µs",
                        "beside": "ours",
                        "beside_value": ours_cpu,
                        "ratio": peer_cpu / ours_cpu,
                    }
                )
    for name in systems:
        cpu = figures[name]["cpu_us_per_job"]
        rows.append(
            {
                "figure": f"{name}: CPU per job in its workers",
                "value": cpu["workers"],
                "unit": "µs",
                "beside": "in PostgreSQL",
                "beside_value": cpu["postgresql"],
            }
        )
    done = [figures[k].get("fired", figures[k].get("done")) for k in systems]
    rows.append(
        {
            "figure": f"every job done: {' / '.join(systems)}",
            "value": " / ".join(map(str, done)),
            "unit": f"of {n:,}",
            "target": "all",
            "met": all(d == n for d in done),
        }
    )
    return {"params": params, "figures": figures, "rows": rows}


def main() -> int:
    import argparse
    import json
    import logging

    from .__main__ import _overrides, print_table
    from .common import RESULTS, machine, write_results

    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("--profile", choices=("quick", "full"), default="quick")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    params = dict(FULL if args.profile == "full" else QUICK)
    params.update(_overrides(args.param, params))
    bench = Bench.create()
    report = {"profile": args.profile, "machine": machine(), "scenarios": {}}
    out_dir = RESULTS / args.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        started = time.monotonic()
        result = run(bench, dict(params), out_dir)
        result["seconds"] = round(time.monotonic() - started, 1)
    finally:
        if not args.keep:
            bench.drop()
    report["scenarios"]["peers"] = result
    name = f"peers-{args.profile}"
    if params["systems"] != QUICK["systems"]:  # a subset keeps the whole run's file
        name += "-" + params["systems"].replace(",", "-")
    path = write_results(name, report)
    print_table(report["scenarios"])
    print(json.dumps(result["figures"], indent=2, default=str))
    print(f"\nwrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
