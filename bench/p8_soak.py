"""P8 soak: single starts and fires at a steady 300/s each, with deliveries, for minutes on end.

The Procfile's processes (gunicorn's web, ``dramatiq tasks`` workers, the
periodiq scheduler) run against a PostgreSQL of the scenario's own, an
embedded one (``devtools/services.py``) started on ``pg_port`` with
autovacuum on, as in production (the shared server of the other scenarios
runs without it). Redis is the bench's. ``bench/p8_load.py`` starts timers
over HTTP at ``start_rate`` a second (open loop); each has one step at its
due instant, ``window_seconds`` later, so once the first window has passed
the workers fire as many a second as are started. One webhook subscription
(to ``delivered_events``) points at a local receiver (``bench/receiver.py``):
with the default, one delivery per fire.

Every ``sample_s`` (a minute in the full profile) the driver samples: the RSS
of each worker and web process, the CPU of each process group (PostgreSQL's
from its postmaster: its children, live and exited, autovacuum included),
``pg_stat_user_tables`` (dead tuples, autovacuum passes) and each table's
size, the deliveries pending, the keys in the Redis database. When the starts
end it waits for every timer to fire and every delivery to be answered, then
reads from the database, per interval, the lateness of the fires due in it
(step row executed_at minus due_at) and the starts, fires and deliveries made
in it.

The criteria (the intervals from the first in which both starts and fires ran
throughout, to the last of the starts):
- RSS flat: for the worker processes and the web workers, the largest RSS of
  the last interval over that of the first: at most ``rss_flat`` (1.10);
- lateness stable: the largest interval p99 over the median interval p99: at
  most ``p99_stable`` (2.0; a shared 2-core machine's neighbours move a p99 of
  tens of milliseconds by that much);
- dead tuples bounded: nothing deletes rows within the run (retention works in
  days), so the tables grow and autovacuum's own trigger, ``threshold +
  scale_factor x rows``, grows with them. Bounded means autovacuum keeps up:
  over the second half, each table's dead tuples over its trigger at that
  sample, at most ``dead_bound`` (2.0). A vacuum held back (an old snapshot,
  a vacuum slower than the churn) grows past it without end.

Nothing is lost or doubled: every start answered 2xx has its timer and one
step row, and every delivery was answered by the receiver once.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from devtools import services
from devtools.processes import create_database, migrate

from .common import BIN, ROOT, Bench, Service, cpu_seconds, running, wait_for, worker
from .receiver import ReceiverProcess

QUICK = {
    "minutes": 3,
    "sample_s": 30,
    "start_rate": 300,
    "window_seconds": 20,
    "delivered_events": "sla.escalation.triggered",
    "web_workers": 2,
    "web_threads": 4,
    "worker_processes": 2,
    "worker_threads": 8,
    "loader_threads": 8,
    # The quick run is shorter than the default naptime (a minute) would need to
    # show a few autovacuum passes.
    "autovacuum_naptime_s": 10,
    "drain_s": 120,
    "pg_port": 18601,
    "receiver_port": 18602,
    "web_port": 18603,
    "keep_server": 0,  # 1: leave the scenario's PostgreSQL and its data
    "rss_flat": 1.10,
    "p99_stable": 2.0,
    "dead_bound": 2.0,
}
FULL = {**QUICK, "minutes": 30, "sample_s": 60, "window_seconds": 60, "autovacuum_naptime_s": 60}

MB = 2**20
ALLOW_PRIVATE = {"SLA_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "1"}

_TABLES = """
SELECT s.relname, s.n_live_tup, s.n_dead_tup, s.autovacuum_count, s.autoanalyze_count,
       s.n_tup_ins, s.n_tup_upd, s.n_tup_hot_upd, s.n_tup_del, greatest(c.reltuples, 0),
       pg_total_relation_size(s.relid)
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
"""
_TABLE_FIELDS = (
    "live",
    "dead",
    "autovacuums",
    "autoanalyzes",
    "inserted",
    "updated",
    "hot_updated",
    "deleted",
    "reltuples",
    "bytes",
)

# Per interval of due_at since the first start: the lateness of its fires.
_LATENESS = """
SELECT floor(extract(epoch FROM t.due_at - to_timestamp(%(t0)s)) / %(s)s)::int AS k,
       count(*) AS due,
       count(e.executed_at) AS fired,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM e.executed_at - t.due_at)),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM e.executed_at - t.due_at)),
       max(extract(epoch FROM e.executed_at - t.due_at))
