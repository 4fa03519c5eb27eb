"""P6 webhooks: outbox events delivered to a local receiver by real worker processes.

Events are written straight to ``outbox_events`` (the firing path's payloads,
two events per timer: ``sla.timer.due`` and ``sla.escalation.triggered``), and
the table's trigger writes one delivery per enabled subscription, as for any
event; after each commit the writer calls ``tasks.delivery.wake_delivery()``
as the service's writers do. Subscriptions are rows inserted directly (a secret
from ``models.signatures.new_secret()``). The receiver is ``bench/receiver.py``,
a process of its own on the same two cores: each figure includes it. Times are
``time.time()`` on this machine: the writer's just after its commit returned,
the receiver's when it had read the whole request it answered 2xx.

- ``p6``, throughput: N events committed at once (a backlog), until the
  receiver has answered 2xx for every one; deliveries/s. Beside it, the bare
  sending limit: the workers' own sender (tasks/sender.py) posting as many
  signed envelopes from two processes of threads, with no database.
- ``p6l``, latency: events committed at a steady rate (500/s: every 20 ms, a
  transaction of 10) for S seconds; commit to receipt, p50 and p99.
- ``p6d``, a dead receiver: tenant A's endpoint reads every request and never
  answers (each attempt a timeout), while tenant B's is fast. Both tenants'
  events stream in at a steady rate, tenant A's timers fall due throughout,
  then tenant B gets a burst. Measured: B's latency and burst rate and the
  timers' lateness, beside two controls: the same run with A's endpoint
  healthy (the target's comparison: what A's endpoint being dead costs B),
  and with A having no subscription at all (what A's deliveries cost B at
  all). Each repetition runs dead, healthy, none in that order, so any
  warm-up favours the controls; the figures are the medians over the
  repetitions (single runs of a 20-second stream on two shared cores moved
  B's burst rate by a factor of two).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .common import ROOT, Bench, Service, cpu_seconds, percentile, running, seed_timers, worker
from .receiver import ReceiverProcess

QUICK = {
    "events": 20_000,
    "worker_processes": 2,
    "worker_threads": 8,
    "bare_threads": 16,
    "verify_every": 100,
    # SLA_WEBHOOK_MAX_IN_FLIGHT for the one subscription; 0: the setting's default.
    "max_in_flight": 0,
}
FULL = {**QUICK, "events": 100_000}

LATENCY_QUICK = {"rate": 500, "seconds": 20, "tick_ms": 20, "worker_processes": 2}
LATENCY_FULL = {**LATENCY_QUICK, "seconds": 60}

DEAD_QUICK = {
    "rate_a": 250,  # tenant A's events per second, to the dead endpoint
    "rate_b": 250,  # tenant B's, to the fast one
    "seconds": 20,
    "tick_ms": 20,
    "timers_per_s": 50,  # tenant A's timers falling due, for the firing lateness
    "burst": 5_000,  # tenant B's burst after the stream
    "worker_processes": 2,
    "timeout_s": 5.0,  # SLA_WEBHOOK_TIMEOUT_SECONDS: each dead attempt lasts this long
    "repeats": 3,  # repetitions of the three arms; figures are their medians
}
DEAD_FULL = {**DEAD_QUICK, "seconds": 60, "burst": 20_000, "timers_per_s": 100}

TARGET_RATE = 2_000
TARGET_P50_MS = 100
TARGET_P99_MS = 1_000
TARGET_SLOWDOWN = 0.10
# What these runs resolve on a shared 2-core machine: a latency within this of the
# baseline's counts as no slower ("not measurably" for timer firing: medians within
# this, p99 within 10 % + this).
NOISE_MS = 10.0

ALLOW_PRIVATE = {"SLA_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "1"}

# CpuMeter.stop()'s wait for the database's counters (the workers' CPU counts on).
METER_SETTLE_S = 1.5

# Two events per timer, as a firing writes them: due, then the step. ``ord`` keeps
# each timer's due event before its step in id order (the order a subscription
# must see them in). Timer ids are derived from the series and a salt: unique.
_EVENTS = """
INSERT INTO outbox_events (tenant_id, timer_id, event_type, payload, correlation_id,
                           idempotency_key)
SELECT %(tenant)s, t.id, k.event_type,
       jsonb_build_object(
           'type', k.event_type, 'timer_id', t.id, 'lead_id', 'lead-' || %(salt)s || g,
           'sla_contract_id', 'default', 'started_at', now() - interval '30 minutes',
           'due_at', now(), 'correlation_id', 'bench-' || %(salt)s || g,
           'occurred_at', now()) || k.extra,
       'bench-' || %(salt)s || g, t.id::text || k.suffix
FROM generate_series(1, %(timers)s) AS g,
     LATERAL (SELECT md5(%(salt)s || ':' || g)::uuid AS id) AS t,
     (VALUES (1, 'sla.timer.due', ':due', '{}'::jsonb),
             (2, 'sla.escalation.triggered', ':step:1',
              '{"escalation_step": 1, "action": "notify", "target": "owner"}'::jsonb))
         AS k(ord, event_type, suffix, extra)
