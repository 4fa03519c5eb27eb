"""P7 scale: claim, start, get, list, stats and sweep at 10k timers and at N + M.

First a probe tenant gets 10,000 timers (8,000 finished, 2,000 active: 1,000
due, 500 in the wake-up horizon, 500 later) and every operation is timed.
Then ``finished`` finished and ``active`` active timers are loaded into
``tenants`` other tenants, and the same operations run again, on the same
probe tenant's rows, with the same due and horizon work: only the size of the
database changed. The operations:

- claim: the firing claim (``claim_due``, a full batch of the 1,000 due
  timers), on the maintenance engine, rolled back so each run claims the same;
- start: ``POST /v1/timers`` (a new lead each time, committed, in a tenant of
  its own so the probe tenant's figures stay the same);
- get: ``GET /v1/timers/<id>``; list: ``GET /v1/timers?limit=50``;
- stats: ``GET /v1/stats`` over 100 days and over the last 30 days, and the
  state query of ``/metrics`` (models/sql/metrics.sql, all tenants);
- sweep: the sweep's own statements (``rescue_expired`` and
  ``upcoming_fire_times`` over the horizon), rolled back.

Each runs for ``seconds`` (at least ``min_runs`` times) after a warm-up; the
figures are PostgreSQL's CPU per operation (every backend of the bench
database, from ``/proc``), the bench process's CPU per operation, and the
median wall time. The target is each within 1.2x of the same at 10k timers.

The load writes each table with one ``generate_series`` INSERT ... SELECT
per chunk of ``chunk`` timers, not through the API: finished timers (nine in
ten completed, one in ten cancelled) with their started and closing events,
and a third of them escalated (a step row, a due and an escalation event);
active timers with their started event, due between one and eight days out.
Ids are derived from the series index, so the step and event statements need
no join. No webhook subscription exists, so no delivery rows are written
(deliveries are retained days, not for the life of a timer). The stats
rollup of each tenant is rebuilt (``models.stats.rebuild``), then VACUUM
ANALYZE with index cleanup (``_vacuum``); before the second phase every
tenant's stats position is moved past the load, as the worker's minute fold
would (``_fold_all``), and the load's dirty pages are written out
(``_settle``). Bytes per timer come from ``pg_table_size`` and ``pg_indexes_size`` after the
load.
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

from .common import Bench, percentile

QUICK = {
    "finished": 1_000_000,
    "active": 100_000,
    "tenants": 10,
    "chunk": 200_000,
    "seconds": 4.0,
    "min_runs": 20,
}
FULL = {
    "finished": 10_000_000,
    "active": 1_000_000,
    "tenants": 10,
    "chunk": 500_000,
    "seconds": 3.0,
    "min_runs": 30,
}

TARGET_RATIO = 1.2
PROBE_FINISHED = 8_000
PROBE_DUE, PROBE_HORIZON, PROBE_LATER = 1_000, 500, 500
TABLES = ("sla_timers", "sla_escalation_events", "outbox_events", "sla_stats_rollup")

_LADDER = (
    '[{"step": 1, "after_seconds": 0, "action": "notify", "target": "owner"}, '
    '{"step": 2, "after_seconds": 1800, "action": "reassign", "target": "team-lead"}]'
)

# :tenants (uuid[]) shares the rows out (g % n); :tag keeps ids and lead ids
# apart between loads; :now is the run's fixed instant. ``id`` of a finished
# timer g is md5(:tag || 'f' || g)::uuid, so steps and events find it again.
_FINISHED = """
INSERT INTO sla_timers (
    id, tenant_id, lead_id, sla_contract_id, started_at, due_at, window_seconds,
    correlation_id, escalation_steps, status, processing_status, breached, steps_done,
    completed_at, cancelled_at, cancel_reason, next_fire_at, created_at, updated_at)
