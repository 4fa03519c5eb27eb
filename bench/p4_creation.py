"""P4 creation: timers started per second over HTTP, one per request and in bulk.

gunicorn serves the API; ``wrk`` (a separate process) drives it with a Lua
script that gives every request unique lead ids. Rates are counted from the
rows in ``sla_timers`` (and checked against the ``sla.timer.started`` events),
not taken from wrk's figures. Beside them: ``pgbench`` inserting single rows of
similar width into a scratch table of the same database, the rate of a bare
INSERT + COMMIT on this machine. gunicorn, PostgreSQL and wrk share the cores,
as does pgbench with PostgreSQL.

Timers use a 30 minute window (beyond the wake-up horizon), so no Redis
wake-up is sent: a start is the database work and the HTTP path.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

from .common import BIN, Bench, Service, cpu_seconds, running, wait_for

QUICK = {
    "web_workers": 2,
    "web_threads": 4,
    "single_connections": 8,
    "bulk_connections": 8,
    "bulk_items": 500,
    "warmup_seconds": 2,
    "seconds": 12,
    "pgbench_seconds": 8,
    "pgbench_clients": 4,
}
FULL = {**QUICK, "seconds": 30, "pgbench_seconds": 30, "warmup_seconds": 5}

TARGET_SINGLE = 2_000
TARGET_BULK = 20_000

# One timer as a CRM would start it: a two-step ladder, a little metadata, the
# "default" contract (a named one would have to be defined first: PUT /v1/contracts).
_STEPS = (
    '[{"step": 1, "after_seconds": 0, "action": "notify", "target": "owner"}, '
    '{"step": 2, "after_seconds": 600, "action": "reassign", "target": "team-lead"}]'
)
_METADATA = '{"source": "bench", "campaign": "p4"}'
_ITEM = (
    '{"lead_id": "%s", "window_seconds": 1800, '
    f'"escalation_steps": {_STEPS}, "metadata": {_METADATA}}}'
)

# wrk runs this in each of its threads. ``setup`` (main state) numbers the
# threads; the run prefix comes after ``--`` on the command line, so lead ids
# are unique across threads, requests and runs.
_LUA = """
local item = [[%(item)s]]
local items = %(items)d
local path = "%(path)s"
local n = 0
local prefix = ""
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  prefix = args[1] .. "-" .. tid .. "-"
end

local headers = {
  ["Authorization"] = "Bearer " .. os.getenv("SLA_BENCH_API_KEY"),
  ["Content-Type"] = "application/json",
}

function request()
  n = n + 1
  local body
  if items == 0 then
    body = string.format(item, prefix .. n)
  else
    local parts = {}
    for i = 1, items do
      parts[i] = string.format(item, prefix .. n .. "-" .. i)
    end
    body = '{"timers": [' .. table.concat(parts, ",") .. ']}'
  end
  return wrk.format("POST", path, headers, body)
