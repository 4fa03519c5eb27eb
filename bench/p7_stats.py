"""P7 stats: GET /v1/stats's statement at 1M timers in one tenant, beside 10k.

One tenant gets ``timers`` timers started over ``days`` days, another ``small``
over the same days, and three more tenants ``small`` each (which must never
count). The mix is what a CRM's history looks like: timers started in the last
hours are mostly running, the last two days hold open, due and escalated ones,
and older ones are closed (completed, a fifth of them late; cancelled, a third
of those superseded) but for 1% left open (escalated, or paused). Each timer
has a two-step ladder and 50/75/90 warnings, with the step and warning rows
its state implies (a close records the rest SKIPPED, as the service does).

The rows are written by ``generate_series`` statements (no events), so the
rollup is built by ``models.stats.rebuild``, the repair path; the load time
reported covers both. Then the stats statement runs ``runs`` times per case,
under the API's role and tenant scope, as the route runs it: the whole range,
the last 30 days, and one contract, for each tenant; and the timeline of a
timer with steps and warnings.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

from .common import Bench, percentile

QUICK = {"timers": 100_000, "small": 10_000, "days": 90, "runs": 30}
FULL = {"timers": 1_000_000, "small": 10_000, "days": 90, "runs": 50}

TARGET_MS = 200

# :tenant, :n timers started over :days days before :now. g numbers the timers
# oldest first; r1..r3 are independent uniform draws per timer.
_TIMERS = """
INSERT INTO sla_timers (
    id, tenant_id, lead_id, sla_contract_id, started_at, due_at, window_seconds,
    correlation_id, escalation_steps, status, processing_status, breached,
    completed_at, cancelled_at, cancel_reason, next_fire_at, paused_at, paused_from,
    pause_reason, warning_thresholds, created_at, updated_at)
SELECT gen_random_uuid(), %(tenant)s, 'lead-' || g, c.contract, s.at,
       s.at + interval '1 hour', 3600, 'bench-' || g, %(steps)s::jsonb, k.status,
       CASE WHEN k.status IN ('COMPLETED', 'CANCELLED') THEN 'COMPLETED' ELSE 'PENDING' END,
       CASE WHEN k.status = 'COMPLETED' THEN k.late END,
       CASE WHEN k.status = 'COMPLETED' THEN s.at + make_interval(
           secs => CASE WHEN k.late THEN 3600 + r.r2 * 7200 ELSE 60 + r.r2 * 3500 END) END,
       CASE WHEN k.status = 'CANCELLED' THEN s.at + make_interval(secs => r.r2 * 3000) END,
       CASE WHEN k.status = 'CANCELLED'
            THEN CASE WHEN g %% 3 = 0 THEN 'superseded' ELSE 'lead lost' END END,
       CASE k.status
           WHEN 'ACTIVE' THEN s.at + interval '30 minutes' * (1 + floor(r.r2 * 2))
           WHEN 'DUE' THEN s.at + interval '90 minutes'
       END,
       CASE WHEN k.status = 'PAUSED' THEN s.at + interval '10 minutes' END,
       CASE WHEN k.status = 'PAUSED' THEN 'ACTIVE' END,
       CASE WHEN k.status = 'PAUSED' THEN 'waiting on customer' END,
       '{50,75,90}', s.at, s.at
FROM generate_series(1, %(n)s) AS g
CROSS JOIN LATERAL (SELECT random() + 0 * g AS r1, random() + 0 * g AS r2,
                           random() + 0 * g AS r3) AS r
CROSS JOIN LATERAL (
    SELECT %(now)s::timestamptz
           - make_interval(secs => (1 - g::float / %(n)s) * %(days)s * 86400) AS at
) AS s
CROSS JOIN LATERAL (
    SELECT CASE WHEN g %% 4 = 0 THEN 'premium' ELSE 'standard' END AS contract
) AS c
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN s.at > %(now)s::timestamptz - interval '1 hour'
            THEN CASE WHEN r.r3 < 0.3 THEN 'COMPLETED' WHEN r.r3 < 0.95 THEN 'ACTIVE'
                      ELSE 'PAUSED' END
        WHEN s.at > %(now)s::timestamptz - interval '2 days'
            THEN CASE WHEN r.r3 < 0.6 THEN 'COMPLETED' WHEN r.r3 < 0.7 THEN 'CANCELLED'
                      WHEN r.r3 < 0.75 THEN 'DUE' WHEN r.r3 < 0.8 THEN 'PAUSED'
                      ELSE 'ESCALATED' END
        WHEN r.r1 < 0.84 THEN 'COMPLETED' WHEN r.r1 < 0.99 THEN 'CANCELLED'
        WHEN r.r1 < 0.998 THEN 'ESCALATED' ELSE 'PAUSED' END AS status,
        r.r2 < 0.2 AS late
) AS k
"""

# Steps: run (SUCCESS, 1 in 10 FAILED) for the due part of the ladder, SKIPPED
# for the rest once closed. Warnings: SENT up to the timer's progress, SKIPPED
# for the rest once closed.
_STEPS = """
INSERT INTO sla_escalation_events (
    tenant_id, lead_id, timer_id, escalation_step, repeat, executed_at, outcome,
    escalation_config, correlation_id, idempotency_key)
