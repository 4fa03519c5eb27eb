"""The Procfile's web and worker roles, run from the Procfile's own lines, write
JSON lines (docs/logging.md), and a start's correlation id reaches the worker's
lines through the wake-up it sent: gunicorn's access line names the request's
ids and tenant, the worker's firing line names the same correlation id."""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from devtools.processes import Service
from tests.support.common import wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CORRELATION = "proc-corr-1"


def procfile(role: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name == role:
            return command.strip()
    raise AssertionError(f"no {role} in the Procfile")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def json_lines(log: Path, *, plain_ok=lambda line: False) -> list[dict]:
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
        else:
            assert plain_ok(line), f"not a JSON line in {log.name}: {line!r}"
    return found


def test_web_and_worker_write_json_lines_that_carry_the_request_s_correlation_id(
    engine, tenant, tmp_path
):
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "WEB_THREADS": "2",
        "WORKER_PROCESSES": "1",
        "WORKER_THREADS": "2",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "SLA_LOG_FORMAT": "json",
        "SLA_LOG_LEVEL": "DEBUG",  # the firing loop's batch line
    }
    (tmp_path / "metrics").mkdir()
    web_log, worker_log = tmp_path / "web.log", tmp_path / "worker.log"
    run = ["bash", "-c"]
    worker = Service([*run, procfile("worker")], env, worker_log, ready="ready for")
    try:
        web = Service([*run, procfile("web")], env, web_log, ready="Booting worker")
        try:
            started = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
            body = {
                "lead_id": "lead-proc",
                "window_seconds": 60,
                "started_at": started,
                "escalation_steps": [{"step": 1, "after_seconds": 0, "action": "notify"}],
            }
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/timers",
                data=json.dumps(body).encode(),
                headers={
                    "Authorization": f"Bearer {tenant[1]}",
                    "Content-Type": "application/json",
                    "X-Correlation-ID": CORRELATION,
                },
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 201
                assert response.headers["X-Correlation-ID"] == CORRELATION
                timer_id = json.loads(response.read())["id"]

            def fired() -> bool:
                with engine.connect() as conn:
                    return bool(
                        conn.execute(
                            text("SELECT count(*) FROM sla_escalation_events WHERE timer_id = :t"),
                            {"t": timer_id},
                        ).scalar_one()
                    )

            wait_until(fired, 20, "the worker to fire the timer")
        finally:
            web.stop()
    finally:
        worker.stop()

    access = [
        line
        for line in json_lines(web_log)
        if line["logger"] == "gunicorn.access" and line.get("path") == "/v1/timers"
    ]
    assert len(access) == 1, access
    assert access[0]["status"] == 201 and access[0]["method"] == "POST"
    assert access[0]["correlation_id"] == CORRELATION
    assert access[0]["tenant_id"] == str(tenant[0]) and access[0]["request_id"]

    # Only the supervisor's own lines are in Dramatiq's plain format.
    lines = json_lines(worker_log, plain_ok=lambda line: "[dramatiq.MainProcess]" in line)
    assert {line["role"] for line in lines} == {"worker"}
    batches = [
        line
        for line in lines
        if line["message"].startswith("fired a batch") and line.get("correlation_id") == CORRELATION
    ]
    assert batches, [line for line in lines if line["logger"] == "tasks.firing"]
    assert batches[0]["actor"] == "wake_up" and batches[0]["batch_id"]
