"""The command-line entry points fail in one line naming the cause and the fix,
with a non-zero exit status, never a traceback: ``flask --app web tenants ...``
against a closed port, a missing database and an unmigrated one, and
``alembic upgrade head`` against a closed port. Real processes, as a user runs them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pytest
from sqlalchemy import text
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


# ---------------------------------------------------------------- the commands
# In process (app.test_cli_runner): the same click commands, without a
# process start per call.


def _cli(app, *args: str):
    return app.test_cli_runner().invoke(args=list(args))


def _ok(result) -> str:
    assert result.exit_code == 0, (result.output, result.stderr, result.exception)
    return result.stdout


def _failed(result) -> str:
    assert result.exit_code != 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_tenants_list_shows_every_tenant_as_a_table_and_as_json(app, tenant, other_tenant):
    listed = json.loads(_ok(_cli(app, "tenants", "list", "--json")))
    assert [(t["id"], t["name"], t["active_keys"]) for t in listed] == [
        (str(tenant[0]), "acme", 1),
        (str(other_tenant[0]), "globex", 1),
    ]
    table = _ok(_cli(app, "tenants", "list")).splitlines()
    assert table[0].split() == ["ID", "NAME", "CREATED_AT", "DISABLED_AT", "ACTIVE_KEYS", "KEYS"]
    assert str(other_tenant[0]) in table[2]


def test_a_disabled_tenants_keys_answer_403_at_once_and_enabling_restores_them(
    app, api, tenant, other_api
):
    assert api.get("/v1/timers").status_code == 200  # the key is cached now
    assert _ok(_cli(app, "tenants", "disable", str(tenant[0]))).startswith("disabled ")
    refused = api.get("/v1/timers")
    assert refused.status_code == 403, refused.get_data(as_text=True)
    assert "disabled" in refused.get_json()["detail"]
    assert other_api.get("/v1/timers").status_code == 200  # another tenant is untouched
    listed = json.loads(_ok(_cli(app, "tenants", "list", "--json")))
    assert listed[0]["disabled_at"] is not None
    _ok(_cli(app, "tenants", "enable", str(tenant[0])))
    assert api.get("/v1/timers").status_code == 200


def test_disabling_an_unknown_tenant_fails_in_one_line(app, engine):
    line = _failed(_cli(app, "tenants", "disable", str(uuid4())))
    assert line.startswith("Error: no tenant ")


def test_keys_create_list_and_revoke(app, api, tenant):
    out = _ok(_cli(app, "keys", "create", str(tenant[0])))
    key = out.split("api_key=")[1].strip()
    assert api.get("/v1/timers", key=key).status_code == 200
    keys = json.loads(_ok(_cli(app, "keys", "list", str(tenant[0]), "--json")))
    assert len(keys) == 2 and all(k["revoked_at"] is None for k in keys)
    prefix = key.split("_")[1]
    assert _ok(_cli(app, "keys", "revoke", str(tenant[0]), prefix)).startswith(f"revoked {prefix}")
    assert api.get("/v1/timers", key=key).status_code == 401
    assert api.get("/v1/timers").status_code == 200  # the first key still works
    line = _failed(_cli(app, "keys", "revoke", str(tenant[0]), "000000000000"))
    assert "has no API key 000000000000" in line
    assert "no tenant" in _failed(_cli(app, "keys", "list", str(uuid4())))


def test_timers_show_retry_and_sweep(app, api, engine):
    from tests.support.factories import overdue

    timer = api.start(lead_id="lead-cli", window_seconds=60, started_at=overdue().isoformat())
    shown = json.loads(_ok(_cli(app, "timers", "show", timer["id"], "--json")))
    assert (shown["id"], shown["lead_id"], shown["status"]) == (timer["id"], "lead-cli", "ACTIVE")
    assert "lead_id:           lead-cli" in _ok(_cli(app, "timers", "show", timer["id"]))

    swept = json.loads(_ok(_cli(app, "timers", "sweep", "--json")))
    assert swept["claimed"] == 1
    assert api.get(f"/v1/timers/{timer['id']}").get_json()["status"] != "ACTIVE"

    with engine.begin() as conn:  # dead-letter it, as the firing path does after its attempts
        conn.execute(
            text(
                "UPDATE sla_timers SET processing_status = 'FAILED', status = 'DUE' WHERE id = :i"
            ),
            {"i": timer["id"]},
        )
    assert _ok(_cli(app, "timers", "retry", timer["id"])).startswith(f"retried {timer['id']}")
    assert "retried already" in _ok(_cli(app, "timers", "retry", timer["id"]))
    assert _failed(_cli(app, "timers", "show", str(uuid4()))).startswith("Error: no timer ")


def test_events_replay_arms_deliveries_of_the_window(app, api, engine, tenant):
    from models import webhooks as webhook_sql

    with engine.begin() as conn:
        webhook = webhook_sql.create_subscription(
            conn, tenant[0], url="http://127.0.0.1:9/hook", event_types=None,
            description=None, secret="whsec_dGVzdA==",
        )  # fmt: skip
    webhook = {"id": str(webhook["id"])}
    api.start(lead_id="lead-replay", window_seconds=600)
    out = _ok(
        _cli(app, "events", "replay", "--tenant", str(tenant[0]), "--webhook", webhook["id"],
             "--since", "2000-01-01T00:00:00")
    )  # fmt: skip
    assert out.strip() == f"replayed 1 events to webhook {webhook['id']}"
    line = _failed(
        _cli(app, "events", "replay", "--tenant", str(tenant[0]), "--webhook", str(uuid4()),
             "--since", "2000-01-01")
    )  # fmt: skip
    assert "has no webhook" in line


def test_db_check_passes_on_a_migrated_database_and_names_a_missing_index(app, engine):
    assert _ok(_cli(app, "db", "check")).startswith("database ok")
    assert json.loads(_ok(_cli(app, "db", "check", "--json"))) == {"ok": True, "problems": []}
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE NONE")
        conn.exec_driver_sql("ALTER INDEX ix_sla_timers_tenant_started RENAME TO ix_gone")
    try:
        line = _failed(_cli(app, "db", "check"))
        assert line == "Error: index of sla_timers ix_sla_timers_tenant_started is missing"
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL ROLE NONE")
            conn.exec_driver_sql("ALTER INDEX ix_gone RENAME TO ix_sla_timers_tenant_started")


def test_db_check_names_an_unmigrated_schema(unmigrated):
    line = _one_line_error(_run([str(BIN / "flask"), "--app", "web", "db", "check"], unmigrated))
    assert "schema not migrated" in line or "schema behind" in line
