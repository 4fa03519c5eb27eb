"""The peers scenario (``bench/peers.py``), small: 300 jobs due at one instant run
by our firing path, by pgqueuer (tuned, and at its defaults) and by the naive
design, each with real worker processes, on the test database and Redis. Slow
(about a minute): it checks that the scenario still runs end to end beside P1's
code, not any figure."""

from __future__ import annotations

import asyncio
import os

import pytest

from bench import peers
from bench.common import Bench

pytestmark = pytest.mark.slow


def test_every_system_does_every_job_and_the_rows_compare_them(engine, tmp_path):
    bench = Bench(os.environ["DATABASE_URL"], os.environ["REDIS_URL"], os.environ.copy())
    try:
        result = peers.run(bench, {**peers.QUICK, "jobs": 300}, tmp_path)
    finally:
        asyncio.run(_uninstall_pgqueuer(bench.dsn))
        with bench.connect() as c:
            c.execute("DROP TABLE IF EXISTS peer_steps, peer_events")

    f = result["figures"]
    peers_done = [f[name]["done"] for name in ("pgqueuer", "pgqueuer-default", "naive")]
    assert [f["ours"]["fired"], *peers_done] == [300] * 4, f
    assert f["pgqueuer"]["events"] == f["pgqueuer-default"]["events"] == f["naive"]["events"]
    assert f["naive"]["events"] == 300, f
    assert f["ours"]["events"] == 600, f  # a fire's two events
    for name in ("ours", "pgqueuer", "pgqueuer-default", "naive"):
        assert f[name]["cpu_us_per_job"]["workers"] > 0, f[name]
    assert f["configuration"]["pgqueuer"]["version"] == "1.6.0"
    ratios = [row for row in result["rows"] if row.get("target", "").endswith("x")]
    assert [row["beside"].split()[0] for row in ratios] == ["pgqueuer", "naive:"]
    assert result["rows"][-1]["met"] is True


async def _uninstall_pgqueuer(dsn: str) -> None:
    import asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        if await queries.schema_is_installed():
            await queries.uninstall()
    finally:
        await conn.close()
