"""The command-line entry points fail in one line naming the cause and the fix,
with a non-zero exit status, never a traceback: ``flask --app web tenants ...``
against a closed port, a missing database and an unmigrated one, and
``alembic upgrade head`` against a closed port. Real processes, as a user runs them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from devtools.processes import ROOT, create_database, drop_database

BIN = Path(sys.executable).parent


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when we return


def _run(args: list[str], database_url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no warning or log line before it
    return lines[0]


FLASK = [str(BIN / "flask"), "--app", "web", "tenants"]


@pytest.fixture
def unmigrated():
    name = make_url(os.environ["DATABASE_URL"]).database + "_unmigrated"  # one per test run
    url = create_database(os.environ["SLA_TEST_SERVER_URL"], name)
    yield url
    drop_database(url)


def test_the_cli_names_an_unreachable_database_and_the_fix():
    port = _closed_port()
    result = _run([*FLASK, "create", "acme"], f"postgresql://postgres@127.0.0.1:{port}/x")
    line = _one_line_error(result)
    assert f"database unreachable at 127.0.0.1:{port}" in line
    assert line.endswith("start it or set DATABASE_URL")


def test_the_cli_names_a_missing_database():
    server = make_url(os.environ["SLA_TEST_SERVER_URL"])
    url = server.set(database="sla_test_no_such_database").render_as_string(hide_password=False)
    line = _one_line_error(_run([*FLASK, "create", "acme"], url))
    assert 'database "sla_test_no_such_database" does not exist' in line
    assert line.endswith("create it or set DATABASE_URL")


def test_the_cli_names_an_unmigrated_schema_and_the_fix(unmigrated):
    for command in (
        ["create", "acme"],
        ["revoke-key", "3fa85f64-5717-4562-b3fc-2c963f66afa6", "x"],
    ):
        line = _one_line_error(_run([*FLASK, *command], unmigrated))
        assert f'schema not migrated in database "{make_url(unmigrated).database}"' in line
        assert line.endswith("run `alembic upgrade head`")


def test_alembic_names_an_unreachable_database_and_the_fix():
    port = _closed_port()
    result = _run([str(BIN / "alembic"), "upgrade", "head"], f"postgresql://u@127.0.0.1:{port}/x")
    line = _one_line_error(result)
    assert f"database unreachable at 127.0.0.1:{port}" in line
    assert line.endswith("start it or set DATABASE_URL")