FROM sla_timers t LEFT JOIN sla_escalation_events e ON e.timer_id = t.id
GROUP BY 1 ORDER BY 1
"""
# Per interval: steps executed, and deliveries answered with their latency from
# the delivery row's creation (the firing transaction) to its recorded success.
_STARTS = """
SELECT floor(extract(epoch FROM started_at - to_timestamp(%(t0)s)) / %(s)s)::int, count(*)
FROM sla_timers GROUP BY 1 ORDER BY 1
"""
_FIRES = """
SELECT floor(extract(epoch FROM executed_at - to_timestamp(%(t0)s)) / %(s)s)::int, count(*)
FROM sla_escalation_events GROUP BY 1 ORDER BY 1
"""
_DELIVERIES = """
SELECT floor(extract(epoch FROM delivered_at - to_timestamp(%(t0)s)) / %(s)s)::int, count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM delivered_at - created_at)),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM delivered_at - created_at))
FROM webhook_deliveries WHERE delivered_at IS NOT NULL GROUP BY 1 ORDER BY 1
"""
_CHECK = """
SELECT (SELECT count(*) FROM sla_timers),
       (SELECT count(*) FROM sla_escalation_events),
       (SELECT count(DISTINCT timer_id) FROM sla_escalation_events),
       (SELECT count(*) FROM webhook_deliveries),
       (SELECT count(*) FROM webhook_deliveries WHERE status = 'DELIVERED'),
       (SELECT count(*) FROM webhook_attempts)
"""
_PENDING = "SELECT count(*) FROM webhook_deliveries WHERE status = 'PENDING'"
_SETTINGS = """
SELECT name, setting FROM pg_settings
WHERE name IN ('autovacuum', 'autovacuum_naptime', 'autovacuum_vacuum_scale_factor',
               'autovacuum_vacuum_threshold', 'autovacuum_vacuum_insert_scale_factor',
               'autovacuum_vacuum_cost_limit', 'autovacuum_vacuum_cost_delay',
               'shared_buffers', 'fsync', 'synchronous_commit', 'server_version')
"""


# --------------------------------------------------------------------------- the servers


class OwnPostgres:
    """An embedded PostgreSQL of this scenario's, with autovacuum as it ships (on)."""

    def __init__(self, port: int):
        self.port = port
        self.data = services.pg_data_dir(f"p8-pg-{port}")

    def start(self, naptime_s: int) -> str:
        url = services.start_pg(self.data, self.port)
        import psycopg

        with psycopg.connect(url, autocommit=True) as c:
            c.execute("ALTER SYSTEM SET autovacuum = on")
            c.execute(f"ALTER SYSTEM SET autovacuum_naptime = '{int(naptime_s)}s'")
            c.execute("SELECT pg_reload_conf()")
        return url

    def postmaster(self) -> int:
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def stop(self, remove: bool) -> None:
        services.stop_pg(self.data)
        if remove:
            shutil.rmtree(self.data, ignore_errors=True)


# --------------------------------------------------------------------------- sampling


def _rss(pid: int) -> dict:
    """RSS (MB) of a service's main process and of each child (the workers)."""
    import psutil

    try:
        main = psutil.Process(pid)
        children = main.children(recursive=True)
        return {
            "main": round(main.memory_info().rss / MB, 1),
            "children": [round(c.memory_info().rss / MB, 1) for c in children],
        }
    except psutil.Error:
        return {"main": None, "children": []}


def _tree_cpu(pid: int) -> float:
    import psutil

    try:
        pids = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    except psutil.Error:
        return 0.0
    return cpu_seconds(pids)


def _postgres_cpu(postmaster: int) -> float:
    """The cluster's CPU seconds: the postmaster, its live children, and the
    exited ones it has waited for (short-lived backends, autovacuum workers)."""
    import psutil

    try:
        t = psutil.Process(postmaster).cpu_times()
    except psutil.Error:
        return 0.0
    return _tree_cpu(postmaster) + t.children_user + t.children_system


def _dir_kb(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) // 1024


