"""Service processes and throw-away databases, for the tests and the benchmarks.

The tests (``tests/``) and the benchmarks (``bench/``) both run the service's
real processes (``dramatiq tasks``, ``python -m tasks.scheduler``, gunicorn)
against a database of their own beside the one ``DATABASE_URL`` names, and
wait on conditions rather than sleeping. This is that code, once:

- ``server_url()``: the libpq URL of ``DATABASE_URL``'s server (the project's
  ``.env`` included, as every entry point reads it);
- ``create_database()`` / ``drop_database()`` / ``migrate()``: a database
  dropped and recreated beside it, migrated with alembic;
- ``Service``: a process in its own process group, started and waited for
  until its log says it is ready, stopped or killed as a group;
- ``wait_for()``: poll a condition until it holds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

T = TypeVar("T")


def server_url(database_url: str | None = None) -> str:
    """The libpq URL (``postgresql://``) of ``database_url``, by default
    ``DATABASE_URL`` from the environment or the project's ``.env``."""
    from sqlalchemy.engine import make_url

    from models.config import load_env_file

    load_env_file()
    raw = database_url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    url = make_url(raw.replace("postgres://", "postgresql://", 1)).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def create_database(server: str, name: str) -> str:
    """Drop and recreate database ``name`` on ``server``; return its libpq URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server)
    admin = url.set(database=url.database or "postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


def drop_database(database_url: str) -> None:
    """Drop the database ``database_url`` names (connecting to ``postgres``)."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    admin = url.set(database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')


def migrate(env: Mapping[str, str] | None = None) -> None:
    """``alembic upgrade head`` against ``env``'s ``DATABASE_URL`` (default: ours)."""
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=None if env is None else dict(env),
        check=True,
        capture_output=True,
    )


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.05, *, what: str = "a condition"
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that;
    ``TimeoutError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


class Service:
    """A service process (worker, scheduler, web) in its own process group,
    its output appended to ``log``. With ``ready``, the constructor waits until
    this run's lines say it ``ready_count`` times (60 s at most)."""

    def __init__(
        self,
        args: list[str],
        env: Mapping[str, str],
        log: Path,
        ready: str | None,
        ready_count: int = 1,
        timeout: float = 60,
    ):
        self.log = log
        self.offset = log.stat().st_size if log.exists() else 0  # only this run's lines count
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=dict(env),
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if ready:
            deadline = time.monotonic() + timeout
            while self.said().count(ready) < ready_count:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"{args[0]} did not start:\n{self.said()[-2000:]}")
                time.sleep(0.05)

    def said(self, offset: int | None = None) -> str:
        """What this run wrote to its log (from ``offset``, default its start)."""
        with self.log.open("rb") as f:
            f.seek(self.offset if offset is None else offset)
            return f.read().decode(errors="replace")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