SELECT md5(%(tag)s || 'f' || g)::uuid,
       (%(tenants)s::uuid[])[1 + g %% cardinality(%(tenants)s::uuid[])],
       %(tag)s || 'lead-f' || g, CASE WHEN g %% 4 = 0 THEN 'premium' ELSE 'standard' END,
       s.at, s.at + interval '1 hour', 3600, %(tag)s || 'corr-f' || g, %(ladder)s::jsonb,
       CASE WHEN g %% 10 = 0 THEN 'CANCELLED' ELSE 'COMPLETED' END, 'COMPLETED',
       CASE WHEN g %% 10 = 0 THEN NULL ELSE g %% 3 = 0 END,
       CASE WHEN g %% 3 = 0 THEN 1 ELSE 0 END,
       CASE WHEN g %% 10 <> 0 THEN s.closed END,
       CASE WHEN g %% 10 = 0 THEN s.closed END,
       CASE WHEN g %% 10 = 0 THEN 'lead lost' END,
       NULL, s.at, s.closed
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
CROSS JOIN LATERAL (
    SELECT %(now)s::timestamptz - interval '1 day'
           - make_interval(secs => g::float / %(n)s * %(days)s * 86400) AS at,
           %(now)s::timestamptz - interval '1 day'
           - make_interval(secs => g::float / %(n)s * %(days)s * 86400)
           + CASE WHEN g %% 3 = 0 THEN interval '75 minutes' ELSE interval '20 minutes' END
           AS closed
) AS s
"""
_FINISHED_STEPS = """
INSERT INTO sla_escalation_events (
    tenant_id, lead_id, timer_id, escalation_step, repeat, executed_at, outcome,
    escalation_config, correlation_id, idempotency_key)
SELECT (%(tenants)s::uuid[])[1 + g %% cardinality(%(tenants)s::uuid[])],
       %(tag)s || 'lead-f' || g, md5(%(tag)s || 'f' || g)::uuid, 1, 0, s.due, 'SUCCESS',
       %(ladder)s::jsonb -> 0, %(tag)s || 'corr-f' || g, md5(%(tag)s || 'f' || g) || '-1'
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
CROSS JOIN LATERAL (
    SELECT %(now)s::timestamptz - interval '1 day' + interval '1 hour'
           - make_interval(secs => g::float / %(n)s * %(days)s * 86400) AS due
) AS s
WHERE g %% 3 = 0
"""
# Every timer's started event, and the finished ones' due, escalation and close.
_EVENTS = """
INSERT INTO outbox_events (
    tenant_id, event_type, timer_id, payload, correlation_id, idempotency_key, created_at)
SELECT (%(tenants)s::uuid[])[1 + g %% cardinality(%(tenants)s::uuid[])], k.type,
       md5(%(tag)s || %(kind)s || g)::uuid,
       jsonb_build_object(
           'type', k.type, 'timer_id', md5(%(tag)s || %(kind)s || g)::uuid,
           'lead_id', %(tag)s || 'lead-' || %(kind)s || g,
           'sla_contract_id', CASE WHEN g %% 4 = 0 THEN 'premium' ELSE 'standard' END,
           'correlation_id', %(tag)s || 'corr-' || %(kind)s || g,
           'started_at', s.at, 'due_at', s.at + interval '1 hour', 'occurred_at', s.at,
           'metadata', jsonb_build_object('source', 'bench'))
       || CASE WHEN k.type = 'sla.timer.started' THEN jsonb_build_object(
                   'escalation_steps', %(ladder)s::jsonb)
               WHEN k.type = 'sla.escalation.triggered' THEN jsonb_build_object(
                   'step', 1, 'action', 'notify', 'target', 'owner')
               ELSE '{{}}'::jsonb END,
       %(tag)s || 'corr-' || %(kind)s || g,
       md5(%(tag)s || %(kind)s || g)::uuid::text || k.key, s.at
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
CROSS JOIN LATERAL (SELECT {started} AS at) AS s
CROSS JOIN LATERAL (
    VALUES ('sla.timer.started', ':started', true),
           ('sla.timer.due', ':due', %(kind)s = 'f' AND g %% 3 = 0),
           ('sla.escalation.triggered', ':step:1', %(kind)s = 'f' AND g %% 3 = 0),
           ('sla.timer.completed', ':completed', %(kind)s = 'f' AND g %% 10 <> 0),
           ('sla.timer.cancelled', ':cancelled', %(kind)s = 'f' AND g %% 10 = 0)
) AS k(type, key, wanted)
WHERE k.wanted
"""
_FINISHED_AT = (
    "%(now)s::timestamptz - interval '1 day' - make_interval(secs => g::float / %(n)s "
    "* %(days)s * 86400)"
)
_ACTIVE_AT = "%(now)s::timestamptz - make_interval(secs => g %% 3600)"
# Active timers: started in the last hour; next_fire_at (= due_at) from :fire_sql.
_ACTIVE = """
INSERT INTO sla_timers (
    id, tenant_id, lead_id, sla_contract_id, started_at, due_at, window_seconds,
    correlation_id, escalation_steps, next_fire_at, created_at, updated_at)
