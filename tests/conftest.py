"""Test services: a real PostgreSQL and a real Redis.

The tests use the servers ``DATABASE_URL`` and ``REDIS_URL`` name (in the
environment, else in the project's ``.env``, as every entry point), and
otherwise start the embedded ones (``devtools/services.py``). They never read,
write or flush what a running stack (``make up``) uses, on the same servers:

- PostgreSQL: a dedicated database beside the URL's, ``SLA_TEST_DATABASE``
  (default ``sla_test``), created (and recreated) and migrated with alembic;
- Redis: a database of their own on the URL's server, ``SLA_TEST_REDIS_DB``
  (default 15), flushed between tests; concurrent runs set different ones;
- Dramatiq: a queue of their own, ``SLA_QUEUE=sla-test``, so a running stack's
  worker never consumes the tests' wake-ups even on a shared database.

The rest of ``.env`` never reaches them (``SLA_ENV_FILE`` and
``FLASK_SKIP_DOTENV`` are set for the run and its processes). The test database also
carries the insert-attempt log (``tests/support/attempt_log.py``), emptied
with the tables before each test.

This file keeps what every tier needs: options, markers, time limits and the
service resolution. The fixtures shared by the service tiers live in
tests/support/database.py (registered below as a plugin), each tier's own in
its conftest.py, and helpers in tests/support/.

Tiers: ``tests/unit`` (no I/O: ``pytest tests/unit`` starts and connects to
nothing, tests/unit/test_unit_tier.py checks it), ``tests/integration``
(PostgreSQL + Redis, in-process), ``tests/acceptance`` (real worker and
scheduler processes). Each test has a time limit (pytest-timeout).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent

# The service tiers' fixtures (database, engine, settings, tenant, other_tenant).
pytest_plugins = ("tests.support.database",)


# The tests' own Redis database and queue, beside a running stack's (db 0, queue sla).
TEST_REDIS_DB = "15"
TEST_QUEUE = "sla-test"


def _embedded_services() -> dict[str, str]:
    """The URLs every entry point sees (environment, else .env), starting the
    embedded servers for the missing ones (devtools/services.py)."""
    out = subprocess.run(
        [sys.executable, "-m", "devtools.services", "env"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = {}
    for line in out.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            found[name] = shlex.split(value)[0]
    return found


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true", help="also run long chaos and fuzz tests")


def _needs_services(path: Path) -> bool:
    """Whether collecting ``path`` needs the services: anything but the unit tier
    and the directories above it."""
    unit = ROOT / "tests" / "unit"
    return not (path.is_relative_to(unit) or unit.is_relative_to(path))


def _resolve_services() -> None:
    """Point the environment at the services and the test database, once."""
    if os.environ.get("SLA_TEST_SERVER_URL"):
        return
    if os.environ.get("SLA_TEST_NO_SERVICES"):
        raise RuntimeError("SLA_TEST_NO_SERVICES is set, yet a test needs the services")
    if not (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")):
        os.environ.update(_embedded_services())
    server = make_url(os.environ["DATABASE_URL"].replace("postgres://", "postgresql://", 1)).set(
        drivername="postgresql"
    )
    test_db = os.environ.get("SLA_TEST_DATABASE", "sla_test")
    os.environ["SLA_TEST_SERVER_URL"] = server.render_as_string(hide_password=False)
    os.environ["DATABASE_URL"] = server.set(database=test_db).render_as_string(hide_password=False)
    os.environ["REDIS_URL"] = _test_redis_url(os.environ["REDIS_URL"])
    os.environ["SLA_QUEUE"] = TEST_QUEUE


def _test_redis_url(url: str) -> str:
    """``url``'s server, the tests' own database: ``SLA_TEST_REDIS_DB``, default 15."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.scheme == "unix":  # the database is a query parameter there
        query = [q for q in parts.query.split("&") if q and not q.startswith("db=")]
        query.append(f"db={os.environ.get('SLA_TEST_REDIS_DB', TEST_REDIS_DB)}")
        return urlunsplit(parts._replace(query="&".join(query)))
    return urlunsplit(parts._replace(path=f"/{os.environ.get('SLA_TEST_REDIS_DB', TEST_REDIS_DB)}"))


def _args_need_services(args: list[str]) -> bool:
    """Whether the command line names anything outside tests/unit (no path: the
    whole suite). Options and their values are not existing paths."""
    paths = [Path(a.split("::")[0]) for a in args if not a.startswith("-")]
    paths = [p.resolve() for p in paths if p.exists()]
    return not paths or any(_needs_services(p) for p in paths)


# A developer's .env (make up's URLs, any SLA_* they keep there) never reaches the
# tests: their settings, the Flask CLI and the processes they start read only the
# environment set here. The URLs in .env are still found (_embedded_services).
os.environ["SLA_ENV_FILE"] = ""
os.environ["FLASK_SKIP_DOTENV"] = "1"

# Now, before any other conftest is imported: importing the service's modules
# builds a broker and caches the settings, which must already name the test
# database. With both URLs given this is only environment, no I/O; the embedded
# services are started only when the run goes beyond tests/unit (here, or at
# the latest when such a test is collected), so ``pytest tests/unit`` starts
# and connects to nothing.
if (os.environ.get("DATABASE_URL") and os.environ.get("REDIS_URL")) or _args_need_services(
    sys.argv[1:]
):
    _resolve_services()


def pytest_configure(config: pytest.Config) -> None:
    # Quick retries and small batches, so failure paths and batching show in small tests.
    os.environ.setdefault("SLA_BACKOFF_BASE_SECONDS", "1")
    os.environ.setdefault("SLA_BACKOFF_MAX_SECONDS", "4")


def pytest_collectstart(collector: pytest.Collector) -> None:
    path = getattr(collector, "path", None)
    if path is not None and _needs_services(Path(path)):
        _resolve_services()


# pytest-timeout's limit for slow-marked tests (the default, 120 s, is in pyproject.toml).
SLOW_TIMEOUT_S = 1200


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--slow")
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" not in item.keywords:
            continue
        if not run_slow:
            item.add_marker(skip)
        elif item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


@pytest.fixture(scope="session")
def services() -> None:
    """The services, resolved: ``DATABASE_URL`` names the test database. The
    service tiers' fixtures (tests/support/database.py) start from this."""
    _resolve_services()
