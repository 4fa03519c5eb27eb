"""Tenant isolation in depth: row-level security under the API's role, every
tenant route tried with another tenant's ids, and the maintenance role as the
only path that sees all tenants."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from models import repository as repo
from models.db import make_engine, tenant_scope
from models.sla import utcnow
from tasks.firing import fire_due

from . import api_support
from .api_support import assert_problem

app, api, other_api = api_support.app, api_support.api, api_support.other_api

TENANT_TABLES = ("tenants", "api_keys", "sla_timers", "sla_escalation_events", "outbox_events")


def _tenant_column(table: str) -> str:
    return "id" if table == "tenants" else "tenant_id"


@pytest.fixture
def two_tenants_with_history(api, other_api, engine, settings):
    """Both tenants own a fired timer with a step row and outbox events."""
    mine = api.start(lead_id="lead-a", window_seconds=60)
    theirs = other_api.start(lead_id="lead-b", window_seconds=60)
    fire_due(engine, settings, now=lambda: utcnow() + timedelta(minutes=2))
    return mine, theirs


def _counts(conn) -> dict[str, dict[str, int]]:
    out = {}
    for table in TENANT_TABLES:
        column = _tenant_column(table)
        rows = conn.execute(text(f"SELECT {column}, count(*) FROM {table} GROUP BY 1")).all()
        out[table] = {str(tenant): n for tenant, n in rows}
    return out


def test_an_unfiltered_query_under_tenant_a_sees_only_a(
    app, two_tenants_with_history, tenant, other_tenant, engine
):
    with engine.connect() as conn:  # the maintenance role sees both tenants
        everything = _counts(conn)
    for table in TENANT_TABLES:
        assert set(everything[table]) == {str(tenant[0]), str(other_tenant[0])}, table

    app_engine = app.extensions["sla"].engine
    with tenant_scope(app_engine, tenant[0]) as conn:
        scoped = _counts(conn)
    for table in TENANT_TABLES:
        assert scoped[table] == {str(tenant[0]): everything[table][str(tenant[0])]}, table

    # Outside any tenant scope the API's role sees nothing at all, and a
    # pooled connection does not remember the last tenant.
    with app_engine.connect() as conn:
        assert _counts(conn) == {table: {} for table in TENANT_TABLES}


def test_the_api_role_cannot_write_into_another_tenant(
    app, two_tenants_with_history, tenant, other_tenant
):
    _, theirs = two_tenants_with_history
    app_engine = app.extensions["sla"].engine
    with tenant_scope(app_engine, tenant[0]) as conn:
        updated = conn.execute(
            text("UPDATE sla_timers SET status = 'CANCELLED' WHERE id = :id"), {"id": theirs["id"]}
        )
        assert updated.rowcount == 0
    with pytest.raises(ProgrammingError, match="row-level security"):  # noqa: SIM117
        with tenant_scope(app_engine, tenant[0]) as conn:
            conn.execute(
                text("INSERT INTO tenants (name) VALUES ('intruder') RETURNING id"),
            )
    with pytest.raises(ProgrammingError, match="row-level security"):  # noqa: SIM117
        with tenant_scope(app_engine, tenant[0]) as conn:
            repo.create_api_key(conn, other_tenant[0])
    with pytest.raises(ProgrammingError, match="permission denied"):  # noqa: SIM117
        with tenant_scope(app_engine, tenant[0]) as conn:
            conn.execute(text("DELETE FROM sla_timers"))


def test_the_api_role_is_not_the_owner_and_cannot_bypass(app, engine):
    with app.extensions["sla"].engine.connect() as conn:
        role = conn.execute(
            text(
                "SELECT current_user, rolsuper, rolbypassrls FROM pg_roles "
                "WHERE rolname = current_user"
            )
        ).one()
        assert tuple(role) == ("sla_app", False, False)
        tables = conn.execute(
            text(
                "SELECT relname, pg_get_userbyid(relowner) AS owner, relrowsecurity, "
                "relforcerowsecurity FROM pg_class WHERE relname = ANY(:names)"
            ),
            {"names": list(TENANT_TABLES)},
        ).all()
    assert len(tables) == len(TENANT_TABLES)
    for name, owner, enabled, forced in tables:
        assert owner != "sla_app" and enabled and forced, name


def test_workers_act_as_the_maintenance_role_and_see_all_tenants(settings):
    from models.db import get_maintenance_engine

    with get_maintenance_engine().connect() as conn:
        assert conn.execute(text("SELECT current_user")).scalar() == "sla_maintenance"


def test_the_sweeper_fires_every_tenants_timers(api, other_api, engine):
    from tasks.sweeper import sweep_once

    past = (utcnow() - timedelta(minutes=10)).isoformat()
    mine = api.start(lead_id="a", window_seconds=30, started_at=past)
    theirs = other_api.start(lead_id="b", window_seconds=30, started_at=past)
    assert sweep_once().fired.became_due == 2
    assert api.get(f"/v1/timers/{mine['id']}").get_json()["status"] != "ACTIVE"
    assert other_api.get(f"/v1/timers/{theirs['id']}").get_json()["status"] != "ACTIVE"


def _tenant_routes(app) -> list[tuple[str, str]]:
    """(method, rule) of every route a tenant key opens, from the URL map, so a
    new route is covered without editing this test."""
    routes = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        op = getattr(view, "operation", None)
        if op is None or op.auth != "tenant":
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((method, rule.rule))
    return routes


def _timers_of(engine, tenant_id) -> list:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT id, status, updated_at, cancelled_at, completed_at FROM sla_timers "
                "WHERE tenant_id = :t ORDER BY id"
            ),
            {"t": tenant_id},
        ).all()


def test_every_tenant_route_treats_another_tenants_ids_as_unknown(
    app, api, engine, other_tenant, two_tenants_with_history
):
    _, theirs = two_tenants_with_history
    routes = _tenant_routes(app)
    assert len(routes) >= 8
    before = _timers_of(engine, other_tenant[0])

    values = {"<timer_id>": theirs["id"], "<path:lead_id>": "lead-b"}
    for method, rule in routes:
        path = rule
        for name, value in values.items():
            path = path.replace(name, value)
        assert "<" not in path, f"no value for a parameter of {rule}"
        body = None
        if rule == "/v1/timers":
            body = {"lead_id": "own-lead", "window_seconds": 60}
        elif rule == "/v1/timers/bulk":
            body = {"timers": [{"lead_id": "own-bulk", "window_seconds": 60}]}
        response = api.client.open(path, method=method, json=body, headers=api._headers(None, None))
        if "<timer_id>" in rule:
            assert_problem(response, 404)
        elif "<path:lead_id>" in rule:
            # Leads are the tenant's own names: the other tenant's "lead-b" is
            # just a lead this tenant has no open timers for.
            assert response.get_json() == {"items": []}, rule
        elif method == "GET":
            assert theirs["id"] not in {t["id"] for t in response.get_json()["items"]}, rule
        else:  # a start: it creates this tenant's own timer, never touches theirs
            assert response.status_code == 201, (rule, response.get_json())

    assert _timers_of(engine, other_tenant[0]) == before


def test_a_scoped_connection_is_not_reused_with_the_old_tenant(app, tenant, other_tenant):
    engine = make_engine(app.extensions["sla"].settings, role="sla_app", pool_size=1)
    try:
        with tenant_scope(engine, tenant[0]) as conn:
            assert conn.execute(text("SELECT count(*) FROM tenants")).scalar() == 1
        with engine.connect() as conn:  # the same (only) pooled connection
            assert conn.execute(text("SELECT count(*) FROM tenants")).scalar() == 0
        with tenant_scope(engine, other_tenant[0]) as conn:
            assert conn.execute(text("SELECT name FROM tenants")).scalar() == "globex"
    finally:
        engine.dispose()


def test_a_single_start_survives_its_prepared_statement_being_dropped(engine, settings, tenant):
    """The fast path prepares its statement once per connection; a DEALLOCATE
    ALL (psycopg issues one after some failures) costs a re-prepare, not a 500."""
    import dataclasses

    from web import create_app

    app = create_app(dataclasses.replace(settings, db_pool_size=1))
    client = api_support.Api(app.test_client(), tenant[1])
    client.start(lead_id="first")
    with app.extensions["sla"].engine.connect() as conn:  # the one pooled connection
        conn.exec_driver_sql("DEALLOCATE ALL")
    client.start(lead_id="second")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sla_timers")).scalar() == 2