ORDER BY g, k.ord
RETURNING id
"""


def subscribe(bench: Bench, tenant: str, url: str, secret: str) -> str:
    """A subscription to every event type, as POST /v1/webhooks would create it."""
    with bench.connect() as c:
        return str(
            c.execute(
                "INSERT INTO webhook_subscriptions (tenant_id, url, secret, description)"
                " VALUES (%s, %s, %s, 'bench') RETURNING id",
                (tenant, url, secret),
            ).fetchone()[0]
        )


def write_events(conn, tenant: str, timers: int, salt: str) -> list[int]:
    """2 x ``timers`` events in the connection's transaction; their outbox ids."""
    rows = conn.execute(_EVENTS, {"tenant": tenant, "timers": timers, "salt": salt})
    return [r[0] for r in rows]


def _wake() -> None:
    from tasks.delivery import wake_delivery  # once the bench environment is set

    wake_delivery()


def _services(bench: Bench, out_dir: Path, name: str, processes: int, threads: int, env: dict):
    log = out_dir / f"{name}.log"
    log.unlink(missing_ok=True)
    env = {**ALLOW_PRIVATE, **env}
    return (
        worker(bench, log, processes=processes, threads=threads, extra_env=env),
        Service(
            [sys.executable, "-m", "tasks.scheduler"],
            {**bench.env, **env},
            log,
            ready="Registered periodic actors",
        ),
    )


def _receiver(out_dir: Path, name: str, routes: list[str], **kw) -> ReceiverProcess:
    log = out_dir / f"{name}-receiver.log"
    log.unlink(missing_ok=True)
    return ReceiverProcess(log, routes, **kw)


def _wait_received(receiver: ReceiverProcess, path: str, n: int, timeout: float) -> list:
    """(seconds since the start, ids received) samples until ``n`` or the timeout."""
    started = time.time()
    samples = []
    while True:
        got = receiver.received(path)
        samples.append((time.time() - started, got))
        if got >= n or time.time() - started > timeout:
            return samples
        time.sleep(0.2)


def _delivery_counts(bench: Bench) -> dict:
    with bench.connect() as c:
        rows = c.execute("SELECT status, count(*) FROM webhook_deliveries GROUP BY 1").fetchall()
        attempts = c.execute("SELECT count(*) FROM webhook_attempts").fetchone()[0]
    return {**{status.lower(): n for status, n in rows}, "attempts": attempts}


