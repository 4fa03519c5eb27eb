"""P5 memory: peak RSS of a worker process with 10k vs many active timers.

For each size, the database holds that many active timers spread evenly over
7 days, plus a small stream due within the sampling window so the worker
fires timers all along. A real worker (processes x threads) runs while sweeps
are sent every few seconds (instead of waiting for the scheduler's minute)
and the RSS of each of its worker processes (psutil) is sampled. The target is
per worker process: flat in the number of timers, at most 150 MB.

Beside it, the naive design: the same small load, plus far-future delayed
``wake_up`` messages in Redis, one per timer, as if every start scheduled its
wake-up however far away. Workers prefetch delayed messages into memory (up
to 1,000 per thread) and the delay queue is FIFO, so those messages cost
memory and stand in front of the near wake-ups. This is why only timers due
within the horizon get a wake-up.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from uuid import uuid4

from .common import Bench, Service, percentile, seed_timers
from .p3_recovery import start_worker

QUICK = {
    "sizes": [10_000, 100_000],
    "days": 7,
    "stream": 2_000,  # timers due within the sampling window
    "sample_s": 25.0,
    "interval_s": 0.2,
    "sweep_every_s": 5.0,
    "processes": 2,
    "threads": 8,
    "naive_messages": 50_000,  # 0 skips the naive run
    "naive_sample_s": 15.0,
    "target_mb": 150,
    "flat_ratio": 1.10,
}
FULL = {
    **QUICK,
    "sizes": [10_000, 1_000_000],
    "stream": 5_000,
    "sample_s": 60.0,
    "naive_messages": 200_000,
    "naive_sample_s": 45.0,
}

MB = 2**20

# The stream: due from a few seconds after the worker starts to the end of sampling.
_STREAM_DUE = "now() + make_interval(secs => %(start)s + g * %(span)s / %(n)s)"
_SPREAD_DUE = "now() + make_interval(secs => g * %(days)s * 86400.0 / %(n)s)"

# A stream timer still unfired at the end counts as late by now() - due: a lower bound.
_STREAM_FIRED = """
SELECT t.due_at, e.executed_at, now()
FROM sla_timers t LEFT JOIN sla_escalation_events e ON e.timer_id = t.id
WHERE t.lead_id LIKE 'lead-s%' AND t.due_at <= now()
"""


def _push_far_wakeups(redis_client, count: int, days: int) -> None:
    """Put ``count`` delayed wake-ups due 1 h to ``days`` days ahead, in no
    particular order, on the delay queue. This writes what
    ``wake_up.send_with_options(delay=...)`` writes (dramatiq's enqueue
    script: the message in ``<queue>.msgs``, its id pushed on the queue), in
    pipelines, because sending them one by one takes a minute."""
    from tasks.actors import wake_up

    now_ms = int(time.time() * 1000)
    span_ms = days * 86_400_000 - 3_700_000
    pipe = redis_client.pipeline(transaction=False)
    for i in range(count):
        eta = now_ms + 3_600_000 + (i * 7919 % count) * span_ms // count
        message_id = str(uuid4())
        message = wake_up.message_with_options(args=(eta,)).copy(
            queue_name="sla.DQ", options={"redis_message_id": message_id, "eta": eta}
        )
        pipe.hset("dramatiq:sla.DQ.msgs", message_id, message.encode())
        pipe.rpush("dramatiq:sla.DQ", message_id)
        if i % 5_000 == 4_999:
            pipe.execute()
    pipe.execute()


def _measure(
    bench: Bench,
    params: dict,
    out_dir: Path,
    label: str,
    size: int,
    naive_messages: int,
    sample_s: float,
) -> dict:
    import psutil
    import redis

    from tasks.actors import sweep

    bench.reset()
    tenant, _ = bench.tenant()
    seeded = time.monotonic()
    seed_timers(bench, tenant, size, _SPREAD_DUE, params={"days": params["days"]})
    seed_s = time.monotonic() - seeded
    r = redis.Redis.from_url(bench.redis_url)
    if naive_messages:
        _push_far_wakeups(r, naive_messages, params["days"])
    seed_timers(
        bench,
        tenant,
        params["stream"],
        _STREAM_DUE,
        prefix="s",
        params={"start": 4.0, "span": sample_s - 5.0},
    )

    services: list[Service] = []
    samples: list[tuple[float, list[int], int]] = []
    try:
        boot_s = start_worker(services, bench, out_dir / "p5" / f"worker-{label}.log", params)
        main = psutil.Process(services[0].pid)
        children = main.children(recursive=True)
        started = last_sweep = time.monotonic()
        while (now := time.monotonic()) - started < sample_s:
            if now - last_sweep >= params["sweep_every_s"]:
                sweep.send()
                last_sweep = now
            try:
                samples.append(
                    (
                        round(now - started, 2),
                        [c.memory_info().rss for c in children],
                        main.memory_info().rss,
                    )
                )
            except psutil.NoSuchProcess as exc:
                raise RuntimeError(f"a worker process died: {exc}") from None
            time.sleep(params["interval_s"])
        delay_queue_left = r.llen("dramatiq:sla.DQ")
        held = sum(r.scard(k) for k in r.scan_iter("dramatiq:__acks__.*.sla.DQ"))
        with bench.connect() as c:
            stream = c.execute(_STREAM_FIRED).fetchall()
    finally:
        for s in services:
            s.stop()

    lateness = [((e or end) - d).total_seconds() for d, e, end in stream]
    per_process_peak = [max(s[1][i] for s in samples) for i in range(len(children))]
    result = {
        "active_timers": size,
        "naive_far_wakeups": naive_messages,
        "seed_s": round(seed_s, 1),
        "boot_s": round(boot_s, 2),
        "worker_processes": len(children),
        "samples": len(samples),
        "peak_rss_mb": round(max(per_process_peak) / MB, 1),  # per worker process
        "peak_rss_mb_each": [round(p / MB, 1) for p in per_process_peak],
        "first_rss_mb_each": [round(p / MB, 1) for p in samples[0][1]],
        "peak_rss_mb_sum": round(max(sum(s[1]) for s in samples) / MB, 1),
        "parent_peak_rss_mb": round(max(s[2] for s in samples) / MB, 1),
        "stream_due": len(stream),
        "stream_fired": sum(e is not None for _, e, _ in stream),
        "stream_lateness_p50_s": round(percentile(lateness, 50), 3),
        "stream_lateness_p99_s": round(percentile(lateness, 99), 3),
        "delayed_messages_left_in_redis": delay_queue_left,
        "delayed_messages_held_by_workers": held,
    }
    (out_dir / "p5" / f"rss-{label}.json").write_text(
        json.dumps(
            {
                "result": result,
                "samples_mb": [
                    (t, [round(x / MB, 1) for x in each], round(parent / MB, 1))
                    for t, each, parent in samples
                ],
            }
        )
        + "\n"
    )
    return result


def _label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


def run(bench: Bench, params: dict, out_dir: Path) -> dict:
    (out_dir / "p5").mkdir(parents=True, exist_ok=True)
    small_n, large_n = params["sizes"]
    small = _measure(bench, params, out_dir, _label(small_n), small_n, 0, params["sample_s"])
    large = _measure(bench, params, out_dir, _label(large_n), large_n, 0, params["sample_s"])
    naive = None
    if params["naive_messages"]:
        naive = _measure(
            bench,
            params,
            out_dir,
            "naive",
            small_n,
            params["naive_messages"],
            params["naive_sample_s"],
        )

    target = params["target_mb"]
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    rows = [
        {
            "figure": f"peak RSS per worker process, {_label(small_n)} timers",
            "value": small["peak_rss_mb"],
            "unit": "MB",
            "beside": "limit",
            "beside_value": target,
            "ratio": round(small["peak_rss_mb"] / target, 3),
            "target": f"≤ {target} MB",
            "met": small["peak_rss_mb"] <= target,
        },
        {
            "figure": f"peak RSS per worker process, {_label(large_n)} timers",
            "value": large["peak_rss_mb"],
            "unit": "MB",
            "beside": f"at {_label(small_n)} timers",
            "beside_value": small["peak_rss_mb"],
            "ratio": round(ratio, 3),
            "target": f"flat (≤ {params['flat_ratio']}x), ≤ {target} MB",
            "met": ratio <= params["flat_ratio"] and large["peak_rss_mb"] <= target,
        },
    ]
    if naive is not None:
        k = _label(params["naive_messages"])
        rows += [
            {
                "figure": f"naive: peak RSS with {k} far-future wake-ups in Redis",
                "value": naive["peak_rss_mb"],
                "unit": "MB",
                "beside": f"horizon design, {_label(small_n)} timers",
                "beside_value": small["peak_rss_mb"],
                "ratio": round(naive["peak_rss_mb"] / small["peak_rss_mb"], 3),
                "target": "",
                "met": None,
            },
            {
                "figure": "naive: near-timer lateness p99",
                "value": naive["stream_lateness_p99_s"],
                "unit": "s",
                "beside": "horizon design",
                "beside_value": small["stream_lateness_p99_s"],
                "ratio": None,
                "target": "",
                "met": None,
            },
        ]
    figures = {_label(small_n): small, _label(large_n): large}
    if naive is not None:
        figures["naive"] = naive
    figures["ratio_large_small"] = round(ratio, 3)
    return {"params": params, "figures": figures, "rows": rows}