class Sampler:
    def __init__(self, soak: Bench, groups: dict[str, int], postmaster: int, metrics_dir: Path):
        import redis

        self.soak, self.groups, self.postmaster = soak, groups, postmaster
        self.metrics_dir = metrics_dir
        self.redis = redis.Redis.from_url(soak.redis_url)
        self.samples: list[dict] = []

    def sample(self, t: float, receiver: ReceiverProcess, phase: str) -> dict:
        with self.soak.connect() as c:
            tables = {
                r[0]: dict(zip(_TABLE_FIELDS, map(float, r[1:]), strict=True))
                for r in c.execute(_TABLES)
            }
            pending = c.execute(_PENDING).fetchone()[0]
        cpu = {name: _tree_cpu(pid) for name, pid in self.groups.items()}
        cpu["postgres"] = _postgres_cpu(self.postmaster)
        sample = {
            "t": round(t, 1),
            "phase": phase,
            "rss_mb": {name: _rss(pid) for name, pid in self.groups.items()},
            "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
            "tables": tables,
            "deliveries_pending": pending,
            "received": receiver.received("/soak"),
            "redis_keys": self.redis.dbsize(),
            "metrics_dir_kb": _dir_kb(self.metrics_dir),
            "load_avg": os.getloadavg(),
        }
        self.samples.append(sample)
        return sample


# --------------------------------------------------------------------------- the run


def run(bench: Bench, params: dict, out_dir: Path) -> dict:
    from models.signatures import new_secret

    s = params["sample_s"]
    seconds = params["minutes"] * 60
    rate = params["start_rate"]
    work = out_dir / "p8"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    metrics_dir = work / "metrics"
    metrics_dir.mkdir()

    code = _code_state()
    pg = OwnPostgres(params["pg_port"])
    server = pg.start(params["autovacuum_naptime_s"])
    try:
        dsn = create_database(server, "p8")
        env = {
            **bench.env,
            **ALLOW_PRIVATE,
            "DATABASE_URL": dsn,
            "REDIS_URL": bench.redis_url,
            "SLA_RATE_LIMIT": "off",
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),  # as the Procfile sets it
        }
        migrate(env)
        soak = Bench(dsn, bench.redis_url, env)
        with soak.connect() as c:
            pg_settings = dict(c.execute(_SETTINGS).fetchall())
        tenant, key = soak.tenant()
        secret = new_secret()
        receiver = ReceiverProcess(
            work / "receiver.log",
            ["/soak=fast"],
            secrets={"/soak": secret},
            verify_every=1000,
            port=params["receiver_port"],
        )
        try:
            with soak.connect() as c:
                c.execute(
                    "INSERT INTO webhook_subscriptions (tenant_id, url, secret, event_types,"
                    " description) VALUES (%s, %s, %s, %s, 'p8 soak')",
                    (tenant, receiver.url("/soak"), secret, params["delivered_events"].split(",")),
                )
            result = _soak(soak, params, work, env, key, receiver, pg.postmaster(), metrics_dir)
            result["receiver"] = receiver.stats()["/soak"]
        finally:
            receiver.stop()
        with soak.connect() as c:
            final = _per_interval(c, result.pop("t0"), s)
            check = dict(
                zip(
                    ("timers", "steps", "timers_fired", "deliveries", "delivered", "attempts"),
                    c.execute(_CHECK).fetchone(),
                    strict=True,
                )
            )
    finally:
        pg.stop(remove=not params["keep_server"])

    figures = {
        "params": params,
        "code": code,
        "postgresql": pg_settings,
        "check": check,
        **result,
        "intervals": final,
        "machine_load_avg_end": os.getloadavg(),
    }
    (work / "samples.json").write_text(json.dumps(figures, indent=1, default=str) + "\n")
    summary = summarize(figures, params, seconds)
    _plot(figures, params, out_dir / "p8-soak.png")
    samples = figures.pop("samples")
    figures.pop("params")
    figures["samples_kept_in"] = str((work / "samples.json").relative_to(ROOT))
    figures["sample_count"] = len(samples)
    figures["summary"] = summary
    return {
        "params": params,
        "figures": figures,
        "plots": ["p8-soak.png"],
        "rows": rows(summary, params, rate),
    }


