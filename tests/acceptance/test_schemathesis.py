"""Schemathesis against the live API (slow tier).

The app serves real HTTP on a free port; the ``st`` command line loads
``/openapi.json`` from it and runs every operation through its phases:
boundary and type-error values (coverage), generated valid and invalid data
(fuzzing), then sequences along the document's links (stateful: start a timer,
then get, cancel or complete it, or its lead). Tenant operations use a real API
key, admin ones the admin token.

Every check runs (``--checks all``), admin routes included: no response may be
a 5xx, every one must match what the document says of its status code, content
type, headers (Allow included) and body schema, invalid data must be rejected
and valid data accepted. Rules JSON Schema cannot express are stated in the
document's ``x-constraints``; ``tests/support/schemathesis_hooks.py`` makes the
data generated as valid keep them. The number of requests is counted from the
HAR report and asserted.

Knobs: SLA_FUZZ_EXAMPLES (examples per operation and phase, default 100) and
SLA_FUZZ_SEED (default fixed, so a failure reproduces; "random" for a new one).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from werkzeug.serving import WSGIRequestHandler, make_server

pytestmark = pytest.mark.slow

ADMIN_TOKEN = "fuzz-admin-token"
MIN_REQUESTS = 1000
EXAMPLES = int(os.environ.get("SLA_FUZZ_EXAMPLES", "100"))
SEED = os.environ.get("SLA_FUZZ_SEED", "20261127")
ST = Path(sys.executable).parent / "st"
ROOT = Path(__file__).resolve().parents[2]
HOOKS = "tests.support.schemathesis_hooks"

CONFIG = """\
[generation]
database = "none"
# The API refuses NUL characters and unpaired surrogates (PostgreSQL cannot
# store them); tests/integration covers that, so valid data here stays valid.
allow-x00 = false
codec = "utf-8"

# The examples phase sends the document's examples (web/examples.py) as written:
# this file's hooks, which keep the x-constraints, do not run there, so it takes
# no values captured from the run's responses (a calendar another example
# deleted, a contract it never defined).
[phases.examples.extra-data-sources]
responses = false

[auth.openapi.apiKey]
bearer = "${SLA_FUZZ_API_KEY}"

[auth.openapi.adminToken]
bearer = "${SLA_FUZZ_ADMIN_TOKEN}"
"""


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs) -> None:
        pass


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(self.format(record))


@pytest.fixture
def live_url(engine):
    """The app on a free port, with the admin routes on, no rate limit, and
    webhooks to private networks allowed (the hooks' URL is 127.0.0.1's)."""
    from models.config import Settings
    from web import create_app

    env = {
        **os.environ,
        "SLA_ADMIN_TOKEN": ADMIN_TOKEN,
        "SLA_RATE_LIMIT": "off",
        "SLA_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "1",
    }
    app = create_app(Settings.from_env(env))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)
    server.server_close()


@pytest.fixture
def server_errors():
    """Everything the app logged at ERROR (an unhandled exception logs its traceback)."""
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler.records
    root.removeHandler(handler)


def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(
    live_url, tenant, server_errors, tmp_path
):
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    har, report = tmp_path / "requests.har", tmp_path / "report.json"
    command = [
        str(ST),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{live_url}/openapi.json",
        "--phases=examples,coverage,fuzzing,stateful",
        "--checks=all",
        f"--max-examples={EXAMPLES}",
        "--workers=2",
        "--request-timeout=30",
        "--report=har,json",
        f"--report-har-path={har}",
        f"--report-json-path={report}",
        "--suppress-health-check=all",
    ]
    if SEED != "random":
        command.append(f"--seed={SEED}")
    env = {
        **os.environ,
        "SLA_FUZZ_API_KEY": tenant[1],
        "SLA_FUZZ_ADMIN_TOKEN": ADMIN_TOKEN,
        "SCHEMATHESIS_HOOKS": HOOKS,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    output = run.stdout + run.stderr
    (tmp_path / "st.log").write_text(output)

    assert report.exists(), output
    summary = json.loads(report.read_text())
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = [e["response"]["status"] for e in entries]
    server_side = [s for s in statuses if s >= 500]
    scenarios = re.search(r"Scenarios:\s+(\d+)", output)
    print(
        f"\nschemathesis: {len(entries)} requests "
        f"({summary['test_cases']['generated']} generated test cases), "
        f"{len(server_side)} 5xx, {len(summary['failures'])} failure kinds, "
        f"{len(summary['errors'])} errors, stateful {summary['phases']['stateful']['status']} "
        f"({scenarios[1] if scenarios else '?'} scenarios), "
        f"seed {summary['seed']}, {summary['running_time']:.0f} s"
    )

    assert not server_errors, "\n\n".join(server_errors)
    assert server_side == [], output
    assert summary["failures"] == [] and summary["errors"] == [], output
    assert run.returncode == 0, output
    assert len(entries) >= MIN_REQUESTS, output
    assert summary["operations"]["tested"] == summary["operations"]["total"], output
    # Stateful sequences ran along the links, and the admin token was used.
    assert summary["phases"]["stateful"]["status"] == "success", output
    assert not summary["warnings"]["missing_auth"], output
