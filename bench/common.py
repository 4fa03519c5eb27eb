"""Shared benchmark plumbing: a dedicated database, seeding, processes, results.

Benchmarks only ever touch the database named by ``SLA_BENCH_DATABASE``
(default ``bench``) on the server of ``DATABASE_URL`` (the environment's, else
the project's ``.env``); they drop and recreate it, and drop it again when done
unless ``--keep`` is given. Processes, databases and waiting are
``devtools.processes``, shared with the tests.
"""

from __future__ import annotations

import json
import os
import platform
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from devtools.processes import (
    BIN,
    ROOT,
    Service,
    create_database,
    drop_database,
    migrate,
    server_url,
    wait_for,
)

__all__ = ["BIN", "ROOT", "Service", "wait_for"]  # re-exported for the benchmarks

RESULTS = ROOT / "bench" / "results"


@dataclass
class Bench:
    """The benchmark's database and Redis, and the environment for its processes."""

    dsn: str  # libpq URL of the bench database
    redis_url: str
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls) -> Bench:
        dsn = create_database(server_url(), os.environ.get("SLA_BENCH_DATABASE", "bench"))
        redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
        redis_url = redis_url.rsplit("/", 1)[0] + "/" + os.environ.get("SLA_BENCH_REDIS_DB", "12")
        # No rate limit: the benchmarks measure how fast one tenant can go.
        env = {**os.environ, "DATABASE_URL": dsn, "REDIS_URL": redis_url, "SLA_RATE_LIMIT": "off"}
        migrate(env)
        bench = cls(dsn, redis_url, env)
        os.environ.update({"DATABASE_URL": dsn, "REDIS_URL": redis_url, "SLA_RATE_LIMIT": "off"})
        return bench

    def drop(self) -> None:
        drop_database(self.dsn)

    def connect(self, **kw) -> psycopg.Connection:
        return psycopg.connect(self.dsn, autocommit=True, **kw)

    def reset(self) -> None:
        """Empty every table and the Redis database between scenarios."""
        import redis

        with self.connect() as c:
            c.execute(
                "TRUNCATE outbox_events, sla_escalation_events, sla_timers, api_keys, tenants "
                "RESTART IDENTITY CASCADE"
            )
            c.execute("VACUUM ANALYZE")
        redis.Redis.from_url(self.redis_url).flushdb()

    def tenant(self) -> tuple[str, str]:
        from sqlalchemy import create_engine

        from models import tenants as tenant_sql

        engine = create_engine(make_url(self.dsn).set(drivername="postgresql+psycopg"))
        with engine.begin() as conn:
            tenant_id, key = tenant_sql.create_tenant(conn, "bench")
        engine.dispose()
        return str(tenant_id), key


# One statement seeds any number of timers; ``due`` is an SQL expression of ``g``
# (the series index) giving each timer's due instant.
_SEED = """
INSERT INTO sla_timers (
    id, tenant_id, lead_id, sla_contract_id, started_at, due_at, window_seconds,
    correlation_id, escalation_steps, next_fire_at)
SELECT gen_random_uuid(), %(tenant)s, 'lead-' || %(prefix)s || g, 'default',
       d - make_interval(secs => %(window)s), d, %(window)s, 'bench-' || g, %(steps)s::jsonb, d
FROM generate_series(1, %(n)s) AS g, LATERAL (SELECT {due} AS d) AS due
"""

ONE_STEP = '[{"step": 1, "after_seconds": 0, "action": "notify", "target": null}]'


def seed_timers(
    bench: Bench,
    tenant: str,
    n: int,
    due_sql: str,
    *,
    prefix: str = "",
    steps: str = ONE_STEP,
    window_seconds: int = 60,
    params: dict | None = None,
) -> None:
    with bench.connect() as c:
        c.execute(
            _SEED.format(due=due_sql),
            {
                "tenant": tenant,
                "n": n,
                "prefix": prefix,
                "steps": steps,
                "window": window_seconds,
                **(params or {}),
            },
        )
        c.execute("ANALYZE sla_timers")


def worker(
    bench: Bench,
    log: Path,
    *,
    processes: int = 2,
    threads: int = 8,
    extra_env: dict[str, str] | None = None,
) -> Service:
    return Service(
        [str(BIN / "dramatiq"), "tasks", "--processes", str(processes), "--threads", str(threads)],
        {**bench.env, **(extra_env or {})},
        log,
        ready="is ready for action",
        ready_count=processes,
    )


@contextmanager
def running(*services: Service):
    try:
        yield services
    finally:
        for s in services:
            s.stop()


def cpu_seconds(pids) -> float:
    """User plus system CPU seconds of the processes ``pids`` (those gone count 0)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def machine() -> dict:
    import psutil

    with psycopg.connect(server_url()) as c:
        pg_version = c.execute("SHOW server_version").fetchone()[0]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "postgresql": pg_version,
        "versions": {p: version(p) for p in ("dramatiq", "sqlalchemy", "psycopg", "flask")},
    }


def write_results(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path