def _code_state() -> dict:
    """HEAD, and the service's files that differ from it (the processes run them)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    changed = git("status", "--porcelain", "--", "models", "tasks", "web", "migrations")
    return {"commit": git("rev-parse", "--short", "HEAD"), "changed": changed.splitlines()}


def _soak(
    soak: Bench,
    params: dict,
    work: Path,
    env: dict,
    key: str,
    receiver: ReceiverProcess,
    postmaster: int,
    metrics_dir: Path,
) -> dict:
    s = params["sample_s"]
    seconds = params["minutes"] * 60
    log = work / "services.log"
    # The Procfile's web command, on a port of the scenario's.
    web = Service(
        [
            str(BIN / "gunicorn"),
            "web:create_app()",
            "--bind",
            f"127.0.0.1:{params['web_port']}",
            "--workers",
            str(params["web_workers"]),
            "--threads",
            str(params["web_threads"]),
            "--access-logfile",
            "-",
            "--logger-class",
            "web.logs.GunicornLogger",
        ],
        env,
        work / "web.log",
        ready="Booting worker",
        ready_count=params["web_workers"],
    )
    with running(
        web,
        worker(
            soak,
            log,
            processes=params["worker_processes"],
            threads=params["worker_threads"],
        ),
        Service(
            [sys.executable, "-m", "tasks.scheduler"], env, log, ready="Registered periodic actors"
        ),
    ) as (web, workers, scheduler):
        import urllib.request

        def healthy() -> bool:
            try:
                url = f"http://127.0.0.1:{params['web_port']}/healthz"
                with urllib.request.urlopen(url, timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(healthy, 30, 0.2, what="the web's /healthz")
        t0 = time.time() + 1.0
        load_out = (work / "load.json").open("w")
        loader = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.p8_load",
                "--port",
                str(params["web_port"]),
                "--rate",
                str(params["start_rate"]),
                "--seconds",
                str(seconds),
                "--window",
                str(params["window_seconds"]),
                "--threads",
                str(params["loader_threads"]),
                "--interval",
                str(s),
                "--start-at",
                str(t0),
            ],
            cwd=ROOT,
            env={**env, "SLA_BENCH_API_KEY": key},
            stdout=load_out,
            stderr=(work / "load.err").open("w"),
        )
        groups = {
            "web": web.pid,
            "worker": workers.pid,
            "scheduler": scheduler.pid,
            "receiver": receiver.service.pid,
            "loader": loader.pid,
        }
        sampler = Sampler(soak, groups, postmaster, metrics_dir)
        try:
            k = 0
            while True:
                wait = t0 + k * s - time.time()
                if wait > 0:
                    time.sleep(wait)
                x = sampler.sample(time.time() - t0, receiver, "load")
                print(
                    f"p8 {x['t']:7.0f}s pending={x['deliveries_pending']} "
                    f"received={x['received']} load={x['load_avg'][0]:.2f}",
                    flush=True,
                )
                if k * s >= seconds:
                    break
                k += 1
            loader.wait(timeout=params["drain_s"] + 60)
        finally:
            if loader.poll() is None:
                loader.kill()
            load_out.close()
        # Drain: the last window's fires and their deliveries.
        drained_by = time.time() + params["window_seconds"] + params["drain_s"]
        load = json.loads((work / "load.json").read_text().strip().splitlines()[-1])

        def drained() -> bool:
            with soak.connect() as c:
                fired = c.execute("SELECT count(*) FROM sla_escalation_events").fetchone()[0]
                pending = c.execute(_PENDING).fetchone()[0]
            return fired >= load["ok"] and pending == 0

        while not drained() and time.time() < drained_by:
            time.sleep(1)
        sampler.sample(time.time() - t0, receiver, "drained")
        drain_s = round(time.time() - (t0 + seconds), 1)
    return {"t0": t0, "load": load, "drain_s": drain_s, "samples": sampler.samples}


def _per_interval(conn, t0: float, s: int) -> list[dict]:
    args = {"t0": t0, "s": s}
    out: dict[int, dict] = {}
    for k, due, fired, p50, p99, mx in conn.execute(_LATENESS, args):
        out.setdefault(k, {})["due"] = due
        out[k].update(
            fired_of_due=fired,
            lateness_p50_ms=None if p50 is None else round(p50 * 1000, 1),
            lateness_p99_ms=None if p99 is None else round(p99 * 1000, 1),
            lateness_max_ms=None if mx is None else round(float(mx) * 1000, 1),
        )
    for k, n in conn.execute(_STARTS, args):
        out.setdefault(k, {})["starts"] = n
    for k, n in conn.execute(_FIRES, args):
        out.setdefault(k, {})["fires"] = n
    for k, n, p50, p99 in conn.execute(_DELIVERIES, args):
        out.setdefault(k, {}).update(
            deliveries=n,
            delivery_p50_ms=round(p50 * 1000, 1),
            delivery_p99_ms=round(p99 * 1000, 1),
        )
    return [{"interval": k, **v} for k, v in sorted(out.items())]


# --------------------------------------------------------------------------- the criteria


def steady_samples(samples: list[dict], params: dict) -> list[dict]:
    """The samples from the end of the first interval in which both starts and
    fires ran throughout, to the end of the starts."""
    s, window = params["sample_s"], params["window_seconds"]
    end = params["minutes"] * 60
    first = -(-(window + s) // s) * s  # the first sample at or after window + s
    return [x for x in samples if x["phase"] == "load" and first - 1 <= x["t"] <= end + 1]


def _rss_max(sample: dict, group: str) -> float | None:
    children = sample["rss_mb"][group]["children"]
    return max(children) if children else None


def autovacuum_trigger(table: dict, settings: dict) -> float:
    """Dead tuples at which autovacuum takes the table (its row estimate as of the sample)."""
    return (
        float(settings.get("autovacuum_vacuum_threshold", 50))
        + float(settings.get("autovacuum_vacuum_scale_factor", 0.2)) * table["reltuples"]
    )


def summarize(figures: dict, params: dict, seconds: int) -> dict:
    """The criteria's figures from the samples and the per-interval rows (pure)."""
    s = params["sample_s"]
    samples = figures["samples"]
    steady = steady_samples(samples, params)
    out: dict = {"steady_from_s": steady[0]["t"] if steady else None}
    # RSS: the largest worker (web worker) process, first steady sample vs last.
    for group in ("worker", "web"):
        first = _rss_max(steady[0], group) if steady else None
        last = _rss_max(steady[-1], group) if steady else None
        peak = max((v for x in samples if (v := _rss_max(x, group)) is not None), default=None)
        out[f"{group}_rss_first_mb"] = first
        out[f"{group}_rss_last_mb"] = last
        out[f"{group}_rss_peak_mb"] = peak
        out[f"{group}_rss_ratio"] = round(last / first, 3) if first and last else None
    # Lateness: the intervals wholly inside the due instants of the starts
    # (from window to seconds + window after the first start).
    window = params["window_seconds"]
    full = [
        r
        for r in figures["intervals"]
        if r.get("lateness_p99_ms") is not None
        and r["interval"] * s >= window
        and (r["interval"] + 1) * s <= seconds + window
    ]
    p99s = [r["lateness_p99_ms"] for r in full]
    out["lateness_intervals"] = len(full)
    out["lateness_p99_median_ms"] = statistics.median(p99s) if p99s else None
    out["lateness_p99_max_ms"] = max(p99s) if p99s else None
    out["lateness_p50_median_ms"] = (
        statistics.median(r["lateness_p50_ms"] for r in full) if full else None
    )
    out["lateness_p99_ratio"] = (
        round(max(p99s) / statistics.median(p99s), 3) if p99s and statistics.median(p99s) else None
    )
    # Dead tuples: over the second half of the run, against autovacuum's trigger.
    settings = figures["postgresql"]
    half = [x for x in samples if x["phase"] == "load" and x["t"] >= seconds / 2]
    dead: dict[str, dict] = {}
    for name in samples[-1]["tables"] if samples else []:
        churn = samples[-1]["tables"][name]["updated"] + samples[-1]["tables"][name]["deleted"]
        ratios = [
            x["tables"][name]["dead"] / autovacuum_trigger(x["tables"][name], settings)
            for x in half
            if name in x["tables"]
        ]
        dead[name] = {
            "dead_peak": max(int(x["tables"][name]["dead"]) for x in samples),
            "dead_end": int(samples[-1]["tables"][name]["dead"]),
            "live_end": int(samples[-1]["tables"][name]["live"]),
            "autovacuums": int(samples[-1]["tables"][name]["autovacuums"]),
            "updated_or_deleted": int(churn),
            "mb_end": round(samples[-1]["tables"][name]["bytes"] / MB, 1),
            "max_dead_over_trigger_2nd_half": round(max(ratios), 3) if ratios else None,
        }
    out["dead_tuples"] = dead
    churned = {n: d for n, d in dead.items() if d["updated_or_deleted"]}
    worst = max(
        churned.items(),
        key=lambda kv: kv[1]["max_dead_over_trigger_2nd_half"] or 0,
        default=(None, None),
    )
    out["dead_worst_table"] = worst[0]
    out["dead_worst_ratio"] = worst[1]["max_dead_over_trigger_2nd_half"] if worst[1] else None
    # Throughput and CPU per timer over the steady samples.
    if len(steady) >= 2:
        a, b = steady[0], steady[-1]
        span = b["t"] - a["t"]
        starts = b["tables"]["sla_timers"]["inserted"] - a["tables"]["sla_timers"]["inserted"]
        fires = (
            b["tables"]["sla_escalation_events"]["inserted"]
            - a["tables"]["sla_escalation_events"]["inserted"]
        )
        delivered = b["received"] - a["received"]
        out["starts_per_s"] = round(starts / span, 1)
        out["fires_per_s"] = round(fires / span, 1)
        out["deliveries_per_s"] = round(delivered / span, 1)
        out["cpu_us_per_timer"] = {
            g: round((b["cpu_s"][g] - a["cpu_s"][g]) / starts * 1e6) if starts else None
            for g in b["cpu_s"]
        }
        out["cpu_cores"] = {g: round((b["cpu_s"][g] - a["cpu_s"][g]) / span, 2) for g in b["cpu_s"]}
    out["pending_max"] = max((x["deliveries_pending"] for x in steady), default=None)
    out["pending_last"] = steady[-1]["deliveries_pending"] if steady else None
    out["redis_keys_max"] = max((x["redis_keys"] for x in samples), default=None)
    out["metrics_dir_kb_end"] = samples[-1]["metrics_dir_kb"] if samples else None
    out["load_avg"] = [round(x["load_avg"][0], 2) for x in samples]
    check, load = figures["check"], figures["load"]
    out["started_2xx"] = load["ok"]
    out["start_failures"] = load["non_2xx"] + load["errors"]
    out["starts_skipped"] = load.get("skipped", 0)
    out["loader_max_lag_s"] = load["max_lag_s"]
    out["timers"] = check["timers"]
    out["timers_unfired"] = check["timers"] - check["timers_fired"]
    out["duplicate_steps"] = check["steps"] - check["timers_fired"]
    out["deliveries_undelivered"] = check["deliveries"] - check["delivered"]
    out["receiver_duplicates"] = figures["receiver"]["duplicates"]
    out["receiver_ids"] = figures["receiver"]["ids_received"]
    out["bad_signatures"] = figures["receiver"]["bad_signatures"]
    return out


