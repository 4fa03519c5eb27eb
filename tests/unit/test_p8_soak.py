"""P8's criteria (bench/p8_soak.py), on made-up samples: which intervals count
as steady, RSS flatness, lateness stability, dead tuples against autovacuum's
trigger, and the loss checks. Pure: no run, no service."""

from __future__ import annotations

from bench.p8_soak import autovacuum_trigger, rows, steady_samples, summarize

PARAMS = {
    "minutes": 4,
    "sample_s": 60,
    "start_rate": 10,
    "window_seconds": 60,
    "rss_flat": 1.10,
    "p99_stable": 2.0,
    "dead_bound": 2.0,
}
SETTINGS = {"autovacuum_vacuum_threshold": "50", "autovacuum_vacuum_scale_factor": "0.2"}


def _table(live, dead, inserted, updated=0.0):
    return {
        "live": live,
        "dead": dead,
        "autovacuums": 1.0,
        "autoanalyzes": 1.0,
        "inserted": inserted,
        "updated": updated,
        "hot_updated": 0.0,
        "deleted": 0.0,
        "reltuples": live,
        "bytes": 8192.0,
    }


def _sample(t, worker_rss, dead, phase="load", received=None):
    n = t * 10
    return {
        "t": t,
        "phase": phase,
        "rss_mb": {
            "worker": {"main": 40.0, "children": [worker_rss, worker_rss - 1]},
            "web": {"main": 30.0, "children": [80.0, 81.0]},
        },
        "cpu_s": {"web": t * 0.1, "worker": t * 0.2, "postgres": t * 0.3},
        "tables": {
            "sla_timers": _table(n, dead, n, updated=2 * n),
            "sla_escalation_events": _table(n, 0.0, max(0, n - 600)),
            "tenants": _table(1, 0.0, 1),
        },
        "deliveries_pending": 3,
        "received": max(0, n - 600) if received is None else received,
        "redis_keys": 5,
        "metrics_dir_kb": 100,
        "load_avg": (1.0, 1.0, 1.0),
    }


def _figures(samples, intervals):
    return {
        "postgresql": SETTINGS,
        "samples": samples,
        "intervals": intervals,
        "check": {
            "timers": 2400,
            "steps": 2400,
            "timers_fired": 2400,
            "deliveries": 2400,
            "delivered": 2400,
            "attempts": 2400,
        },
        "load": {"ok": 2400, "non_2xx": 0, "errors": 0, "skipped": 0, "max_lag_s": 0.1},
        "receiver": {"duplicates": 0, "ids_received": 2400, "bad_signatures": 0},
    }


def _intervals(p99s):
    return [
        {
            "interval": k,
            "due": 600,
            "lateness_p50_ms": 20.0,
            "lateness_p99_ms": p99,
        }
        for k, p99 in enumerate(p99s)
    ]


def _summary(worker_rss_last=60.0, dead_last=100.0, p99s=(None, 50, 60, 50, 150)):
    samples = [
        _sample(0, 50.0, 0.0),
        _sample(60, 55.0, 10.0),
        _sample(120, 60.0, 50.0),
        _sample(180, 60.0, 200.0),
        _sample(240, worker_rss_last, dead_last),
        _sample(300, 61.0, 0.0, phase="drained"),
    ]
    return summarize(_figures(samples, _intervals(p99s)), PARAMS, 240)


def test_steady_samples_start_once_starts_and_fires_ran_a_whole_interval():
    samples = [_sample(t, 50.0, 0.0) for t in (0, 60, 120, 180, 240)]
    samples.append(_sample(300, 50.0, 0.0, phase="drained"))
    assert [x["t"] for x in steady_samples(samples, PARAMS)] == [120, 180, 240]


def test_autovacuum_trigger_is_threshold_plus_scale_factor_times_rows():
    assert autovacuum_trigger(_table(1000.0, 0.0, 1000.0), SETTINGS) == 250.0


def test_rss_is_flat_when_the_last_interval_is_within_the_ratio_of_the_first_steady_one():
    flat, grown = _summary(worker_rss_last=65.0), _summary(worker_rss_last=70.0)
    assert flat["worker_rss_first_mb"] == 60.0 and flat["worker_rss_ratio"] == 1.083
    assert grown["worker_rss_ratio"] == 1.167
    assert rows(flat, PARAMS, 10)[1]["met"] is True
    assert rows(grown, PARAMS, 10)[1]["met"] is False


def test_lateness_counts_only_intervals_wholly_inside_the_due_instants():
    # interval 0 holds no due timer (window 60 s); 1..4 are due within [60, 300).
    summary = _summary(p99s=(None, 50, 60, 50, 150, 5000))
    assert summary["lateness_intervals"] == 4
    assert summary["lateness_p99_median_ms"] == 55.0
    assert summary["lateness_p99_ratio"] == round(150 / 55, 3)
    assert rows(summary, PARAMS, 10)[3]["met"] is False


def test_dead_tuples_are_measured_against_the_trigger_in_the_second_half():
    # At t=120 and t=240 (the second half: t >= 120): trigger 50 + 0.2 x rows.
    bounded = _summary(dead_last=100.0)
    runaway = _summary(dead_last=2000.0)
    assert bounded["dead_worst_table"] == "sla_timers"
    assert bounded["dead_worst_ratio"] == round(200 / (50 + 0.2 * 1800), 3)
    assert runaway["dead_worst_ratio"] == round(2000 / (50 + 0.2 * 2400), 3)
    assert rows(bounded, PARAMS, 10)[4]["met"] is True
    assert rows(runaway, PARAMS, 10)[4]["met"] is False


def test_throughput_and_cpu_per_timer_come_from_the_steady_samples():
    summary = _summary()
    assert summary["starts_per_s"] == 10.0 and summary["fires_per_s"] == 10.0
    assert summary["cpu_us_per_timer"] == {"web": 10_000, "worker": 20_000, "postgres": 30_000}


def test_a_lost_timer_or_a_failed_start_fails_the_loss_row():
    assert rows(_summary(), PARAMS, 10)[-1]["met"] is True
    samples = [_sample(t, 50.0, 0.0) for t in (0, 60, 120, 180, 240)]
    figures = _figures(samples, _intervals((None, 50, 50, 50, 50)))
    figures["check"]["timers_fired"] = 2399
    assert rows(summarize(figures, PARAMS, 240), PARAMS, 10)[-1]["met"] is False
    figures = _figures(samples, _intervals((None, 50, 50, 50, 50)))
    figures["load"]["non_2xx"] = 1
    assert rows(summarize(figures, PARAMS, 240), PARAMS, 10)[-1]["met"] is False
