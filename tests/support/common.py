"""Helpers every service tier uses: the repository root, waiting on a
condition, and the tests' own Redis database."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from devtools.processes import ROOT, wait_for

__all__ = ["ROOT", "redis_conn", "wait_until"]


def wait_until(predicate, timeout: float, what: str, *, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy, and return that; a
    test failure naming ``what`` after ``timeout`` seconds (devtools.processes's
    ``wait_for``, which the benchmarks use too)."""
    try:
        return wait_for(predicate, timeout, interval, what=what)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def redis_conn():
    """A client of the Redis database the tests use (``REDIS_URL``, set by
    tests/conftest.py)."""
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"])


def alembic(*args: str) -> None:
    """Run an alembic command on DATABASE_URL (the test database), as the release step does."""
    subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env=os.environ.copy(),
    )