def rows(m: dict, params: dict, rate: int) -> list[dict]:
    minutes = params["minutes"]

    def ratio_row(figure, value, unit, beside, beside_value, ratio, limit):
        return {
            "figure": figure,
            "value": value,
            "unit": unit,
            "beside": beside,
            "beside_value": beside_value,
            "ratio": ratio,
            "target": f"<= {limit}x",
            "met": None if ratio is None else ratio <= limit,
        }

    out = [
        {
            "figure": f"soak {minutes} min at {rate}/s: starts/s (steady part)",
            "value": m.get("starts_per_s"),
            "unit": "starts/s",
            "beside": "fires/s / deliveries/s",
            "beside_value": f"{m.get('fires_per_s')} / {m.get('deliveries_per_s')}",
            "ratio": None,
            "target": f"{rate}/s each (95 %)",
            "met": min(m.get("starts_per_s") or 0, m.get("fires_per_s") or 0) >= 0.95 * rate,
        },
        ratio_row(
            "worker RSS, last interval (largest process)",
            m["worker_rss_last_mb"],
            "MB",
            f"first steady interval (t={m['steady_from_s']} s)",
            m["worker_rss_first_mb"],
            m["worker_rss_ratio"],
            params["rss_flat"],
        ),
        ratio_row(
            "web RSS, last interval (largest gunicorn worker)",
            m["web_rss_last_mb"],
            "MB",
            "first steady interval",
            m["web_rss_first_mb"],
            m["web_rss_ratio"],
            params["rss_flat"],
        ),
        ratio_row(
            f"lateness p99, worst interval ({m['lateness_intervals']} intervals)",
            m["lateness_p99_max_ms"],
            "ms",
            "median interval p99",
            m["lateness_p99_median_ms"],
            m["lateness_p99_ratio"],
            params["p99_stable"],
        ),
        ratio_row(
            f"dead tuples over autovacuum's trigger, 2nd half ({m['dead_worst_table']})",
            m["dead_worst_ratio"],
            "x trigger",
            "dead tuples at the end",
            (m["dead_tuples"].get(m["dead_worst_table"]) or {}).get("dead_end"),
            m["dead_worst_ratio"],
            params["dead_bound"],
        ),
        {
            "figure": "deliveries pending, largest sample (steady part)",
            "value": m["pending_max"],
            "unit": "deliveries",
            "beside": "at the last sample",
            "beside_value": m["pending_last"],
            "ratio": None,
            "target": "",
            "met": None,
        },
        {
            "figure": "CPU per timer (start + fire + delivery): web",
            "value": (m.get("cpu_us_per_timer") or {}).get("web"),
            "unit": "µs",
            "beside": "workers / PostgreSQL",
            "beside_value": "{} / {}".format(
                (m.get("cpu_us_per_timer") or {}).get("worker"),
                (m.get("cpu_us_per_timer") or {}).get("postgres"),
            ),
            "ratio": None,
            "target": "",
            "met": None,
        },
        {
            "figure": "unfired timers / duplicate steps / undelivered",
            "value": (
                f"{m['timers_unfired']} / {m['duplicate_steps']} / {m['deliveries_undelivered']}"
            ),
            "unit": f"of {m['timers']:,} timers",
            "beside": "start failures / not sent in time / receiver duplicates",
            "beside_value": (
                f"{m['start_failures']} / {m['starts_skipped']} / {m['receiver_duplicates']}"
            ),
            "ratio": None,
            "target": "0 / 0 / 0",
            "met": m["timers_unfired"] == 0
            and m["duplicate_steps"] == 0
            and m["deliveries_undelivered"] == 0
            and m["start_failures"] == 0
            and m["timers"] == m["started_2xx"],
        },
    ]
    return out


