"""The embedded PostgreSQL (devtools/services.py) starts wherever the project was
cloned. As root it runs as ``nobody``, which cannot traverse a private directory
(root's home, mode 700): then its binaries and data live in a per-project
directory ``nobody`` can reach, and no permission of the user's directories
changes."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path

import psycopg
import pytest

from devtools import services

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as nobody only as root")


@pytest.fixture
def public_tmp():
    """A directory nobody can reach (pytest's own tmp_path lies under a 0700 one)."""
    path = Path(tempfile.mkdtemp(prefix="sla-test-embedded-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nobody_cannot_traverse_a_private_directory(public_tmp):
    private = public_tmp / "home"
    private.mkdir()
    private.chmod(0o700)
    assert not services.reachable_by(private / "clone" / ".data" / "pg", "nobody")
    private.chmod(0o755)
    assert services.reachable_by(private / "clone" / ".data" / "pg", "nobody")


def test_the_embedded_postgresql_starts_from_a_clone_in_a_private_directory(
    public_tmp, monkeypatch
):
    home = public_tmp / "root-home"
    home.mkdir()
    home.chmod(0o700)  # as root's home in most containers
    clone = home / "sla-timers"
    # The clone's virtualenv holds pgserver's binaries, out of nobody's reach too.
    installed = clone / ".venv" / "pgserver"
    shutil.copytree(services.package_dir("pgserver") / "pginstall", installed / "pginstall")
    shutil.copytree(
        services.package_dir("pgserver").parent / "pgserver.libs", clone / ".venv" / "pgserver.libs"
    )
    monkeypatch.setattr(services, "package_dir", lambda name: installed)
    runtime = public_tmp / "var-tmp" / "sla-timers-clone"
    monkeypatch.setattr(services, "runtime_dir", lambda root=None: runtime)

    data = services.pg_data_dir("pg", root=clone)
    assert data == runtime / "pg"
    url = services.start_pg(data, _free_port())
    try:
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert services.pg_bin("postgres").startswith(str(runtime))
    finally:
        services.stop_pg(data, "immediate")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700  # left as it was
