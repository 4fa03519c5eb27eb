"""The acceptance tier's fixtures. The tier runs real worker and scheduler
processes (devtools.processes.Service) against the test database; the shared
fixtures (``engine``, ``tenant``...) are in tests/support/database.py."""

from __future__ import annotations

import pytest


@pytest.fixture
def client(engine, tenant):
    """The API in-process, as ``tenant``, straight to PostgreSQL (an outage test's
    proxies stand only between the processes and the services)."""
    from web import create_app

    c = create_app().test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tenant[1]}"
    return c
