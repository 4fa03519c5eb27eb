"""/readyz: ready means PostgreSQL answers and its schema is at this code's head.

- Redis down: 200 with ``"redis": "degraded"`` (starts succeed without it, so
  a Redis outage must not take every web process out of rotation);
- PostgreSQL down: 503;
- schema behind the code (an older revision, or one the web role cannot even
  read, as before 0004): 503 naming both revisions; a revision this code does
  not know (a newer release migrated the database): 200 ``ahead``.

The schema cases use a throw-away database beside the test database.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import psycopg
import pytest
from sqlalchemy.engine import make_url

from models.config import normalize_database_url
from tests.support.api import assert_problem
from tests.support.common import ROOT
from web import create_app
from web.health import PROBE_TIMEOUT_MS, SchemaHeads, migration_state, schema_heads

HEAD = ",".join(sorted(schema_heads().heads))


def _server():
    return psycopg.connect(os.environ["SLA_TEST_SERVER_URL"], autocommit=True)


@pytest.fixture(scope="module")
def spare_database():
    """A migrated throw-away database; yields (its URL, a psycopg connection to it as owner)."""
    name = f"{make_url(os.environ['DATABASE_URL']).database}_readiness"
    with _server() as server:
        server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.execute(f'CREATE DATABASE "{name}"')
    url = make_url(os.environ["DATABASE_URL"]).set(database=name)
    url_text = url.render_as_string(hide_password=False)
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        env={**os.environ, "DATABASE_URL": url_text},
    )
    with psycopg.connect(url_text, autocommit=True) as owner:
        yield url_text, owner
    with _server() as server:
        server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def stamped(spare_database, settings):
    """stamp(revision): an app on the spare database whose alembic_version holds
    ``revision`` (None: no row, as after a first release that failed)."""
    url, owner = spare_database
    made = []

    def stamp(revision: str | None):
        owner.execute("DELETE FROM alembic_version")
        if revision is not None:
            owner.execute("INSERT INTO alembic_version VALUES (%s)", (revision,))
        app = create_app(dataclasses.replace(settings, database_url=normalize_database_url(url)))
        made.append(app)
        return app

    yield stamp
    owner.execute("DELETE FROM alembic_version")
    owner.execute("INSERT INTO alembic_version VALUES (%s)", (HEAD,))
    for app in made:
        app.extensions["sla"].engine.dispose()


def test_readyz_with_redis_down_is_200_degraded(engine, settings):
    app = create_app(dataclasses.replace(settings, redis_url="redis://127.0.0.1:1/0"))
    t0 = time.monotonic()
    ready = app.test_client().get("/readyz")
    elapsed = time.monotonic() - t0
    assert ready.status_code == 200, ready.get_json()
    assert ready.get_json() == {
        "database": "ok",
        "migrations": "ok",
        "revision": HEAD,
        "redis": "degraded",
    }
    assert elapsed < PROBE_TIMEOUT_MS / 1000


def test_readyz_with_the_database_down_is_503(engine, settings):
    down = dataclasses.replace(
        settings,
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        db_connect_timeout_seconds=1,
    )
    ready = create_app(down).test_client().get("/readyz")
    body = assert_problem(ready, 503)
    assert (body["database"], body["migrations"], body["redis"]) == ("down", "unknown", "ok")
    assert body["detail"] == "not ready: database down"
    assert int(ready.headers["Retry-After"]) > 0


def test_readyz_with_the_schema_behind_head_is_503_naming_it(stamped):
    older = "0003"
    assert older != HEAD
    ready = stamped(older).test_client().get("/readyz")
    body = assert_problem(ready, 503)
    assert (body["database"], body["migrations"], body["revision"]) == ("ok", "behind", older)
    assert body["detail"] == (
        f"not ready: schema at {older}, this code needs {HEAD}: run alembic upgrade head"
    )


def test_readyz_with_an_unmigrated_database_is_503(stamped):
    body = assert_problem(stamped(None).test_client().get("/readyz"), 503)
    assert (body["database"], body["migrations"], body["revision"]) == ("ok", "behind", None)
    assert "run alembic upgrade head" in body["detail"]


def test_readyz_with_a_schema_this_code_does_not_know_is_ready(stamped):
    ready = stamped("9999_from_a_newer_release").test_client().get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    assert ready.get_json()["migrations"] == "ahead"


def test_migration_state():
    code = SchemaHeads(frozenset({"0004"}), frozenset({"0001", "0002", "0003", "0004"}))
    assert migration_state({"0004"}, code) == "ok"
    assert migration_state({"0003"}, code) == "behind"
    assert migration_state(set(), code) == "behind"
    assert migration_state({"0005"}, code) == "ahead"
