"""The chaos suite (``bench/chaos.py``, ``make chaos``), small: a few hundred
timers with a warning each, some paused and resumed meanwhile, real worker and
scheduler processes, one worker SIGKILL and one flush of the test's Redis
database. The servers are shared, so no PostgreSQL restart
or Redis pause here; the full run (``--slow``) starts servers of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import chaos
from bench.common import Bench
from tests.support import attempt_log


def assert_invariants(result: dict) -> None:
    f = result["figures"]
    assert f["timers_in_db"] == f["timers"]
    assert f["lost"] == 0, f
    assert (f["duplicate_step_rows"], f["duplicate_events"]) == (0, 0), f
    assert f["early"] == 0, f
    assert f["step_rows"] == chaos.STEPS * f["timers"]
    assert f["outbox_events"] == chaos.EVENTS_PER_TIMER * f["timers"]
    # Warnings: one row per (timer, threshold), one event per SENT row, none early.
    thresholds = len(result["params"]["warning_thresholds"])
    assert f["warning_rows"] == thresholds * f["timers"], f
    assert f["timers_short_of_warnings"] == 0, f
    assert f["warning_events"] == f["warnings_sent"], f
    assert (f["sent_warnings_without_event"], f["warning_events_without_sent_row"]) == (0, 0), f
    # Pauses: every paused timer resumed, one event each way.
    if result["params"].get("pause_every"):
        assert f["timers_paused"] > 0 and f["still_paused"] == 0, f
        assert f["paused_events"] == f["resumed_events"] == f["timers_paused"], f
    assert f["workers_exited_unkilled"] == 0, f
    assert f["worker_threads_died"] == 0, f
    assert f["schedulers_alive_at_end"] == f["schedulers"], f
    assert f["workers_deaf_over_10_s"] == 0, f
    assert f["workers_polling_at_end"] == f["workers_running_at_end"], f


# The faults come 3 s before the first due instant: the seeding (and, on a loaded
# machine, the processes' start) must fit in the rest of this.
DUE_IN_S = 8.0


def test_timers_fire_once_and_on_time_through_a_kill_and_a_flush(engine, tmp_path):
    bench = Bench(os.environ["DATABASE_URL"], os.environ["REDIS_URL"], os.environ.copy())
    result = chaos.run(bench, {**chaos.SMALL, "due_in_s": DUE_IN_S}, tmp_path)

    assert_invariants(result)
    # The rows are unique whatever happens: the insert attempts (tests/support/attempt_log.py)
    # show whether anything was tried twice, and when the database first saw each step.
    n = result["figures"]["timers"]
    with engine.connect() as conn:
        assert attempt_log.duplicate_attempts(conn) == []
        assert attempt_log.attempts(conn) == chaos.STEPS * n
        f = result["figures"]
        expected = chaos.EVENTS_PER_TIMER * n + f["warning_events"] + 2 * f["timers_paused"]
        assert attempt_log.attempts(conn, "outbox_events") == expected
        assert len(attempt_log.step_times(conn)) == chaos.STEPS * n
        assert attempt_log.early_steps(conn) == []
    kinds = [fault["kind"] for fault in result["faults"]]
    assert kinds == ["Redis FLUSHDB", "worker SIGKILL"]
    # Both faults came before the first due instant: the new worker's boot sweep
    # scheduled the wake-ups the flush and the kill took, so nothing waited for a tick.
    assert result["figures"]["lateness_all"]["max_s"] < 5.0, result["figures"]


@pytest.mark.slow
def test_full_chaos_on_servers_of_its_own(tmp_path):
    """`make chaos` at a tenth of the size over two minutes, in its own process: kills,
    FLUSHALL, a PostgreSQL restart, a 30 s Redis pause and a 30 s Redis stop on a
    dedicated PostgreSQL and Redis (about four minutes)."""
    out = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    sizes = ["--timers", "5000", "--spread-s", "120", "--flush-at-s", "20"]
    sizes += ["--pg-restart-at-s", "45", "--pause-at-s", "75"]
    sizes += ["--redis-outage-at-s", "110", "--redis-outage-s", "30"]
    subprocess.run(
        [sys.executable, "-m", "bench.chaos", *sizes, "--no-doc", "--results", out],
        cwd=chaos.ROOT,
        env=env,
        check=False,
        timeout=900,
    )
    result = json.loads(out.read_text())
    assert_invariants(result)
    assert {"Redis FLUSHALL", "PostgreSQL restart", "Redis CLIENT PAUSE", "Redis stopped"} <= {
        fault["kind"] for fault in result["faults"]
    }
    # While Redis was stopped the schedulers fired from PostgreSQL.
    during = result["figures"]["lateness_during_redis_outage"]
    assert during["n"] > 0 and during["p99_s"] <= chaos.OUTAGE_P99_TARGET_S, during