class CpuMeter:
    """CPU seconds of the workers (process groups), the receiver and the bench
    database's backends between ``start()`` and ``stop()``. Backends that connect
    in between lose their CPU before the first sample: a lower bound."""

    def __init__(self, bench: Bench, groups: dict[str, list[int]]):
        self.bench, self.groups = bench, groups

    def _sample(self) -> dict[str, float]:
        import psutil

        cpu = cpu_seconds

        def tree(pid: int) -> list[int]:
            try:
                return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
            except psutil.Error:
                return []

        with self.bench.connect() as c:
            backends = [
                r[0]
                for r in c.execute(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ]
        out = {
            name: cpu([p for pid in pids for p in tree(pid)]) for name, pids in self.groups.items()
        }
        out["postgres"] = cpu(backends)
        with self.bench.connect() as c:  # what the database did meanwhile, by its counters
            row = c.execute(
                "SELECT xact_commit, tup_updated FROM pg_stat_database"
                " WHERE datname = current_database()"
            ).fetchone()
        out.update(zip(("transactions", "rows_updated"), map(float, row), strict=True))
        return out

    def start(self) -> None:
        self._start = self._sample()

    def stop(self, settle: float = 1.5) -> dict[str, float]:
        time.sleep(settle)  # backends report their counters at most once a second
        end = self._sample()
        return {k: round(end[k] - self._start.get(k, 0.0), 2) for k in end}


# --------------------------------------------------------------------------- P6 throughput


def run(bench: Bench, params: dict, out_dir: Path) -> dict:
    from models.signatures import new_secret

    n_timers = params["events"] // 2
    n = 2 * n_timers
    tenant, _ = bench.tenant()
    secret = new_secret()
    receiver = _receiver(
        out_dir,
        "p6",
        ["/fast=fast"],
        secrets={"/fast": secret},
        verify_every=params["verify_every"],
    )
    try:
        bare = _bare(
            receiver.url("/fast"),
            secret,
            min(n, 20_000),
            params["bare_threads"],
            receiver.service.pid,
        )
        receiver.reset()
        subscribe(bench, tenant, receiver.url("/fast"), secret)
        env = {}
        if params["max_in_flight"]:
            env["SLA_WEBHOOK_MAX_IN_FLIGHT"] = str(params["max_in_flight"])
        with running(
            *_services(
                bench, out_dir, "p6", params["worker_processes"], params["worker_threads"], env
            )
        ) as services:
            meter = CpuMeter(
                bench, {"workers": [services[0].pid], "receiver": [receiver.service.pid]}
            )
            # The workers' CPU while idle (polling the broker, the periodic actors),
            # measured while the backlog is written: at a low delivery rate it
            # weighs on their CPU per delivery, so the figure is also given without it.
            idle_meter = CpuMeter(bench, {"workers": [services[0].pid]})
            idle_meter.start()
            with bench.connect() as c:  # written in one transaction: a backlog of n
                started = time.perf_counter()
                with c.transaction():
                    ids = write_events(c, tenant, n_timers, "p6-")
                write_s = time.perf_counter() - started
                committed = time.time()
            idle_s = (idle_meter.stop(settle=0) or {}).get("workers", 0.0) / max(write_s, 1e-3)
            meter.start()
            started = time.perf_counter()
            _wake()
            samples = _wait_received(receiver, "/fast", n, 60 + n / 500)
            metered_s = time.perf_counter() - started
            cpu = meter.stop()
            metered_s += METER_SETTLE_S
        stats = receiver.stats()["/fast"]
        receipts = receiver.receipts()["/fast"]
    finally:
        receiver.stop()
    firsts = [v[0] for v in receipts.values() if v[0] is not None]
    received = len(firsts)
    done_s = (max(firsts) - committed) if firsts else float("nan")
    rate = received / done_s if firsts else 0.0
    missing = sum(1 for i in ids if f"evt_{i}" not in receipts or receipts[f"evt_{i}"][0] is None)
    counts = _delivery_counts(bench)
    _plot_throughput(samples, out_dir / "p6-throughput.png", n)
    counters = {k: cpu.pop(k) for k in ("transactions", "rows_updated")}
    per = {k: round(v / received * 1e6) if received else None for k, v in cpu.items()}
    # Net of what the workers spend idle over as long (a lower bound of the per-delivery work).
    idle_cpu = idle_s * metered_s
    net = round((cpu["workers"] - idle_cpu) / received * 1e6) if received else None
    per_delivery = {k: round(v / received, 2) if received else None for k, v in counters.items()}
    return {
        "params": params,
        "figures": {
            "events": n,
            "received": received,
            "missing": missing,
            "seconds_commit_to_last": round(done_s, 2),
            "deliveries_per_s": round(rate),
            "write_s": round(write_s, 2),
            "receiver": stats,
            "deliveries": counts,
            "cpu_seconds": cpu,
            "cpu_us_per_delivery": per,
            "workers_idle_cpu_per_s": round(idle_s, 4),
            "workers_cpu_us_per_delivery_net_of_idle": net,
            # By the database's counters: transactions committed, row versions written.
            "database_per_delivery": per_delivery,
            "bare_http": bare,
        },
        "plots": ["p6-throughput.png"],
        "rows": [
            {
                "figure": f"{n:,} events to a fast receiver: deliveries/s",
                "value": rate,
                "unit": "deliveries/s",
                "beside": f"bare sender, {bare['processes']}x{bare['threads']} threads, no DB",
                "beside_value": bare["per_s"],
                "ratio": rate / bare["per_s"] if bare["per_s"] else None,
                "target": f">= {TARGET_RATE:,}/s",
                "met": rate >= TARGET_RATE and missing == 0,
            },
            {
                "figure": "received / duplicates / bad signatures",
                "value": f"{received:,} / {stats['duplicates']} / {stats['bad_signatures']}",
                "unit": f"of {n:,} ({stats['verified']} verified)",
                "target": "all / - / 0",
                "met": missing == 0 and stats["bad_signatures"] == 0,
            },
            {
                "figure": "CPU per delivery: workers",
                "value": per.get("workers"),
                "unit": "µs",
                "beside": "receiver / PostgreSQL",
                "beside_value": f"{per.get('receiver')} / {per.get('postgres')}",
                "target": "",
                "met": None,
            },
            {
                "figure": "CPU per delivery: workers, net of their idle CPU",
                "value": net,
                "unit": "µs",
                "beside": "workers idle, CPU s per s",
                "beside_value": round(idle_s, 4),
                "target": "",
                "met": None,
            },
            {
                "figure": "CPU per bare POST: clients",
                "value": bare["cpu_us_per_post"]["clients"],
                "unit": "µs",
                "beside": "receiver",
                "beside_value": bare["cpu_us_per_post"]["receiver"],
                "target": "",
                "met": None,
            },
            {
                "figure": "database per delivery: transactions",
                "value": per_delivery["transactions"],
                "unit": "commits",
                "beside": "row versions written",
                "beside_value": per_delivery["rows_updated"],
                "target": "",
                "met": None,
            },
        ],
    }


def _bare(
    url: str, secret: str, n: int, threads: int, receiver_pid: int, processes: int = 2
) -> dict:
    """Signed POSTs/s from ``processes`` processes of ``threads`` threads, no database;
    the CPU per POST of the clients and of the receiver."""
    import psutil

    def receiver_cpu() -> float:
        t = psutil.Process(receiver_pid).cpu_times()
        return t.user + t.system

    per_process = n // processes
    receiver0 = receiver_cpu()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.p6_webhooks",
                "bare",
                "--url",
                url,
                "--secret",
                secret,
                "--n",
                str(per_process),
                "--threads",
                str(threads),
                "--offset",
                str(i * per_process),
            ],
            cwd=ROOT,
            env={**os.environ, **ALLOW_PRIVATE},
            stdout=subprocess.PIPE,
        )
        for i in range(processes)
    ]
    # Each client times its own sending, from after its start-up.
    runs = [json.loads(p.communicate()[0].decode().strip().splitlines()[-1]) for p in procs]
    elapsed = max(r["ended"] for r in runs) - min(r["started"] for r in runs)
    total = sum(r["posts"] for r in runs)
    return {
        "cpu_us_per_post": {
            "clients": round(sum(r["cpu"] for r in runs) / total * 1e6),
            # From before the clients' start: their warm-up requests count, a few.
            "receiver": round((receiver_cpu() - receiver0) / total * 1e6),
        },
        "posts": total,
        "seconds": round(elapsed, 2),
        "per_s": round(total / elapsed),
        "processes": processes,
        "threads": threads,
    }


