"""P8's load: single starts (POST /v1/timers) at a steady rate, for the soak.

Open loop: start ``i`` is due at ``i / rate`` seconds after the first, whatever
the answers of the others; ``threads`` keep-alive connections take the next
start in turn and wait for its instant (a thread that finds its instant past
sends at once: the loader catches up rather than lowering the rate, and how
far behind it ran is reported). At ``seconds`` it stops: starts not sent by
then are counted as skipped, so an overloaded machine shows a lower rate
rather than a longer run. Each timer has one step at its due instant
(``after_seconds`` 0), so every start is one fire ``window`` seconds later.

On exit it prints one JSON line: what was sent and answered, per interval of
``interval`` seconds of sending (2xx, other answers, errors, latency
p50/p99, how far behind its instant the latest start sent in it went)::

    SLA_BENCH_API_KEY=... python -m bench.p8_load --port 8000 --rate 300 --seconds 60
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import threading
import time

_STEPS = [{"step": 1, "after_seconds": 0, "action": "notify", "target": "owner"}]


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.p8_load", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--window", type=int, default=60)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--interval", type=float, default=60)
    parser.add_argument("--prefix", default="soak")
    parser.add_argument("--start-at", type=float, help="epoch seconds of the first start")
    args = parser.parse_args(argv)

    headers = {
        "Authorization": f"Bearer {os.environ['SLA_BENCH_API_KEY']}",
        "Content-Type": "application/json",
    }
    total = int(args.rate * args.seconds)
    t0 = args.start_at or time.time() + 0.2
    end = t0 + args.seconds
    tickets = itertools.count()  # next() is atomic under the GIL
    skipped = [0]
    lock = threading.Lock()
    # interval -> [2xx, other status, errors, latencies (s), max lag (s)]
    per: dict[int, list] = {}

    def record(k: int, status: int | None, latency: float, lag: float) -> None:
        with lock:
            row = per.setdefault(k, [0, 0, 0, [], 0.0])
            if status is None:
                row[2] += 1
            elif 200 <= status < 300:
                row[0] += 1
            else:
                row[1] += 1
            row[3].append(latency)
            row[4] = max(row[4], lag)

    def send_all() -> None:
        conn = http.client.HTTPConnection(args.host, args.port, timeout=30)
        while (i := next(tickets)) < total:
            at = t0 + i / args.rate
            if time.time() >= end:
                with lock:
                    skipped[0] += 1
                continue
            pause = at - time.time()
            if pause > 0:
                time.sleep(pause)
            body = json.dumps(
                {
                    "lead_id": f"{args.prefix}-{i}",
                    "window_seconds": args.window,
                    "escalation_steps": _STEPS,
                    "metadata": {"source": "bench", "scenario": "p8"},
                }
            )
            sent = time.time()
            status = None
            try:
                conn.request("POST", "/v1/timers", body, headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(args.host, args.port, timeout=30)
            record(int((sent - t0) // args.interval), status, time.time() - sent, sent - at)
        conn.close()

    workers = [threading.Thread(target=send_all, daemon=True) for _ in range(args.threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    intervals = [
        {
            "interval": k,
            "ok": row[0],
            "non_2xx": row[1],
            "errors": row[2],
            "latency_p50_ms": round(_percentile(row[3], 50) * 1000, 2),
            "latency_p99_ms": round(_percentile(row[3], 99) * 1000, 2),
            "max_lag_s": round(row[4], 3),
        }
        for k, row in sorted(per.items())
    ]
    print(
        json.dumps(
            {
                "t0": t0,
                "sent": total,
                "ok": sum(r["ok"] for r in intervals),
                "non_2xx": sum(r["non_2xx"] for r in intervals),
                "errors": sum(r["errors"] for r in intervals),
                "skipped": skipped[0],
                "max_lag_s": max((r["max_lag_s"] for r in intervals), default=0.0),
                "intervals": intervals,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
