"""The unit tier needs no services: ``pytest tests/unit`` connects to nothing
and starts no PostgreSQL or Redis (tests/conftest.py resolves them only when a
test outside tests/unit is collected)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_unit_tier_runs_without_services_or_network():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.pop("SLA_TEST_SERVER_URL", None)
    env["SLA_TEST_NO_SERVICES"] = "1"  # asking for them is an error
    # hypothesis and pytest load third-party plugins at import, and trio's (a selenium
    # dependency, reached through hypothesis and anyio) runs ldconfig. The tests use none.
    env["HYPOTHESIS_NO_PLUGINS"] = "1"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.support.no_io",  # any socket connect or child process raises
            "-p",
            "no:anyio",
            "-q",
            "tests/unit",
            "--deselect",
            f"tests/unit/{Path(__file__).name}::{test_the_unit_tier_runs_without_services_or_network.__name__}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "error" not in result.stdout.lower(), result.stdout