end
"""

# pgbench: one single-row INSERT per transaction into a table as wide as
# sla_timers' written columns, with a primary key and one secondary index.
_SCRATCH = """
DROP TABLE IF EXISTS p4_scratch;
CREATE TABLE p4_scratch (
    id uuid PRIMARY KEY, tenant_id uuid NOT NULL, lead_id text NOT NULL,
    sla_contract_id text NOT NULL, started_at timestamptz NOT NULL,
    due_at timestamptz NOT NULL, window_seconds int NOT NULL,
    status text NOT NULL DEFAULT 'ACTIVE', correlation_id text NOT NULL,
    escalation_steps jsonb NOT NULL, metadata jsonb NOT NULL,
    next_fire_at timestamptz, created_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON p4_scratch (tenant_id, created_at, id);
"""
_PGBENCH_SCRIPT = f"""
\\set r random(1, 1000000000)
INSERT INTO p4_scratch (id, tenant_id, lead_id, sla_contract_id, started_at, due_at,
    window_seconds, correlation_id, escalation_steps, metadata, next_fire_at)
VALUES (gen_random_uuid(), '00000000-0000-0000-0000-000000000001',
    'lead-' || :client_id || '-' || :r, 'first-contact', now(),
    now() + interval '30 minutes', 1800, gen_random_uuid()::text,
    '{_STEPS}', '{_METADATA}', now() + interval '30 minutes');
"""


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise RuntimeError("p4 needs wrk: install it (apt-get install wrk) or run as root")
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, capture_output=True)
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
    return shutil.which("wrk") or "wrk"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _counts(bench: Bench) -> tuple[int, int]:
    """(timers, started events), from one snapshot."""
    with bench.connect() as c:
        return c.execute(
            "SELECT (SELECT count(*) FROM sla_timers), (SELECT count(*) FROM outbox_events"
            " WHERE event_type = 'sla.timer.started')"
        ).fetchone()


def _wrk(
    wrk: str,
    url: str,
    script: Path,
    seconds: int,
    connections: int,
    prefix: str,
    env: dict[str, str],
) -> dict:
    threads = min(2, connections)
    out = subprocess.run(
        [
            wrk,
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--latency",
            "--timeout",
            "30s",
            "-s",
            str(script),
            url,
            "--",
            prefix,
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    duration = float(requests[2]) / (1000 if requests[3] == "ms" else 1)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def latency(p: str) -> float | None:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m is None:
            return None
        return float(m[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m[2]]

    return {
        "requests": int(requests[1]),
        "seconds": duration,
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "output": out,
    }


def _pgbench(bench: Bench, out_dir: Path, seconds: int, clients: int) -> float:
    with bench.connect() as c:
        c.execute(_SCRATCH)
    script = out_dir / "p4_pgbench.sql"
    script.write_text(_PGBENCH_SCRIPT)
    pgbench = shutil.which("pgbench") or "pgbench"
    out = subprocess.run(
        [
            pgbench,
            "-n",
            "-c",
            str(clients),
            "-j",
            str(min(2, clients)),
            "-T",
            str(seconds),
            "-f",
            str(script),
            bench.dsn,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    with bench.connect() as c:
        c.execute("DROP TABLE p4_scratch")
    return float(re.search(r"tps = ([\d.]+)", out)[1])


class CpuMeter:
    """CPU seconds used by the web processes, the bench database's backends
    and wrk (a child of this process) between ``start()`` and ``stop()``."""

    def __init__(self, bench: Bench, web_pid: int) -> None:
        self.bench, self.web_pid = bench, web_pid

    def _sample(self) -> dict[str, float]:
        import psutil

        cpu = cpu_seconds

        web = psutil.Process(self.web_pid)
        with self.bench.connect() as c:
            backends = [
                r[0]
                for r in c.execute(
                    "SELECT pid FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ]
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return {
            "web": cpu([self.web_pid, *(p.pid for p in web.children(recursive=True))]),
            "postgres": cpu(backends),
            "wrk": children.ru_utime + children.ru_stime,
        }

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        end = self._sample()
        return {k: end[k] - self._start[k] for k in end}


def _phase(
    bench: Bench,
    wrk: str,
    url: str,
    script: Path,
    params: dict,
    connections: int,
    name: str,
    env: dict[str, str],
    meter: CpuMeter,
) -> dict:
    """A warm-up run, then the measured run; the rate counts committed rows."""
    _wrk(wrk, url, script, params["warmup_seconds"], connections, f"{name}-warm", env)
    timers0, started0 = _counts(bench)
    meter.start()
    result = _wrk(wrk, url, script, params["seconds"], connections, name, env)
    cpu = meter.stop()
    timers1, started1 = _counts(bench)
    result["timers"] = timers1 - timers0
    result["started_events"] = started1 - started0
    result["timers_per_second"] = result["timers"] / result["seconds"]
    # New backends can appear mid-run (their CPU before the first sample is
    # lost), so these are lower bounds; with warmed-up pools they are exact.
    result["cpu_seconds"] = cpu
    result["cpu_us_per_timer"] = {
        k: v / result["timers"] * 1e6 if result["timers"] else None for k, v in cpu.items()
    }
    return result


def _rate_row(figure: str, rate: float, pg_tps: float, target: int) -> dict:
    return {
        "figure": figure,
        "value": rate,
        "unit": "timers/s",
        "beside": "pgbench 1-row INSERT tx/s",
        "beside_value": pg_tps,
        "ratio": rate / pg_tps if pg_tps else None,
        "target": f">= {target:,}/s",
        "met": rate >= target,
    }


def _cpu_row(figure: str, result: dict) -> dict:
    per = result["cpu_us_per_timer"]
    return {
        "figure": figure,
        "value": per["web"],
        "unit": "µs CPU/timer in gunicorn",
        "beside": "in PostgreSQL",
        "beside_value": per["postgres"],
        "ratio": None,
        "target": "",
        "met": None,
    }


def run(bench: Bench, params: dict, out_dir: Path) -> dict:
    wrk = ensure_wrk()
    pg_tps = _pgbench(bench, out_dir, params["pgbench_seconds"], params["pgbench_clients"])

    _, api_key = bench.tenant()
    env = {**bench.env, "SLA_BENCH_API_KEY": api_key}
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    scripts = {}
    for name, items, path in (
        ("single", 0, "/v1/timers"),
        ("bulk", params["bulk_items"], "/v1/timers/bulk"),
    ):
        scripts[name] = out_dir / f"p4_{name}.lua"
        scripts[name].write_text(_LUA % {"item": _ITEM, "items": items, "path": path})

    # Each gthread worker accepts keep-alive connections greedily: left alone,
    # one worker can take all of wrk's connections while the other idles (one
    # process, one GIL: half the machine). A per-worker cap spreads them.
    connections = max(params["single_connections"], params["bulk_connections"])
    per_worker = -(-connections // params["web_workers"])
    web = Service(
        [
            str(BIN / "gunicorn"),
            "web:create_app()",
            "--bind",
            f"127.0.0.1:{port}",
            "--worker-class",
            "gthread",
            "--workers",
            str(params["web_workers"]),
            "--threads",
            str(params["web_threads"]),
            "--worker-connections",
            str(per_worker),
        ],
        env,
        out_dir / "p4_gunicorn.log",
        ready="Booting worker",
        ready_count=params["web_workers"],
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    with running(web):
        wait_for(healthy, 30, 0.2)
        meter = CpuMeter(bench, web.pid)
        single, bulk = (
            _phase(
                bench,
                wrk,
                base,
                scripts[name],
                params,
                params[f"{name}_connections"],
                name,
                env,
                meter,
            )
            for name in ("single", "bulk")
        )

    for name, result in (("single", single), ("bulk", bulk)):
        (out_dir / f"p4_wrk_{name}.txt").write_text(result.pop("output"))

    bad = single["non_2xx"] + single["socket_errors"] + bulk["non_2xx"] + bulk["socket_errors"]
    missing = sum(r["timers"] - r["started_events"] for r in (single, bulk))
    figures = {
        "single": single,
        "bulk": bulk,
        "pgbench_single_row_inserts_per_second": pg_tps,
        "cores": os.cpu_count(),
    }
    rows = [
        _rate_row(
            "single start, POST /v1/timers", single["timers_per_second"], pg_tps, TARGET_SINGLE
        ),
        _rate_row(
            f"bulk start, {params['bulk_items']} per POST /v1/timers/bulk",
            bulk["timers_per_second"],
            pg_tps,
            TARGET_BULK,
        ),
        _cpu_row("single start CPU", single),
        _cpu_row("bulk start CPU", bulk),
        {
            "figure": "single start latency p50",
            "value": single["p50_ms"],
            "unit": "ms",
            "beside": "p99",
            "beside_value": single["p99_ms"],
            "ratio": None,
            "target": "",
            "met": None,
        },
        {
            "figure": "non-2xx responses and socket errors",
            "value": bad,
            "unit": "responses",
            "beside": "timers without started event",
            "beside_value": missing,
            "ratio": None,
            "target": "0 and 0",
            "met": bad == 0 and missing == 0,
        },
    ]
    return {"params": params, "figures": figures, "rows": rows}