# --------------------------------------------------------------------------- the plot


def _plot(figures: dict, params: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = params["sample_s"]
    samples = [x for x in figures["samples"] if x["phase"] == "load"]
    minutes = [x["t"] / 60 for x in samples]
    fig, axes = plt.subplots(5, 1, figsize=(8, 14), sharex=True)

    ax = axes[0]
    for group, label in (("worker", "worker process"), ("web", "gunicorn worker")):
        n = max((len(x["rss_mb"][group]["children"]) for x in samples), default=0)
        for i in range(n):
            ax.plot(
                minutes,
                [
                    (x["rss_mb"][group]["children"] + [None] * n)[i] if samples else None
                    for x in samples
                ],
                marker=".",
                label=f"{label} {i + 1}",
            )
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, ncol=2)

    ax = axes[1]
    rows_ = [r for r in figures["intervals"] if r.get("lateness_p99_ms") is not None]
    mid = [(r["interval"] + 0.5) * s / 60 for r in rows_]
    ax.plot(mid, [r["lateness_p50_ms"] for r in rows_], marker=".", label="fire lateness p50")
    ax.plot(mid, [r["lateness_p99_ms"] for r in rows_], marker=".", label="fire lateness p99")
    drows = [r for r in figures["intervals"] if r.get("delivery_p99_ms") is not None]
    ax.plot(
        [(r["interval"] + 0.5) * s / 60 for r in drows],
        [r["delivery_p99_ms"] for r in drows],
        marker=".",
        linestyle="--",
        label="delivery p99 (fire to 2xx)",
    )
    ax.set_ylabel("ms, by due / delivered interval")
    ax.set_yscale("log")
    ax.legend(fontsize=7)

    ax = axes[2]
    names = sorted(
        {n for x in samples for n, t in x["tables"].items() if t["updated"] or t["deleted"]}
    )
    settings = figures["postgresql"]
    for name in names:
        (line,) = ax.plot(
            minutes, [x["tables"].get(name, {}).get("dead", 0) for x in samples], label=name
        )
        if samples[-1]["tables"].get(name, {}).get("updated", 0) >= 1000:
            ax.plot(
                minutes,
                [autovacuum_trigger(x["tables"][name], settings) for x in samples],
                color=line.get_color(),
                linestyle=":",
            )
    ax.set_ylabel("dead tuples (dotted: autovacuum's trigger)")
    ax.legend(fontsize=7)

    ax = axes[3]
    for key, label in (("fires", "fires"), ("deliveries", "deliveries")):
        pts = [r for r in figures["intervals"] if r.get(key)]
        ax.plot(
            [(r["interval"] + 0.5) * s / 60 for r in pts],
            [r[key] / s for r in pts],
            marker=".",
            label=f"{label}/s",
        )
    starts = [r for r in figures["intervals"] if r.get("starts")]
    ax.plot(
        [(r["interval"] + 0.5) * s / 60 for r in starts],
        [r["starts"] / s for r in starts],
        marker=".",
        label="starts/s",
    )
    ax.set_ylabel("per second")
    ax.legend(fontsize=7)

    ax = axes[4]
    cores = {}
    for g in samples[0]["cpu_s"] if samples else []:
        cores[g] = [
            (b["cpu_s"][g] - a["cpu_s"][g]) / (b["t"] - a["t"])
            for a, b in itertools.pairwise(samples)
        ]
    for g, values in cores.items():
        ax.plot(minutes[1:], values, marker=".", label=g)
    ax2 = ax.twinx()
    ax2.plot(minutes, [x["deliveries_pending"] for x in samples], color="black", alpha=0.4)
    ax2.set_ylabel("deliveries pending (black)")
    ax.set_ylabel("CPU cores")
    ax.legend(fontsize=7, ncol=3)
    ax.set_xlabel("minutes since the first start")

    rate = params["start_rate"]
    loads = [x["load_avg"][0] for x in samples] or [0.0]
    fig.suptitle(
        f"P8 soak: {rate} starts/s and {rate} fires/s with deliveries, autovacuum on\n"
        f"(machine load average {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} cores)"
    )
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- on its own