SELECT md5(%(tag)s || 'a' || g)::uuid,
       (%(tenants)s::uuid[])[1 + g %% cardinality(%(tenants)s::uuid[])],
       %(tag)s || 'lead-a' || g, CASE WHEN g %% 4 = 0 THEN 'premium' ELSE 'standard' END,
       s.at, f.at, greatest(1, ceil(extract(epoch FROM f.at - s.at)))::int,
       %(tag)s || 'corr-a' || g, %(ladder)s::jsonb, f.at, s.at, s.at
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
CROSS JOIN LATERAL (SELECT {started} AS at) AS s
CROSS JOIN LATERAL (SELECT {fire} AS at) AS f
"""
# The bulk's active timers fall due from one to eight days after the run's instant.
_BULK_FIRE = (
    "%(now)s::timestamptz + interval '1 day' + make_interval(secs => g::float / %(n)s * 7 * 86400)"
)
# The probe's: PROBE_DUE overdue, PROBE_HORIZON within the horizon window
# (30 minutes after the run's instant), the rest days later.
_PROBE_FIRE = (
    f"CASE WHEN g <= {PROBE_DUE} THEN %(now)s::timestamptz - interval '10 minutes' "
    "+ make_interval(secs => g * 0.1) "
    f"WHEN g <= {PROBE_DUE + PROBE_HORIZON} "
    "THEN %(now)s::timestamptz + interval '30 minutes' "
    f"+ make_interval(secs => (g - {PROBE_DUE}) * 0.5) "
    "ELSE %(now)s::timestamptz + interval '2 days' + make_interval(secs => g) END"
)

_SIZES = """
SELECT c.relname, pg_table_size(c.oid), pg_indexes_size(c.oid), c.reltuples::bigint
FROM pg_class c WHERE c.relname = ANY(%s) ORDER BY c.relname
"""


def _load(bench: Bench, tenants: list[str], finished: int, active: int, *, tag: str,
          now: datetime, fire_sql: str, chunk: int, days: int = 90) -> None:  # fmt: skip
    """One INSERT ... SELECT per table and chunk of the series."""
    base = {"tenants": tenants, "tag": tag, "now": now, "days": days, "ladder": _LADDER}
    with bench.connect() as c:
        c.execute("SET synchronous_commit = off")
        for lo in range(1, finished + 1, chunk):
            p = base | {"lo": lo, "hi": min(finished, lo + chunk - 1), "n": finished}
            c.execute(_FINISHED, p)
            c.execute(_FINISHED_STEPS, p)
            c.execute(_EVENTS.format(started=_FINISHED_AT), p | {"kind": "f"})
        for lo in range(1, active + 1, chunk):
            p = base | {"lo": lo, "hi": min(active, lo + chunk - 1), "n": active}
            c.execute(_ACTIVE.format(started=_ACTIVE_AT, fire=fire_sql), p)
            c.execute(_EVENTS.format(started=_ACTIVE_AT), p | {"kind": "a"})


def _rebuild(bench: Bench, tenants: list[str]) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from models import stats

    with bench.connect() as c:
        # Fresh statistics first: on tables never analyzed the rebuild's
        # anti-join on the events is planned as if they were empty.
        c.execute("ANALYZE")
    owner = create_engine(make_url(bench.dsn).set(drivername="postgresql+psycopg"))
    for tenant in tenants:
        with owner.begin() as conn:
            conn.exec_driver_sql("SET LOCAL app.all_tenants = on")
            stats.rebuild(conn, UUID(tenant))
    owner.dispose()


def _vacuum(bench: Bench) -> None:
    """VACUUM ANALYZE, index cleanup included. By default VACUUM skips the
    indexes while under 2 % of a table's pages hold dead rows: at 10M timers
    the probe's dead versions (the first phase's rolled-back claims) then keep
    their index entries, and the second phase's sweep and claim step over
    them. Each phase starts from the same clean state instead."""
    with bench.connect() as c:
        c.execute("VACUUM (ANALYZE, INDEX_CLEANUP ON)")


def _fold_all() -> None:
    """Move every tenant's stats position past the load, as the worker's fold
    does each minute (tasks/stats.py). Left behind the load, the probe's
    position makes the planner read all of its events for the few past it."""
    from models import stats
    from models.db import get_maintenance_engine

    stats.fold_all(get_maintenance_engine())


def _settle(bench: Bench) -> None:
    """Write the load's dirty pages out before the second phase: measured
    right after a 40 GB load, the checkpoint and the kernel's writeback ran
    beside the operations (start 1.29x, get 1.27x at 10M; 1.01x and 1.14x
    on the same database once quiet)."""
    with bench.connect() as c:
        c.execute("CHECKPOINT")
    os.sync()


def _backends(bench: Bench) -> list[int]:
    with bench.connect() as c:
        return [
            pid
            for (pid,) in c.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid()"
            )
        ]


def _cpu_ns(pids: list[int]) -> int:
    """CPU nanoseconds of the processes ``pids`` (``/proc/<pid>/schedstat``:
    nanosecond resolution, where ``cpu_times`` counts 10 ms ticks)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):  # a backend gone
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    return total


