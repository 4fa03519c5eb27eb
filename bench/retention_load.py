"""Retention at a million rows: does it stall firing? (docs/scaling.md, "Retention")

    python -m bench.retention_load [--timers 1000000] [--seconds 20]

In its own database (``SLA_BENCH_DATABASE``, default ``bench_retention``, on
the server of ``DATABASE_URL``; dropped at the end): one tenant with
``--timers`` timers closed 100 days ago, a step row and a delivered event
each, delivered and folded; another tenant whose timers fall due continuously. A probe
starts a timer due now every 20 ms and fires it (``fire_due``, the firing
routine's claim, steps and commit), first for ``--seconds`` alone, then while
``models.retention.run`` deletes everything old. It prints the probe's fire
round trip (p50 / p99 / max) in both phases, the longest lock wait any
statement saw (pg_locks), and retention's throughput.
"""

from __future__ import annotations

import argparse
import math
import os
import threading
import time
from datetime import timedelta
from uuid import uuid4

import psycopg

from devtools.processes import create_database, drop_database, migrate, server_url

LOAD = """
INSERT INTO tenants (id, name) VALUES (%(old)s, 'old'), (%(live)s, 'live');
INSERT INTO sla_timers (id, tenant_id, lead_id, sla_contract_id, started_at, due_at,
    window_seconds, status, processing_status, correlation_id, escalation_steps,
    steps_done, completed_at, breached, created_at, updated_at)
SELECT gen_random_uuid(), %(old)s, 'lead-' || g, 'default',
       now() - interval '200 days' + g * interval '1 second',
       now() - interval '200 days' + g * interval '1 second' + interval '60 seconds',
       60, 'COMPLETED', 'COMPLETED', 'c', '[]', 1,
       now() - interval '100 days', false,
       now() - interval '200 days', now() - interval '100 days'
FROM generate_series(1, %(n)s) g;
INSERT INTO sla_escalation_events (tenant_id, lead_id, timer_id, escalation_step,
    executed_at, outcome, escalation_config, correlation_id, idempotency_key)
SELECT tenant_id, lead_id, id, 1, due_at, 'SUCCESS', '{}', 'c', id::text || ':step:1'
FROM sla_timers;
INSERT INTO outbox_events (tenant_id, event_type, timer_id, payload, correlation_id,
    idempotency_key, created_at)
SELECT tenant_id, 'sla.timer.completed', id, '{}', 'c', id::text || ':completed',
       now() - interval '100 days'
FROM sla_timers;
INSERT INTO webhook_subscriptions (id, tenant_id, url, secret)
VALUES (%(sub)s, %(old)s, 'https://receiver.example/hook', 'whsec_YmVuY2g=');
INSERT INTO webhook_deliveries (tenant_id, subscription_id, event_id, timer_id, status,
    attempts, delivered_at, created_at)
SELECT tenant_id, %(sub)s, id, timer_id, 'DELIVERED', 1, created_at, created_at
FROM outbox_events;
-- Bulk-loaded rows are folded by definition here: the positions pass them.
INSERT INTO sla_stats_positions (tenant_id, txid, event_id, rows_txid)
VALUES (%(old)s, pg_current_xact_id()::text::bigint, 9223372036854775807,
        pg_current_xact_id()::text::bigint);
"""

LOCK_WAITS = """
SELECT coalesce(max(extract(epoch FROM now() - a.query_start)), 0)
FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE NOT l.granted AND a.datname = current_database()
"""


def probe(engine, settings, tenant, seconds: float, lock_watch: list[float]) -> list[float]:
    """Start a timer due now and fire it, every 20 ms; each round trip in ms."""
    from models import timers as timer_sql
    from models.sla import due_at, utcnow
    from tasks.firing import fire_due

    took = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = utcnow() - timedelta(seconds=61)
        new = timer_sql.NewTimer(
            lead_id=f"lead-{uuid4()}", sla_contract_id="default", started_at=started,
            window_seconds=60, escalation_steps=[{"step": 1, "after_seconds": 0,
            "action": "notify", "target": None}], correlation_id="probe", metadata={},
            idempotency_key=None,
        )  # fmt: skip
        with engine.begin() as conn:
            timer_sql.start_timer(conn, tenant, new, due_at(started, 60), utcnow())
        t0 = time.perf_counter()
        report = fire_due(engine, settings)
        took.append((time.perf_counter() - t0) * 1000)
        assert report.claimed >= 1, report
        with engine.connect() as conn:
            lock_watch.append(conn.exec_driver_sql(LOCK_WAITS).scalar())
        time.sleep(0.02)
    return took


def summary(name: str, took: list[float]) -> str:
    ordered = sorted(took)

    def rank(p: float) -> float:  # nearest rank
        return ordered[max(0, math.ceil(p * len(ordered)) - 1)]

    return (
        f"{name}: {len(took)} fires, round trip p50 {rank(0.5):.1f} ms, "
        f"p99 {rank(0.99):.1f} ms, max {ordered[-1]:.1f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--keep", action="store_true", help="Keep the database.")
    args = parser.parse_args(argv)

    name = os.environ.get("SLA_BENCH_DATABASE", "bench_retention")
    url = create_database(server_url(), name)
    os.environ["DATABASE_URL"] = url
    os.environ["SLA_ENV_FILE"] = ""
    migrate(os.environ)
    try:
        old, live = uuid4(), uuid4()
        t0 = time.monotonic()
        with psycopg.connect(url, autocommit=True) as conn:
            params = {"old": old, "live": live, "sub": uuid4(), "n": args.timers}
            for statement in filter(str.strip, LOAD.split(";\n")):
                conn.execute(
                    statement, {k: v for k, v in params.items() if f"%({k})s" in statement}
                )
            conn.execute("VACUUM ANALYZE")
        print(f"loaded {args.timers:,} closed timers, step rows and events "
              f"in {time.monotonic() - t0:.0f} s")  # fmt: skip

        from models import retention
        from models.config import get_settings
        from models.db import get_maintenance_engine

        settings, engine = get_settings(), get_maintenance_engine()
        waits: list[float] = []
        alone = probe(engine, settings, live, args.seconds, waits)
        print(summary("firing alone", alone))

        done: dict = {}

        def run() -> None:
            done["report"] = retention.run(
                engine, timer_days=90, event_days=14, batch=settings.retention_batch_size
            )

        waits_during: list[float] = []
        worker = threading.Thread(target=run)
        worker.start()
        during = []
        while worker.is_alive():
            during += probe(engine, settings, live, 1, waits_during)
        worker.join()
        r = done["report"]
        print(summary("firing during retention", during))
        print(
            f"retention: {r.events:,} events (with deliveries) and {r.timers:,} timers "
            f"(with step rows) in {r.seconds:.0f} s, {r.batches:,} batches of "
            f"{settings.retention_batch_size}: "
            f"{(r.events + r.timers) / max(r.seconds, 1e-9):,.0f} rows/s"
        )
        print(
            f"longest ungranted lock seen: alone {max(waits) * 1000:.0f} ms, "
            f"during retention {max(waits_during) * 1000:.0f} ms"
        )
    finally:
        if not args.keep:
            from models.db import get_maintenance_engine

            get_maintenance_engine().dispose()
            drop_database(url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