def main(argv: list[str] | None = None) -> int:
    """Run P8 alone: no database on the shared server, only the bench's Redis
    database; results in ``bench/results/p8-<profile>.json``, the plot in
    ``bench/results/<profile>/``."""
    import argparse
    import logging

    from .__main__ import _overrides, print_table
    from .common import RESULTS, machine, write_results

    parser = argparse.ArgumentParser(prog="python -m bench.p8_soak", description=__doc__)
    parser.add_argument("--profile", choices=("quick", "full"), default="quick")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--replot", action="store_true", help="plot and sum up the last run's samples; no run"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    params = dict(FULL if args.profile == "full" else QUICK)
    params.update(_overrides(args.param, params))
    out_dir = RESULTS / args.profile
    if args.replot:
        figures = json.loads((out_dir / "p8" / "samples.json").read_text())
        params = figures.get("params", params)
        _plot(figures, params, out_dir / "p8-soak.png")
        summary = summarize(figures, params, params["minutes"] * 60)
        print(json.dumps(summary, indent=1))
        print_table({"p8": {"rows": rows(summary, params, params["start_rate"])}})
        return 0
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    redis_url = redis_url.rsplit("/", 1)[0] + "/" + os.environ.get("SLA_BENCH_REDIS_DB", "12")
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    bench = Bench("", redis_url, {**os.environ, "REDIS_URL": redis_url})
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"== p8: {__doc__.strip().splitlines()[0]} {params}", flush=True)
    started = time.monotonic()
    result = run(bench, params, out_dir)
    result["seconds"] = round(time.monotonic() - started, 1)
    report = {"profile": args.profile, "machine": machine(), "scenarios": {"p8": result}}
    print()
    print_table(report["scenarios"])
    print(f"\nwrote {write_results(f'p8-{args.profile}', report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
