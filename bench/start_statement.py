"""The single start's statement by the number of starts it carries: what
grouping concurrent single starts (web/start_groups.py) can save.

One connection of the web's role runs ``models.timers.try_start_timers`` with
1, 2, 4 and 8 starts per statement (a plain start, as P4 sends), ``starts``
starts for each size; the figures are PostgreSQL's CPU per start (its
backends, ``/proc/<pid>/schedstat``) and this process's CPU per start (the
call: parameters, round trip, rows).

    python -m bench.start_statement [--param starts=3000] [--param sizes=1,2,4,8]

Not a scenario of ``python -m bench``: it measures a design choice, in process.
"""

from __future__ import annotations

import time
from uuid import UUID, uuid4

QUICK = {"starts": 3000, "sizes": "1,2,4,8"}
STEPS = [
    {"step": 1, "after_seconds": 0, "action": "notify", "target": "owner"},
    {"step": 2, "after_seconds": 600, "action": "reassign", "target": "team-lead"},
]


def run(params: dict) -> list[dict]:
    from models import timers
    from models.config import Settings
    from models.db import make_engine

    from .common import Bench
    from .p7_scale import _cpu_ns

    bench = Bench.create()
    try:
        bench.reset()
        tenant = UUID(bench.tenant()[0])
        settings = Settings.from_env(bench.env)
        engine = make_engine(settings, role=settings.db_app_role, pool_size=1)

        def start(size: int) -> None:
            news = [
                timers.NewTimer(
                    lead_id=f"lead-{uuid4()}",
                    sla_contract_id="default",
                    started_at=None,
                    window_seconds=1800,
                    escalation_steps=STEPS,
                    correlation_id="bench",
                    metadata={"source": "bench"},
                    unresolved=True,
                )
                for _ in range(size)
            ]
            rows = timers.try_start_timers(
                engine, tenant, [(timers.new_timer_id(), n, None) for n in news]
            )
            assert len(rows) == size

        start(1)  # the connection, and its prepared statement
        with engine.connect() as conn:
            pid = conn.connection.driver_connection.info.backend_pid  # type: ignore[union-attr]
        results = []
        for size in (int(s) for s in str(params["sizes"]).split(",")):
            n = max(1, params["starts"] // size)
            for _ in range(min(n, 50)):
                start(size)  # warm: past the prepared statement's custom plans
            db0, py0, wall0 = _cpu_ns([pid]), time.process_time(), time.perf_counter()
            for _ in range(n):
                start(size)
            db1, py1, wall1 = _cpu_ns([pid]), time.process_time(), time.perf_counter()
            done = n * size
            results.append(
                {
                    "starts_per_statement": size,
                    "starts": done,
                    "postgres_us_per_start": (db1 - db0) / 1e3 / done,
                    "python_us_per_start": (py1 - py0) * 1e6 / done,
                    "wall_us_per_start": (wall1 - wall0) * 1e6 / done,
                }
            )
        engine.dispose()
        return results
    finally:
        bench.drop()


def main() -> int:
    import argparse
    import json

    from .__main__ import _overrides

    parser = argparse.ArgumentParser(prog="python -m bench.start_statement", description=__doc__)
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    params = dict(QUICK)
    params.update(_overrides(args.param, params))
    for row in run(params):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