def bare_client(url: str, secret: str, n: int, threads: int, offset: int) -> None:
    """What a worker does per delivery, minus the database: the workers' own sender
    (tasks/sender.py: sign, POST on a kept-alive connection, read the answer), on
    ``threads`` threads."""
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime
    from uuid import UUID, uuid4

    from models.config import get_settings
    from models.deliveries import Claimed
    from models.envelope import body, event_id
    from tasks.sender import Sender

    sender = Sender(get_settings())
    tenant = UUID(int=0)
    token = uuid4()
    now = datetime.now(UTC)
    payload = {
        "lead_id": "lead-1",
        "escalation_step": 1,
        "action": "notify",
        "target": "owner",
        "correlation_id": "bench",
    }

    def row(i: int) -> Claimed:
        # As the claim returns it: the envelope's text ready (built by the claim's SQL).
        event = {
            "id": i,
            "tenant_id": tenant,
            "event_type": "sla.escalation.triggered",
            "payload": payload,
            "created_at": now,
        }
        return Claimed(i, tenant, tenant, 0, url, secret, None, event_id(i), body(event), "bench")

    def send(i: int) -> None:
        outcome = sender.send(row(i), token)
        if outcome.status_code != 200:
            raise RuntimeError(f"bare send failed: {outcome}")

    send(offset)  # connected, and the code warm, before the clock starts
    started, cpu = time.time(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(send, range(offset + 1, offset + n)):
            pass
    print(
        json.dumps(
            {
                "started": started,
                "ended": time.time(),
                "cpu": time.process_time() - cpu,
                "posts": n - 1,
            }
        ),
        flush=True,
    )


def _plot_throughput(samples: list, path: Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([s for s, _ in samples], [c for _, c in samples])
    ax.set_xlabel("seconds since the commit")
    ax.set_ylabel("events received (distinct webhook-ids)")
    ax.set_title(f"P6: {n:,} events delivered to a local receiver")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- steady streams


class Stream(threading.Thread):
    """Writes ``rate`` events a second for ``seconds`` (a transaction every tick),
    waking delivery after each commit; remembers each event's commit time."""

    def __init__(
        self, bench: Bench, tenant: str, rate: int, seconds: float, tick_ms: int, salt: str
    ):
        super().__init__(daemon=True)
        self.bench, self.tenant, self.salt = bench, tenant, salt
        self.ticks = int(seconds * 1000 / tick_ms)
        self.tick_s = tick_ms / 1000
        self.timers_per_tick = max(1, round(rate * self.tick_s / 2))
        self.committed: dict[int, float] = {}  # outbox id -> commit time
        self.late_ticks = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.bench.connect() as c:
                started = time.monotonic()
                for tick in range(self.ticks):
                    pause = started + tick * self.tick_s - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    elif pause < -self.tick_s:
                        self.late_ticks += 1
                    with c.transaction():
                        ids = write_events(
                            c, self.tenant, self.timers_per_tick, f"{self.salt}{tick}-"
                        )
                    at = time.time()
                    _wake()
                    for i in ids:
                        self.committed[i] = at
        except BaseException as exc:  # reported by the scenario
            self.error = exc

    @property
    def events(self) -> int:
        return self.ticks * self.timers_per_tick * 2


def _latencies(stream: Stream, receipts: dict[str, list]) -> dict:
    values, missing = [], 0
    for outbox_id, at in stream.committed.items():
        got = receipts.get(f"evt_{outbox_id}")
        if got is None or got[0] is None:
            missing += 1
        else:
            values.append((got[0] - at) * 1000)
    return {
        "events": len(stream.committed),
        "received": len(values),
        "missing": missing,
        "p50_ms": round(percentile(values, 50), 1),
        "p99_ms": round(percentile(values, 99), 1),
        "max_ms": round(max(values), 1) if values else None,
        "late_ticks": stream.late_ticks,
        "values_ms": values,
    }


def run_latency(bench: Bench, params: dict, out_dir: Path) -> dict:
    from models.signatures import new_secret

    tenant, _ = bench.tenant()
    secret = new_secret()
    receiver = _receiver(
        out_dir, "p6l", ["/fast=fast"], secrets={"/fast": secret}, verify_every=100
    )
    try:
        subscribe(bench, tenant, receiver.url("/fast"), secret)
        with running(*_services(bench, out_dir, "p6l", params["worker_processes"], 8, {})):
            stream = Stream(
                bench, tenant, params["rate"], params["seconds"], params["tick_ms"], "p6l-"
            )
            stream.start()
            stream.join()
            if stream.error:
                raise stream.error
            _wait_received(receiver, "/fast", stream.events, 30)
        receipts = receiver.receipts()["/fast"]
        stats = receiver.stats()["/fast"]
    finally:
        receiver.stop()
    result = _latencies(stream, receipts)
    values = result.pop("values_ms")
    _plot_latency(
        {"commit to receipt": values},
        out_dir / "p6l-latency.png",
        f"P6: commit to receipt at {params['rate']} events/s",
    )
    rate = f"{params['rate']} events/s for {params['seconds']} s"
    return {
        "params": params,
        "figures": {**result, "receiver": stats, "deliveries": _delivery_counts(bench)},
        "plots": ["p6l-latency.png"],
        "rows": [
            {
                "figure": f"commit to receipt p50 ({rate})",
                "value": result["p50_ms"],
                "unit": "ms",
                "beside": "p99",
                "beside_value": result["p99_ms"],
                "target": f"p50 <= {TARGET_P50_MS} ms",
                "met": result["p50_ms"] <= TARGET_P50_MS and result["missing"] == 0,
            },
            {
                "figure": "commit to receipt p99",
                "value": result["p99_ms"],
                "unit": "ms",
                "beside": "max",
                "beside_value": result["max_ms"],
                "target": f"p99 <= {TARGET_P99_MS:,} ms",
                "met": result["p99_ms"] <= TARGET_P99_MS,
            },
            {
                "figure": "received / duplicates",
                "value": f"{result['received']:,} / {stats['duplicates']}",
                "unit": f"of {result['events']:,}",
                "target": "all",
                "met": result["missing"] == 0,
            },
        ],
    }


def _plot_latency(series: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in series.items():
        if values:
            ordered = sorted(values)
            ax.plot(ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction (cumulative)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- dead receiver


def _firing_lateness(bench: Bench, prefix: str) -> list[float]:
    with bench.connect() as c:
        return [
            float(v)
            for (v,) in c.execute(
                "SELECT extract(epoch FROM e.executed_at - t.due_at) * 1000"
                " FROM sla_escalation_events e JOIN sla_timers t ON t.id = e.timer_id"
                " WHERE t.lead_id LIKE %s",
                (f"lead-{prefix}%",),
            )
        ]


# P6d's arms: tenant A's endpoint (a receiver route), or None for no subscription.
ARMS = {"dead": "/a", "healthy": "/h", "none": None}


def _dead_phase(
    bench: Bench, params: dict, out_dir: Path, receiver: ReceiverProcess, name: str
) -> dict:
    from models.signatures import new_secret
    from tasks.wakeups import schedule_wakeups

    bench.reset()
    receiver.reset()
    tenant_a, _ = bench.tenant()
    tenant_b, _ = bench.tenant()
    subscribe(bench, tenant_b, receiver.url("/b"), new_secret())
    if ARMS[name] is not None:
        subscribe(bench, tenant_a, receiver.url(ARMS[name]), new_secret())
    env = {"SLA_WEBHOOK_TIMEOUT_SECONDS": str(params["timeout_s"])}
    with running(*_services(bench, out_dir, f"p6d-{name}", params["worker_processes"], 8, env)):
        # Tenant A's timers, falling due evenly over the stream (a one-step ladder:
        # a due and a step event each, to A's endpoint when it has one).
        t0 = datetime.now(UTC) + timedelta(seconds=3)
        n_timers = int(params["timers_per_s"] * params["seconds"])
        seed_timers(
            bench,
            tenant_a,
            n_timers,
            "%(t0)s::timestamptz + make_interval(secs => (g - 1)::float / %(rate)s)",
            prefix=f"{name}-",
            params={"t0": t0, "rate": params["timers_per_s"]},
        )
        with bench.connect() as c:
            instants = [r[0] for r in c.execute("SELECT DISTINCT next_fire_at FROM sla_timers")]
        schedule_wakeups(instants)
        time.sleep(max(0.0, (t0 - datetime.now(UTC)).total_seconds()))
        streams = [
            Stream(bench, tenant_a, params["rate_a"], params["seconds"], params["tick_ms"], "a-"),
            Stream(bench, tenant_b, params["rate_b"], params["seconds"], params["tick_ms"], "b-"),
        ]
        for s in streams:
            s.start()
        for s in streams:
            s.join()
            if s.error:
                raise s.error
        _wait_received(receiver, "/b", streams[1].events, 30)
        latency = _latencies(streams[1], receiver.receipts()["/b"])
        # Then B's burst, with A's dead deliveries still waiting for their timeouts.
        before = receiver.received("/b")
        with bench.connect() as c:
            with c.transaction():
                write_events(c, tenant_b, params["burst"] // 2, "burst-")
            committed = time.time()
        _wake()
        _wait_received(receiver, "/b", before + params["burst"], 60 + params["burst"] / 200)
        receipts = receiver.receipts()["/b"]
        burst_firsts = [v[0] for k, v in receipts.items() if v[0] is not None and v[0] >= committed]
        burst_s = max(burst_firsts) - committed if burst_firsts else float("nan")
        stats = receiver.stats()
    firing = _firing_lateness(bench, f"{name}-")
    with bench.connect() as c:
        a_attempts = c.execute(
            "SELECT count(*) FROM webhook_attempts WHERE tenant_id = %s", (tenant_a,)
        ).fetchone()[0]
    values = latency.pop("values_ms")
    return {
        "b_latency": latency,
        "b_latency_values": values,
        "b_burst": {
            "events": params["burst"],
            "received": len(burst_firsts),
            "seconds": round(burst_s, 2),
            "per_s": round(len(burst_firsts) / burst_s) if burst_firsts else 0,
        },
        "firing": {
            "timers": n_timers,
            "fired": len(firing),
            "p50_ms": round(percentile(firing, 50), 1),
            "p99_ms": round(percentile(firing, 99), 1),
            "max_ms": round(max(firing), 1) if firing else None,
        },
        "firing_values": firing,
        "a_attempts": a_attempts,
        "receiver": stats,
    }


def _median_arm(runs: list[dict]) -> dict:
    """One arm's figures over its repetitions: the medians, with every run's."""
    med = statistics.median
    return {
        "b_latency": {
            "p50_ms": round(med(r["b_latency"]["p50_ms"] for r in runs), 1),
            "p99_ms": round(med(r["b_latency"]["p99_ms"] for r in runs), 1),
            "missing": sum(r["b_latency"]["missing"] for r in runs),
            "runs_p99_ms": [r["b_latency"]["p99_ms"] for r in runs],
        },
        "b_burst": {
            "per_s": round(med(r["b_burst"]["per_s"] for r in runs)),
            "received": sum(r["b_burst"]["received"] for r in runs),
            "runs_per_s": [r["b_burst"]["per_s"] for r in runs],
        },
        "firing": {
            "timers": sum(r["firing"]["timers"] for r in runs),
            "fired": sum(r["firing"]["fired"] for r in runs),
            "p50_ms": round(med(r["firing"]["p50_ms"] for r in runs), 1),
            "p99_ms": round(med(r["firing"]["p99_ms"] for r in runs), 1),
        },
        "a_attempts": round(med(r["a_attempts"] for r in runs)),
        "runs": runs,
    }


def run_dead(bench: Bench, params: dict, out_dir: Path) -> dict:
    receiver = _receiver(out_dir, "p6d", ["/a=dead", "/b=fast", "/h=fast"])
    runs: dict[str, list[dict]] = {name: [] for name in ARMS}
    values: dict[str, dict[str, list[float]]] = {name: {"b": [], "timers": []} for name in ARMS}
    try:
        for _ in range(params["repeats"]):
            for name in ARMS:
                run = _dead_phase(bench, params, out_dir, receiver, name)
                values[name]["b"] += run.pop("b_latency_values")
                values[name]["timers"] += run.pop("firing_values")
                runs[name].append(run)
    finally:
        receiver.stop()
    _plot_latency(
        {
            "B, A's endpoint dead": values["dead"]["b"],
            "B, A's endpoint healthy": values["healthy"]["b"],
            "B, A without endpoint": values["none"]["b"],
            "timers, A's endpoint dead": values["dead"]["timers"],
            "timers, A without endpoint": values["none"]["timers"],
        },
        out_dir / "p6d-dead.png",
        "P6: tenant B's deliveries and timer lateness beside a dead endpoint",
    )
    dead, healthy, none = (_median_arm(runs[name]) for name in ARMS)

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None

    rate_d, rate_h, rate_n = (a["b_burst"]["per_s"] for a in (dead, healthy, none))
    lat_d, lat_h, lat_n = (a["b_latency"] for a in (dead, healthy, none))
    fire_d, fire_n = dead["firing"], none["firing"]
    firing_same = (
        fire_d["fired"] == fire_d["timers"]
        and fire_d["p50_ms"] <= fire_n["p50_ms"] + NOISE_MS
        and fire_d["p99_ms"] <= fire_n["p99_ms"] * 1.1 + NOISE_MS
    )
    n = params["repeats"]
    return {
        "params": params,
        "figures": {"dead": dead, "healthy": healthy, "none": none},
        "plots": ["p6d-dead.png"],
        "rows": [
            {
                "figure": f"dead endpoint (A): B's burst of {params['burst']:,},"
                f" deliveries/s (median of {n})",
                "value": rate_d,
                "unit": "deliveries/s",
                "beside": "A's endpoint healthy",
                "beside_value": rate_h,
                "ratio": ratio(rate_d, rate_h),
                "target": f"slowdown <= {TARGET_SLOWDOWN:.0%}",
                "met": bool(rate_h) and 1 - rate_d / rate_h <= TARGET_SLOWDOWN,
            },
            {
                "figure": f"dead endpoint: B's latency p50 ({params['rate_b']}/s)",
                "value": lat_d["p50_ms"],
                "unit": "ms",
                "beside": "A's endpoint healthy",
                "beside_value": lat_h["p50_ms"],
                "ratio": ratio(lat_d["p50_ms"], lat_h["p50_ms"]),
                "target": f"<= +{TARGET_SLOWDOWN:.0%} or +{NOISE_MS:g} ms",
                "met": _within(lat_d["p50_ms"], lat_h["p50_ms"]),
            },
            {
                "figure": "dead endpoint: B's latency p99",
                "value": lat_d["p99_ms"],
                "unit": "ms",
                "beside": "A's endpoint healthy",
                "beside_value": lat_h["p99_ms"],
                "ratio": ratio(lat_d["p99_ms"], lat_h["p99_ms"]),
                "target": f"<= +{TARGET_SLOWDOWN:.0%} or +{NOISE_MS:g} ms",
                "met": _within(lat_d["p99_ms"], lat_h["p99_ms"]) and lat_d["missing"] == 0,
            },
            {
                "figure": "dead endpoint: B's burst / p50 / p99 beside A without endpoint",
                "value": f"{rate_d:,} / {lat_d['p50_ms']} / {lat_d['p99_ms']}",
                "unit": "/s, ms",
                "beside": "A without endpoint",
                "beside_value": f"{rate_n:,} / {lat_n['p50_ms']} / {lat_n['p99_ms']}",
                "target": "",
                "met": None,
            },
            {
                "figure": f"dead endpoint: timer lateness p50 / p99 ({params['timers_per_s']}/s)",
                "value": f"{fire_d['p50_ms']} / {fire_d['p99_ms']}",
                "unit": "ms",
                "beside": "A without endpoint",
                "beside_value": f"{fire_n['p50_ms']} / {fire_n['p99_ms']}",
                "target": f"not measurably (p50 +{NOISE_MS:g} ms, p99 +10 % +{NOISE_MS:g} ms)",
                "met": firing_same,
            },
            {
                "figure": "dead endpoint: attempts to A per run (all timeouts)",
                "value": dead["a_attempts"],
                "unit": "attempts",
                "beside": f"{params['timeout_s']:g} s timeout, in flight per subscription",
                "beside_value": _max_in_flight(),
                "target": "",
                "met": None,
            },
        ],
    }


def _within(dead_ms: float, baseline_ms: float) -> bool:
    """No more than 10 % slower, or within the noise."""
    return dead_ms <= baseline_ms * (1 + TARGET_SLOWDOWN) or dead_ms <= baseline_ms + NOISE_MS


def _max_in_flight() -> int:
    from models.config import get_settings

    return get_settings().webhook_max_in_flight


class Latency:
    """P6 latency: events committed at 500/s, commit to receipt p50 and p99."""

    QUICK = LATENCY_QUICK
    FULL = LATENCY_FULL
    run = staticmethod(run_latency)


class Dead:
    """P6 dead receiver: tenant A's endpoint never answers; tenant B's deliveries and timer firing beside A's endpoint healthy and A without one."""  # noqa: E501

    QUICK = DEAD_QUICK
    FULL = DEAD_FULL
    run = staticmethod(run_dead)


# --------------------------------------------------------------------------- in one process


def profile_loop(events: int, out: Path, pyinstrument: bool = False, vacuum: bool = True) -> None:
    """The delivery loop (``deliver_due``) in this process, for its author: deliveries/s,
    CPU per delivery here and in PostgreSQL, and the time and rows of each kind of
    statement, as the client saw them. ``pyinstrument`` also profiles the loop's thread
    (not the sending threads). Uses the bench database and a fast receiver. ``vacuum``
    False leaves the backlog as P6 has it: never analyzed, its pages never vacuumed
    (autovacuum is off on this machine's server)."""
    import collections

    from sqlalchemy import event

    os.environ.update(ALLOW_PRIVATE)
    bench = Bench.create()  # before the service's modules read the settings
    from models import deliveries
    from models.config import get_settings
    from models.db import get_maintenance_engine
    from models.signatures import new_secret
    from tasks.delivery import deliver_due

    claim, record = deliveries.claim, deliveries.record
    receiver = _receiver(out, "p6-loop", ["/fast=fast"])
    try:
        engine = get_maintenance_engine()
        stats: dict[str, list] = collections.defaultdict(lambda: [0, 0.0, 0])
        local = threading.local()

        @event.listens_for(engine, "before_cursor_execute")
        def _before(conn, cursor, statement, params, context, executemany):
            local.started = time.perf_counter()

        @event.listens_for(engine, "after_cursor_execute")
        def _after(conn, cursor, statement, params, context, executemany):
            s = stats[" ".join(statement.split())[:70]]
            s[0] += 1
            s[1] += time.perf_counter() - local.started
            s[2] += max(cursor.rowcount, 0)

        def timed(name, call, count):  # on the driver's connection: no engine event
            def run(*args, **kw):
                started = time.perf_counter()
                result = call(*args, **kw)
                s = stats[name]
                s[0] += 1
                s[1] += time.perf_counter() - started
                s[2] += count(args, result)
                return result

            return run

        deliveries.claim = timed("claim_due (driver)", claim, lambda a, rows: len(rows))
        deliveries.record = timed("record_outcomes (driver)", record, lambda a, _: len(a[1]))

        tenant, _ = bench.tenant()
        subscribe(bench, tenant, receiver.url("/fast"), new_secret())
        with bench.connect() as c:
            with c.transaction():
                write_events(c, tenant, events // 2, "loop-")
            if vacuum:
                c.execute("VACUUM ANALYZE")
        meter = CpuMeter(bench, {"receiver": [receiver.service.proc.pid]})
        settings = get_settings()
        profiler = None
        if pyinstrument:
            from pyinstrument import Profiler

            profiler = Profiler()
            profiler.start()
        senders_before = _sending_threads_cpu()
        meter.start()
        started, loop_cpu, own = time.perf_counter(), time.thread_time(), time.process_time()
        while deliver_due(engine, settings, use_redis=False).claimed:
            pass
        elapsed, loop_cpu = time.perf_counter() - started, time.thread_time() - loop_cpu
        own = time.process_time() - own
        if profiler:
            profiler.stop()
        cpu = meter.stop()
        senders = _sending_threads_cpu() - senders_before
        n = receiver.received("/fast")
        print(
            f"{n:,} delivered in {elapsed:.2f} s: {n / elapsed:,.0f}/s; CPU per delivery: "
            f"this process {own / n * 1e6:,.0f} µs (the loop's thread "
            f"{loop_cpu / n * 1e6:,.0f}, sending threads {senders / n * 1e6:,.0f}, recording "
            f"and the rest {(own - loop_cpu - senders) / n * 1e6:,.0f}), the receiver "
            f"{cpu['receiver'] / n * 1e6:,.0f} µs, PostgreSQL "
            f"{cpu['postgres'] / n * 1e6:,.0f} µs; commits per delivery "
            f"{cpu['transactions'] / n:.2f}"
        )
        for key, (count, seconds, rows) in sorted(stats.items(), key=lambda kv: -kv[1][1])[:10]:
            print(f"{count:6,} x {seconds / count * 1000:6.2f} ms, {rows / count:6.1f} rows: {key}")
        if profiler:
            print(profiler.output_text(unicode=True, color=False))
    finally:
        deliveries.claim, deliveries.record = claim, record
        receiver.stop()
        bench.drop()


def _sending_threads_cpu() -> float:
    """CPU seconds (user and system) of this process's sending threads so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for thread in threading.enumerate():
        if thread.name.startswith("webhook_") and thread.native_id is not None:
            try:
                stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
            except OSError:
                continue
            fields = stat.rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m bench.p6_webhooks",
        description="bare: the sending limit's client (P6 runs it); "
        "loop: the delivery loop in one process, with its statements (profile_loop)",
    )
    parser.add_argument("what", choices=("bare", "loop"))
    parser.add_argument("--url")
    parser.add_argument("--secret")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--pyinstrument", action="store_true")
    parser.add_argument(
        "--no-vacuum", action="store_true", help="loop: no VACUUM ANALYZE after writing, as in P6"
    )
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.what == "bare":
        bare_client(args.url, args.secret, args.n, args.threads, args.offset)
    else:
        out = Path("/tmp") / "p6-loop"
        out.mkdir(exist_ok=True)
        profile_loop(args.n, out, args.pyinstrument, vacuum=not args.no_vacuum)