SELECT t.tenant_id, t.lead_id, t.id, st.step, 0,
       least(t.due_at + make_interval(secs => (st.step - 1) * 1800),
             coalesce(t.completed_at, t.cancelled_at, %(now)s::timestamptz)),
       CASE WHEN ran THEN CASE WHEN hashtext(t.id::text) %% 10 = 0 THEN 'FAILED'
                               ELSE 'SUCCESS' END
            ELSE 'SKIPPED' END,
       t.escalation_steps -> (st.step - 1), t.correlation_id, t.id::text || '-' || st.step
FROM sla_timers t CROSS JOIN generate_series(1, 2) AS st(step)
CROSS JOIN LATERAL (
    SELECT t.due_at + make_interval(secs => (st.step - 1) * 1800)
           <= coalesce(t.completed_at, t.cancelled_at, %(now)s::timestamptz) AS ran
) AS x
WHERE t.tenant_id = %(tenant)s
  AND (ran OR t.status IN ('COMPLETED', 'CANCELLED')) AND t.status <> 'PAUSED'
"""
_WARNINGS = """
INSERT INTO sla_timer_warnings (
    tenant_id, timer_id, threshold, outcome, scheduled_at, recorded_at, correlation_id)
SELECT t.tenant_id, t.id, th, CASE WHEN sent THEN 'SENT' ELSE 'SKIPPED' END,
       t.started_at + make_interval(secs => 36 * th),
       least(t.started_at + make_interval(secs => 36 * th),
             coalesce(t.completed_at, t.cancelled_at, %(now)s::timestamptz)),
       t.correlation_id
