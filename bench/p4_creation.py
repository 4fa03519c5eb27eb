"""P4 creation: timers started per second over HTTP, one per request and in bulk.

gunicorn serves the API; ``wrk`` (a separate process) drives it with a Lua
script that gives every request unique lead ids. Rates are counted from the
rows in ``sla_timers`` (and checked against the ``sla.timer.started`` events),
not taken from wrk's figures. Beside them: ``pgbench`` inserting single rows of
similar width into a scratch table of the same database, the rate of a bare
INSERT + COMMIT on this machine. gunicorn, PostgreSQL and wrk share the cores,
as does pgbench with PostgreSQL.

The floor: the same server's ``GET /healthz`` rate (no I/O: Flask and the
WSGI server alone), measured just before the starts, with the starts' share
of it. ``servers`` names the WSGI servers to measure side by side, each with
the same workers and threads: ``gunicorn`` (gthread, the Procfile's) and
``granian`` (its WSGI interface); the first one's rows keep the plain names.

``profile=<tag>`` records a py-spy flame graph of the web workers during each
measured phase, ``bench/results/profiles/p4-<server>-<phase>-<tag>.svg`` (the
sampling costs the workers some CPU: compare rates from runs without it).

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

from models.config import Settings

from .common import BIN, RESULTS, Bench, Service, cpu_seconds, running, wait_for

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
    "servers": "gunicorn,granian",
    "port": 0,  # 0: any free port
    "profile": "",  # a tag: record flame graphs (see the module)
    "start_group_max": 0,  # 0: the service's default; 1: every single start alone
}
FULL = {**QUICK, "seconds": 30, "pgbench_seconds": 30, "warmup_seconds": 5}

TARGET_SINGLE = 2_000
TARGET_SINGLE_SHARE = 0.6  # ...or this share of the same server's /healthz rate
TARGET_BULK = 20_000
PROFILES = RESULTS / "profiles"

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


def _counts(bench: Bench) -> tuple[int, int, int]:
    """(timers, started events, start statements), from one snapshot. A start
    statement dates its timers with one statement_timestamp(), so the distinct
    creation instants count the statements (grouped single starts share one)."""
    with bench.connect() as c:
        return c.execute(
            "SELECT (SELECT count(*) FROM sla_timers), (SELECT count(*) FROM outbox_events"
            " WHERE event_type = 'sla.timer.started'),"
            " (SELECT count(DISTINCT created_at) FROM sla_timers)"
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


class Profiler:
    """py-spy recording the web workers to a flame graph. Only the thread
    holding the GIL is sampled (``--gil``): its Python work is what a worker
    serializes, and py-spy's own idle detection counts the threads blocked on
    gunicorn's queue or a lock as busy here."""

    def __init__(self, pid: int, path: Path, seconds: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.proc = subprocess.Popen(
            [
                str(BIN / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--subprocesses",
                "--gil",
                "--duration",
                str(max(1, round(seconds))),
                "--output",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def wait(self) -> None:
        _, err = self.proc.communicate(timeout=120)
        if self.proc.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")


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
    profile: Path | None = None,
) -> dict:
    """A warm-up run, then the measured run; the rate counts committed rows
    (for ``/healthz``, answered requests)."""
    _wrk(wrk, url, script, params["warmup_seconds"], connections, f"{name}-warm", env)
    timers0, started0, statements0 = _counts(bench)
    profiler = None if profile is None else Profiler(meter.web_pid, profile, params["seconds"])
    meter.start()
    result = _wrk(wrk, url, script, params["seconds"], connections, name, env)
    cpu = meter.stop()
    if profiler is not None:
        profiler.wait()
    timers1, started1, statements1 = _counts(bench)
    result["timers"] = timers1 - timers0
    result["started_events"] = started1 - started0
    statements = statements1 - statements0
    result["timers_per_statement"] = result["timers"] / statements if statements else None
    done = result["timers"] or result["requests"] - result["non_2xx"]
    result["timers_per_second"] = result["timers"] / result["seconds"]
    result["per_second"] = done / result["seconds"]
    # New backends can appear mid-run (their CPU before the first sample is
    # lost), so these are lower bounds; with warmed-up pools they are exact.
    result["cpu_seconds"] = cpu
    result["cpu_us_per_timer"] = {k: v / done * 1e6 if done else None for k, v in cpu.items()}
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


def _cpu_row(figure: str, result: dict, unit: str) -> dict:
    per = result["cpu_us_per_timer"]
    return {
        "figure": figure,
        "value": per["web"],
        "unit": unit,
        "beside": "in PostgreSQL",
        "beside_value": per["postgres"],
        "ratio": None,
        "target": "",
        "met": None,
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _server(name: str, port: int, params: dict, env: dict[str, str], log: Path) -> Service:
    workers, threads = str(params["web_workers"]), str(params["web_threads"])
    if name == "gunicorn":
        # Each gthread worker accepts keep-alive connections greedily: left alone,
        # one worker can take all of wrk's connections while the other idles (one
        # process, one GIL: half the machine). A per-worker cap spreads them.
        connections = max(params["single_connections"], params["bulk_connections"])
        per_worker = -(-connections // params["web_workers"])
        args = [
            str(BIN / "gunicorn"),
            "web:create_app()",
            "--bind",
            f"127.0.0.1:{port}",
            "--worker-class",
            "gthread",
            "--workers",
            workers,
            "--threads",
            threads,
            "--worker-connections",
            str(per_worker),
        ]
        return Service(args, env, log, ready="Booting worker", ready_count=params["web_workers"])
    if name == "granian":
        # The WSGI interface: the app runs in each worker's blocking threads,
        # as in gunicorn's gthread workers; HTTP is parsed in Rust.
        args = [
            str(BIN / "granian"),
            "--interface",
            "wsgi",
            "--factory",
            "web:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            workers,
            "--blocking-threads",
            threads,
            "--no-ws",
            "--http",
            "1",
        ]
        return Service(args, env, log, ready="Started worker-", ready_count=params["web_workers"])
    raise ValueError(f"unknown server {name!r}: gunicorn or granian")


def _measure_server(
    bench: Bench,
    name: str,
    wrk: str,
    scripts: dict[str, Path],
    params: dict,
    env: dict[str, str],
    out_dir: Path,
) -> dict[str, dict]:
    port = params["port"] or _free_port()
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    web = _server(name, port, params, env, out_dir / f"p4_{name}.log")
    results = {}
    with running(web):
        wait_for(healthy, 30, 0.2)
        meter = CpuMeter(bench, web.pid)
        # /healthz first: the floor, on the same warm processes as the starts.
        for phase, connections in (
            ("healthz", params["single_connections"]),
            ("single", params["single_connections"]),
            ("bulk", params["bulk_connections"]),
        ):
            profile = None
            if params["profile"]:
                profile = PROFILES / f"p4-{name}-{phase}-{params['profile']}.svg"
            results[phase] = _phase(
                bench,
                wrk,
                base,
                scripts[phase],
                params,
                connections,
                f"{name}-{phase}",
                env,
                meter,
                profile,
            )
    for phase, result in results.items():
        (out_dir / f"p4_wrk_{name}_{phase}.txt").write_text(result.pop("output"))
    return results


def _server_rows(name: str, first: bool, r: dict[str, dict], params: dict, pg_tps: float):
    single, bulk, healthz = r["single"], r["bulk"], r["healthz"]
    label = "" if first else f"{name}: "
    share = single["timers_per_second"] / healthz["per_second"] if healthz["per_second"] else 0
    cpu = "µs CPU/timer in " + name
    return [
        {
            **_rate_row(
                f"{label}single start, POST /v1/timers",
                single["timers_per_second"],
                pg_tps,
                TARGET_SINGLE,
            ),
            "beside": f"GET /healthz req/s, same {name}",
            "beside_value": healthz["per_second"],
            "ratio": share,
            "target": f">= {TARGET_SINGLE:,}/s or >= {TARGET_SINGLE_SHARE:.0%} of /healthz",
            "met": single["timers_per_second"] >= TARGET_SINGLE or share >= TARGET_SINGLE_SHARE,
        },
        _rate_row(
            f"{label}bulk start, {params['bulk_items']} per POST /v1/timers/bulk",
            bulk["timers_per_second"],
            pg_tps,
            TARGET_BULK,
        ),
        {
            **_cpu_row(f"{label}single start CPU", single, cpu),
            "beside": f"per GET /healthz in {name}",
            "beside_value": healthz["cpu_us_per_timer"]["web"],
            "ratio": None,
        },
        {
            **_cpu_row(f"{label}single start CPU in PostgreSQL", single, "µs CPU/timer"),
            "value": single["cpu_us_per_timer"]["postgres"],
            "beside": "in wrk",
            "beside_value": single["cpu_us_per_timer"]["wrk"],
        },
        _cpu_row(f"{label}bulk start CPU", bulk, cpu),
        {
            "figure": f"{label}single starts per start statement (grouped)",
            "value": single.get("timers_per_statement"),
            "unit": "timers",
            "beside": "group limit (SLA_START_GROUP_MAX)",
            "beside_value": params["start_group_max"] or Settings.start_group_max,
            "ratio": None,
            "target": "",
            "met": None,
        },
        {
            "figure": f"{label}single start latency p50",
            "value": single["p50_ms"],
            "unit": "ms",
            "beside": "p99",
            "beside_value": single["p99_ms"],
            "ratio": None,
            "target": "",
            "met": None,
        },
    ]


def run(bench: Bench, params: dict, out_dir: Path) -> dict:
    wrk = ensure_wrk()
    pg_tps = _pgbench(bench, out_dir, params["pgbench_seconds"], params["pgbench_clients"])

    _, api_key = bench.tenant()
    env = {**bench.env, "SLA_BENCH_API_KEY": api_key}
    if params["start_group_max"]:
        env["SLA_START_GROUP_MAX"] = str(params["start_group_max"])
    scripts = {}
    for name, items, path in (
        ("single", 0, "/v1/timers"),
        ("bulk", params["bulk_items"], "/v1/timers/bulk"),
    ):
        scripts[name] = out_dir / f"p4_{name}.lua"
        scripts[name].write_text(_LUA % {"item": _ITEM, "items": items, "path": path})
    scripts["healthz"] = out_dir / "p4_healthz.lua"
    scripts["healthz"].write_text('wrk.method = "GET"\nwrk.path = "/healthz"\n')

    servers = [s.strip() for s in params["servers"].split(",") if s.strip()]
    # granian is the bench extra's, not the service's: without it, gunicorn alone.
    missing = [s for s in servers if not (BIN / s).exists()]
    if missing:
        print(f"p4: not installed, not measured: {', '.join(missing)}", flush=True)
        servers = [s for s in servers if s not in missing]
    measured = {
        name: _measure_server(bench, name, wrk, scripts, params, env, out_dir) for name in servers
    }

    runs = [r for by_phase in measured.values() for r in by_phase.values()]
    bad = sum(r["non_2xx"] + r["socket_errors"] for r in runs)
    missing = sum(
        r[phase]["timers"] - r[phase]["started_events"]
        for r in measured.values()
        for phase in ("single", "bulk")
    )
    first = servers[0]
    figures = {
        # The first server's figures where they always were, every server's by name.
        "single": measured[first]["single"],
        "bulk": measured[first]["bulk"],
        "healthz": measured[first]["healthz"],
        "servers": measured,
        "server_versions": {name: _version(name) for name in servers},
        "servers_not_installed": missing,
        "pgbench_single_row_inserts_per_second": pg_tps,
        "cores": os.cpu_count(),
    }
    rows = [
        row
        for name in servers
        for row in _server_rows(name, name == first, measured[name], params, pg_tps)
    ]
    rows.append(
        {
            "figure": "non-2xx responses and socket errors",
            "value": bad,
            "unit": "responses",
            "beside": "timers without started event",
            "beside_value": missing,
            "ratio": None,
            "target": "0 and 0",
            "met": bad == 0 and missing == 0,
        }
    )
    return {"params": params, "figures": figures, "rows": rows}