def _measure(bench: Bench, call, seconds: float, min_runs: int) -> dict:
    """Run ``call`` for ``seconds`` (at least ``min_runs`` times): CPU per run of
    PostgreSQL's backends and of this process, wall time percentiles."""
    call()  # warm the pools, the plans and the cache
    pids = _backends(bench)
    walls = []
    db0, py0 = _cpu_ns(pids), time.process_time_ns()
    started = time.perf_counter()
    while len(walls) < min_runs or time.perf_counter() - started < seconds:
        t = time.perf_counter()
        call()
        walls.append(time.perf_counter() - t)
    db1, py1 = _cpu_ns(pids), time.process_time_ns()
    n = len(walls)
    return {
        "runs": n,
        "db_us": round((db1 - db0) / n / 1000, 1),
        "py_us": round((py1 - py0) / n / 1000, 1),
        "p50_ms": round(percentile(walls, 50) * 1000, 3),
        "p95_ms": round(percentile(walls, 95) * 1000, 3),
    }


def _operations(
    bench: Bench, probe: str, key: str, starter_key: str, now: datetime, tag: str
) -> dict:
    """The timed operations, each a callable, on the probe tenant (and all tenants)."""
    from uuid import uuid4

    from models import firing as firing_sql
    from models.config import get_settings
    from models.db import get_maintenance_engine
    from models.metrics import SQL as METRICS_SQL
    from web import create_app

    settings = get_settings()
    maintenance = get_maintenance_engine()
    client = create_app().test_client()
    headers = {"Authorization": f"Bearer {key}"}
    # Starts go to a tenant of their own: in the probe tenant they would add open
    # timers and events past its fold position, which the stats then count.
    starter = {"Authorization": f"Bearer {starter_key}"}
    with bench.connect() as c:
        ids = [
            str(i)
            for (i,) in c.execute(
                "SELECT id FROM sla_timers WHERE tenant_id = %s ORDER BY created_at LIMIT 200",
                (probe,),
            )
        ]
    counter = iter(range(10**9))
    window = now + timedelta(minutes=30)

    def ok(response, status=200):
        if response.status_code != status:
            raise RuntimeError(f"{response.status_code}: {response.get_data(as_text=True)}")

    def claim():
        with maintenance.connect() as conn, conn.begin() as tx:
            claimed = firing_sql.claim_due(
                conn, uuid4(), None, settings.batch_size, settings.lease_seconds
            )
            tx.rollback()
        if len(claimed) != PROBE_DUE:
            raise RuntimeError(f"claimed {len(claimed)}, expected {PROBE_DUE}")

    def start():
        body = {
            "lead_id": f"{tag}-start-{next(counter)}",
            # Due days out: no wake-up, and clear of the horizon window swept.
            "window_seconds": 3 * 86400,
            "escalation_steps": [{"step": 1, "after_seconds": 0, "action": "notify"}],
            "metadata": {"source": "bench"},
        }
        ok(client.post("/v1/timers", json=body, headers=starter), 201)

    def get():
        ok(client.get(f"/v1/timers/{ids[next(counter) % len(ids)]}", headers=headers))

    def listing():
        ok(client.get("/v1/timers?limit=50", headers=headers))

    def stats_range(days: int):
        start_at = (now - timedelta(days=days)).isoformat().replace("+00:00", "Z")
        end_at = (now + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
        url = f"/v1/stats?from={start_at}&to={end_at}"

        def call():
            ok(client.get(url, headers=headers))

        return call

    def metrics_state():
        with maintenance.begin() as conn:
            conn.execute(METRICS_SQL.state.text).one()

    def sweep():
        with maintenance.connect() as conn, conn.begin() as tx:
            firing_sql.rescue_expired_leases(conn, settings.max_attempts)
            buckets = firing_sql.upcoming_fire_times(
                conn, window, window + timedelta(seconds=settings.wakeup_horizon_seconds),
                settings.wakeup_bucket_ms,
            )  # fmt: skip
            tx.rollback()
        if not buckets:
            raise RuntimeError("no wake-up bucket in the horizon window")

    # The claim last: each of its runs, rolled back, leaves a dead version of
    # every due row, which the sweep and the overdue count would read after it.
    return {
        "sweep": sweep,
        "metrics_state": metrics_state,
        "start": start,
        "get": get,
        "list": listing,
        "stats_100d": stats_range(100),
        "stats_30d": stats_range(30),
        "claim": claim,
    }


def _sizes(bench: Bench, timers: int) -> dict:
    with bench.connect() as c:
        out = {}
        for name, heap, indexes, tuples in c.execute(_SIZES, (list(TABLES),)):
            out[name] = {
                "rows": tuples,
                "heap_mb": round(heap / 2**20, 1),
                "indexes_mb": round(indexes / 2**20, 1),
                "bytes_per_row": round((heap + indexes) / max(tuples, 1)),
                "bytes_per_timer": round((heap + indexes) / timers),
                "heap_bytes_per_timer": round(heap / timers),
                "index_bytes_per_timer": round(indexes / timers),
            }
        return out


def _phase(bench: Bench, ops: dict, params: dict) -> dict:
    return {
        name: _measure(bench, call, params["seconds"], params["min_runs"])
        for name, call in ops.items()
    }


LABELS = {
    "claim": "claim (1,000 due)",
    "start": "single start, POST /v1/timers",
    "get": "get, GET /v1/timers/<id>",
    "list": "list, GET /v1/timers?limit=50",
    "stats_100d": "stats, GET /v1/stats, 100 days",
    "stats_30d": "stats, GET /v1/stats, 30 days",
    "metrics_state": "/metrics state query",
    "sweep": "sweep (rescue + horizon)",
}


def run(bench: Bench, params: dict, out_dir: Path) -> dict:
    now = datetime.now(UTC).replace(microsecond=0)
    probe, key = bench.tenant()
    _, starter_key = bench.tenant()
    bulk = [bench.tenant()[0] for _ in range(params["tenants"])]
    figures: dict = {"now": now.isoformat()}

    started = time.monotonic()
    _load(bench, [probe], PROBE_FINISHED, 0, tag="p", now=now, fire_sql="NULL", chunk=10**6)
    _load(bench, [probe], 0, PROBE_DUE + PROBE_HORIZON + PROBE_LATER, tag="p", now=now,
          fire_sql=_PROBE_FIRE, chunk=10**6)  # fmt: skip
    _rebuild(bench, [probe])
    _vacuum(bench)
    figures["small_load_s"] = round(time.monotonic() - started, 1)
    ops = _operations(bench, probe, key, starter_key, now, "small")
    figures["small"] = _phase(bench, ops, params)
    figures["small_sizes"] = _sizes(bench, _count_timers(bench))

    started = time.monotonic()
    _load(bench, bulk, params["finished"], params["active"], tag="b", now=now,
          fire_sql=_BULK_FIRE, chunk=params["chunk"])  # fmt: skip
    figures["insert_s"] = round(time.monotonic() - started, 1)
    rebuilt = time.monotonic()
    _rebuild(bench, bulk)
    figures["rebuild_s"] = round(time.monotonic() - rebuilt, 1)
    vacuumed = time.monotonic()
    _vacuum(bench)
    figures["vacuum_analyze_s"] = round(time.monotonic() - vacuumed, 1)
    _fold_all()
    _settle(bench)
    figures["large_load_s"] = round(time.monotonic() - started, 1)
    total = _count_timers(bench)
    figures["timers"] = total
    figures["sizes"] = _sizes(bench, total)
    ops = _operations(bench, probe, key, starter_key, now, "large")
    figures["large"] = _phase(bench, ops, params)

    label = f"{params['finished'] / 1e6:g}M + {params['active'] / 1e6:g}M"
    rows = []
    for name, small in figures["small"].items():
        large = figures["large"][name]
        ratio = round(large["db_us"] / max(small["db_us"], 1.0), 2)
        rows.append(
            {
                "figure": f"{LABELS[name]}, {label}: PostgreSQL CPU",
                "value": large["db_us"],
                "unit": "µs/op",
                "beside": f"at 10k (p50 {large['p50_ms']:.2f} / {small['p50_ms']:.2f} ms)",
                "beside_value": small["db_us"],
                "ratio": ratio,
                "target": f"<= {TARGET_RATIO}x",
                "met": ratio <= TARGET_RATIO,
            }
        )
    for table in ("sla_timers", "sla_escalation_events", "outbox_events"):
        s = figures["sizes"][table]
        rows.append(
            {
                "figure": f"{table}: bytes per timer (heap + indexes)",
                "value": s["bytes_per_timer"],
                "unit": "B/timer",
                "beside": "heap / indexes",
                "beside_value": f"{s['heap_bytes_per_timer']} / {s['index_bytes_per_timer']}",
                "ratio": None,
                "target": "",
                "met": None,
            }
        )
    rows.append(
        {
            "figure": f"load {label} (insert, rollup rebuild, VACUUM ANALYZE)",
            "value": figures["large_load_s"],
            "unit": "s",
            "beside": "insert / rebuild / vacuum",
            "beside_value": (
                f"{figures['insert_s']} / {figures['rebuild_s']} / {figures['vacuum_analyze_s']}"
            ),
            "ratio": None,
            "target": "",
            "met": None,
        }
    )
    return {"params": params, "figures": figures, "rows": rows}


def _count_timers(bench: Bench) -> int:
    with bench.connect() as c:
        return c.execute("SELECT count(*) FROM sla_timers").fetchone()[0]


def main() -> int:
    """``python -m bench.p7_scale [--profile full] [--param NAME=VALUE]``, outside the suite."""
    import argparse
    import json

    from .__main__ import _overrides, print_table

    parser = argparse.ArgumentParser(prog="python -m bench.p7_scale", description=__doc__)
    parser.add_argument("--profile", choices=("quick", "full"), default="quick")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args()
    params = dict(FULL if args.profile == "full" else QUICK)
    params.update(_overrides(args.param, params))
    bench = Bench.create()
    try:
        bench.reset()
        result = run(bench, params, Path("."))
    finally:
        if not args.keep:
            bench.drop()
    print_table({"p7s": result})
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