FROM sla_timers t CROSS JOIN unnest('{50,75,90}'::int[]) AS th
CROSS JOIN LATERAL (
    SELECT t.started_at + make_interval(secs => 36 * th)
           <= coalesce(t.completed_at, t.cancelled_at, t.paused_at, %(now)s::timestamptz) AS sent
) AS x
WHERE t.tenant_id = %(tenant)s AND (sent OR t.status IN ('COMPLETED', 'CANCELLED'))
"""
_LADDER = (
    '[{"step": 1, "after_seconds": 0, "action": "notify", "target": "owner"}, '
    '{"step": 2, "after_seconds": 1800, "action": "reassign", "target": "team-lead"}]'
)


def _seed(bench: Bench, tenant: str, n: int, days: int, now: datetime) -> None:
    params = {"tenant": tenant, "n": n, "days": days, "now": now, "steps": _LADDER}
    with bench.connect() as c:
        c.execute("SET synchronous_commit = off")
        c.execute(_TIMERS, params)
        c.execute(_STEPS, params)
        c.execute(_WARNINGS, params)


def _timings(call, runs: int) -> dict:
    call()  # warm the plan and the cache
    values = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        values.append((time.perf_counter() - started) * 1000)
    return {
        "runs": runs,
        "p50_ms": round(percentile(values, 50), 1),
        "p95_ms": round(percentile(values, 95), 1),
        "max_ms": round(max(values), 1),
    }


def run(bench: Bench, params: dict, out_dir: Path) -> dict:
    # Only after Bench.create pointed the settings at the bench database.
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from models import stats, timeline
    from models.db import get_engine, tenant_scope

    now = datetime.now(UTC).replace(microsecond=0)
    days, runs = params["days"], params["runs"]
    big, _ = bench.tenant()
    small, _ = bench.tenant()
    others = [bench.tenant()[0] for _ in range(3)]
    figures: dict = {"timers": params["timers"], "small": params["small"]}

    started = time.monotonic()
    for tenant, n in [(big, params["timers"]), (small, params["small"])] + [
        (o, params["small"]) for o in others
    ]:
        _seed(bench, tenant, n, days, now)
    figures["seed_s"] = round(time.monotonic() - started, 1)
    owner = create_engine(make_url(bench.dsn).set(drivername="postgresql+psycopg"))
    rebuilt = time.monotonic()
    for tenant in [big, small, *others]:
        with owner.begin() as conn:
            conn.exec_driver_sql("SET LOCAL app.all_tenants = on")
            stats.rebuild(conn, UUID(tenant))
    owner.dispose()
    figures["rebuild_s"] = round(time.monotonic() - rebuilt, 1)
    with bench.connect() as c:
        c.execute("VACUUM ANALYZE")
        figures["rows"] = {
            table: c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in (
                "sla_timers",
                "sla_escalation_events",
                "sla_timer_warnings",
                "sla_stats_rollup",
            )
        }
    figures["load_s"] = round(time.monotonic() - started, 1)

    # The API's role (row-level security applies) and isolation, as the route.
    engine = get_engine().execution_options(isolation_level="REPEATABLE READ")

    def stats_call(tenant: str, start: datetime, contract: str | None = None):
        def call():
            with tenant_scope(engine, UUID(tenant)) as conn:
                return stats.stats(conn, UUID(tenant), start, now, contract)

        return call

    whole = now - timedelta(days=days + 1)
    month = now - timedelta(days=30, minutes=17)
    cases = {
        "big_all": stats_call(big, whole),
        "big_30d": stats_call(big, month),
        "big_contract": stats_call(big, whole, "premium"),
        "small_all": stats_call(small, whole),
        "small_30d": stats_call(small, month),
    }
    figures["stats"] = {name: _timings(call, runs) for name, call in cases.items()}
    figures["answer_big_all"] = cases["big_all"]()
    figures["answer_big_all"]["as_of"] = str(figures["answer_big_all"]["as_of"])
    oldest = figures["answer_big_all"]["overdue"]["oldest_fire_at"]
    figures["answer_big_all"]["overdue"]["oldest_fire_at"] = str(oldest)

    with bench.connect() as c:
        (timer_id,) = c.execute(
            "SELECT t.id FROM sla_timers t WHERE t.tenant_id = %s AND t.status = 'COMPLETED' "
            "AND t.breached LIMIT 1",
            (big,),
        ).fetchone()

    def timeline_call():
        with tenant_scope(engine, UUID(big)) as conn:
            return timeline.timeline(conn, UUID(big), timer_id)

    figures["timeline"] = _timings(timeline_call, runs)
    figures["timeline"]["entries"] = len(timeline_call() or [])

    s = figures["stats"]
    label = "1M" if params["timers"] >= 1_000_000 else f"{params['timers'] // 1000}k"
    rows = [
        {
            "figure": f"stats p95, {label} timers, whole range",
            "value": s["big_all"]["p95_ms"],
            "unit": "ms",
            "beside": "10k timers, whole range",
            "beside_value": s["small_all"]["p95_ms"],
            "ratio": round(s["big_all"]["p95_ms"] / max(s["small_all"]["p95_ms"], 0.1), 1),
            "target": f"<= {TARGET_MS}",
            "met": s["big_all"]["p95_ms"] <= TARGET_MS,
        },
        {
            "figure": f"stats p95, {label} timers, last 30 days",
            "value": s["big_30d"]["p95_ms"],
            "unit": "ms",
            "beside": "10k timers, last 30 days",
            "beside_value": s["small_30d"]["p95_ms"],
            "ratio": round(s["big_30d"]["p95_ms"] / max(s["small_30d"]["p95_ms"], 0.1), 1),
            "target": f"<= {TARGET_MS}",
            "met": s["big_30d"]["p95_ms"] <= TARGET_MS,
        },
        {
            "figure": "timeline p95",
            "value": figures["timeline"]["p95_ms"],
            "unit": "ms",
            "beside": "entries",
            "beside_value": figures["timeline"]["entries"],
            "ratio": None,
            "target": "",
            "met": None,
        },
        {
            "figure": "load (seed + rollup)",
            "value": figures["load_s"],
            "unit": "s",
            "beside": "rollup rebuild",
            "beside_value": figures["rebuild_s"],
            "ratio": None,
            "target": "",
            "met": None,
        },
    ]
    return {"params": params, "figures": figures, "rows": rows}
