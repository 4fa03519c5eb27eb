"""Helpers every service tier uses: the repository root, waiting on a
condition, and the tests' own Redis database."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate, timeout: float, what: str, *, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def redis_conn():
    """A client of the Redis database the tests use (``REDIS_URL``, set by
    tests/conftest.py)."""
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"])
