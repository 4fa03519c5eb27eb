"""Shared benchmark plumbing: a dedicated database, seeding, processes, results.

Benchmarks only ever touch the database named by ``SLA_BENCH_DATABASE``
(default ``bench``) on the server of ``DATABASE_URL``; they drop and recreate
it, and drop it again when done unless ``--keep`` is given.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent


def _server_url() -> str:
    raw = os.environ.get("DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
    return (
        make_url(raw.replace("postgres://", "postgresql://", 1))
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )


@dataclass
class Bench:
    """The benchmark's database and Redis, and the environment for its processes."""

    dsn: str  # libpq URL of the bench database
    redis_url: str
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls) -> Bench:
        server = make_url(_server_url())
        name = os.environ.get("SLA_BENCH_DATABASE", "bench")
        admin = server.set(database=server.database or "postgres")
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{name}"')
        dsn = server.set(database=name).render_as_string(hide_password=False)
        redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
        redis_url = redis_url.rsplit("/", 1)[0] + "/" + os.environ.get("SLA_BENCH_REDIS_DB", "12")
        # No rate limit: the benchmarks measure how fast one tenant can go.
        env = {**os.environ, "DATABASE_URL": dsn, "REDIS_URL": redis_url, "SLA_RATE_LIMIT": "off"}
        subprocess.run(
            [str(BIN / "alembic"), "upgrade", "head"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        bench = cls(dsn, redis_url, env)
        os.environ.update({"DATABASE_URL": dsn, "REDIS_URL": redis_url, "SLA_RATE_LIMIT": "off"})
        return bench

    def drop(self) -> None:
        url = make_url(self.dsn)
        admin = url.set(database="postgres").render_as_string(hide_password=False)
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')

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

        from models import repository as repo

        engine = create_engine(make_url(self.dsn).set(drivername="postgresql+psycopg"))
        with engine.begin() as conn:
            tenant_id, key = repo.create_tenant(conn, "bench")
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


class Service:
    """A service process (worker, scheduler, web) in its own process group."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log: Path,
        ready: str | None,
        ready_count: int = 1,
    ):
        self.log = log
        offset = log.stat().st_size if log.exists() else 0  # only this run's lines count
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if ready:
            deadline = time.monotonic() + 60
            while self._said(offset).count(ready) < ready_count:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"{args[0]} did not start:\n{self._said(offset)[-2000:]}")
                time.sleep(0.05)

    def _said(self, offset: int) -> str:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


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


def wait_for(predicate, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def machine() -> dict:
    import psutil

    with psycopg.connect(_server_url()) as c:
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
