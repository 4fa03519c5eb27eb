"""Metrics across processes (models/metrics.py, web/metrics.py, tasks/metrics.py):
gunicorn with two workers and a Dramatiq worker process share one
PROMETHEUS_MULTIPROC_DIR, and one scrape of any web worker sees what every one
of them counted: the starts the web workers took, the fires the Dramatiq
worker did, and Dramatiq's own message metrics. A worker host's own exposition
(``SLA_METRICS_PORT``) serves the same files, without the database state.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from devtools.processes import Service
from tests.support.common import wait_until

BIN = Path(sys.executable).parent
TIMERS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def samples(body: str) -> dict[tuple, float]:
    found = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            found[s.name, tuple(sorted(s.labels.items()))] = s.value
    return found


def total(found: dict, name: str, **labels) -> float:
    """The sum over every sample of ``name`` carrying ``labels`` (among others)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= set(ls))


def test_one_scrape_sees_every_web_and_worker_process(engine, tenant, tmp_path):
    directory = tmp_path / "prometheus"
    web_port, worker_port = free_port(), free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    env["SLA_METRICS_CACHE_SECONDS"] = "0"
    web = Service(
        [
            str(BIN / "gunicorn"),
            "web:create_app()",
            "--bind",
            f"127.0.0.1:{web_port}",
            "--workers",
            "2",
            "--threads",
            "4",
        ],
        env,
        tmp_path / "web.log",
        ready="Booting worker",
        ready_count=2,
    )
    worker = Service(
        [str(BIN / "dramatiq"), "tasks", "--processes", "1", "--threads", "4"],
        {**env, "SLA_METRICS_PORT": str(worker_port)},
        tmp_path / "worker.log",
        ready="is ready for action",
    )
    try:
        base = f"http://127.0.0.1:{web_port}"
        wait_until(lambda: get(base + "/healthz")[0] == 200, 30, "the web workers")

        def start(i: int) -> int:
            body = f'{{"lead_id": "mp-{i}", "window_seconds": 1}}'.encode()
            request = urllib.request.Request(
                base + "/v1/timers",
                data=body,
                headers={
                    "Authorization": f"Bearer {tenant[1]}",
                    "Content-Type": "application/json",
                },
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status

        # Concurrent requests, so that both web workers take some.
        with ThreadPoolExecutor(TIMERS) as pool:
            assert list(pool.map(start, range(TIMERS))) == [201] * TIMERS

        def scraped() -> dict:
            status, body = get(base + "/metrics")
            assert status == 200
            return samples(body)

        # The wake-ups fire them in the worker process, a second later.
        wait_until(
            lambda: total(scraped(), "sla_timer_fires_total", outcome="due") == TIMERS,
            20,
            "the timers fired",
            interval=0.2,
        )
        found = scraped()
        assert total(found, "sla_timers_started_total") == TIMERS  # counted by the web workers
        assert total(found, "sla_fire_lateness_seconds_count") == TIMERS
        assert total(found, "sla_escalations_total", step="1", outcome="success") == TIMERS
        assert total(found, "dramatiq_messages_total", actor_name="wake_up") >= 1
        assert total(found, "sla_timers_active") == TIMERS  # DUE, awaiting step 2
        # Counted by several processes: the web workers and the worker process.
        writers = {p.stem.rsplit("_", 1)[1] for p in directory.glob("counter_*.db")}
        assert len(writers) >= 2

        # The worker host's own exposition: the same counts, no database state.
        status, body = get(f"http://127.0.0.1:{worker_port}/metrics")
        assert status == 200
        own = samples(body)
        assert total(own, "sla_timer_fires_total", outcome="due") == TIMERS
        assert total(own, "sla_timers_started_total") == TIMERS
        assert not any(name == "sla_timers_active" for name, _ in own)
    finally:
        worker.stop()
        web.stop()
