"""Tenant isolation in depth: row-level security under the API's role, every
tenant route tried with another tenant's ids, and the maintenance role as the
only path that sees all tenants."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from models import keys as api_keys
from models import tenants as tenant_sql
from models.db import make_engine, tenant_scope
from models.sla import utcnow
from tasks.firing import fire_due
from tests.support.api import Api, assert_problem

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
            tenant_sql.create_api_key(conn, other_tenant[0])
    with pytest.raises(ProgrammingError, match="permission denied"):  # noqa: SIM117
        with tenant_scope(app_engine, tenant[0]) as conn:
            conn.execute(text("DELETE FROM sla_timers"))


def test_the_api_role_cannot_move_its_rows_to_another_tenant(
    app, two_tenants_with_history, tenant, other_tenant, engine
):
    mine, _ = two_tenants_with_history
    app_engine = app.extensions["sla"].engine
    moves = {
        "sla_timers": "id = :id",
        "sla_escalation_events": "timer_id = :id",
        "api_keys": "true",
    }
    for table, where in moves.items():
        with pytest.raises(ProgrammingError, match="row-level security"):  # noqa: SIM117
            with tenant_scope(app_engine, tenant[0]) as conn:
                conn.execute(
                    text(f"UPDATE {table} SET tenant_id = :b WHERE {where}"),
                    {"b": other_tenant[0], "id": mine["id"]},
                )
    with engine.connect() as conn:
        for table in moves:
            owners = conn.execute(text(f"SELECT DISTINCT tenant_id FROM {table}")).scalars()
            assert set(owners) == {tenant[0], other_tenant[0]}, table


_INSERT_FOR = {
    "sla_timers": """
        INSERT INTO sla_timers (id, tenant_id, lead_id, sla_contract_id, started_at, due_at,
                                window_seconds, correlation_id, escalation_steps, next_fire_at)
        VALUES (gen_random_uuid(), :t, 'intruder', 'default', now(), now(), 60, 'c',
                '[]'::jsonb, now())
    """,
    "sla_escalation_events": """
        INSERT INTO sla_escalation_events (tenant_id, lead_id, timer_id, escalation_step,
            executed_at, outcome, escalation_config, correlation_id, idempotency_key)
        VALUES (:t, 'intruder', :timer, 99, now(), 'SUCCESS', '{}'::jsonb, 'c', 'intruder')
    """,
    "outbox_events": """
        INSERT INTO outbox_events (tenant_id, timer_id, event_type, payload, correlation_id,
                                   idempotency_key)
        VALUES (:t, :timer, 'sla.timer.started', '{}'::jsonb, 'c', 'intruder')
    """,
}


@pytest.mark.parametrize("table", sorted(_INSERT_FOR))
def test_the_api_role_cannot_insert_for_another_tenant(
    app, two_tenants_with_history, tenant, other_tenant, engine, table
):
    _, theirs = two_tenants_with_history
    app_engine = app.extensions["sla"].engine
    params = {"t": other_tenant[0], "timer": theirs["id"]}
    with pytest.raises(ProgrammingError, match="row-level security"):  # noqa: SIM117
        with tenant_scope(app_engine, tenant[0]) as conn:
            conn.execute(text(_INSERT_FOR[table]), params)
    # The same statement for its own tenant is allowed: the policy refused, nothing else.
    mine = {"t": tenant[0], "timer": two_tenants_with_history[0]["id"]}
    with tenant_scope(app_engine, tenant[0]) as conn:
        assert conn.execute(text(_INSERT_FOR[table]), mine).rowcount == 1


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_the_api_role_cannot_truncate(app, two_tenants_with_history, tenant, engine, table):
    with pytest.raises(ProgrammingError, match="permission denied"):  # noqa: SIM117
        with tenant_scope(app.extensions["sla"].engine, tenant[0]) as conn:
            conn.execute(text(f"TRUNCATE {table} CASCADE"))
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() > 0


def test_a_key_prefix_opens_that_one_key_row_and_nothing_else(
    app, two_tenants_with_history, tenant, other_tenant, engine
):
    with engine.begin() as conn:  # more keys, of both tenants, that must stay hidden
        tenant_sql.create_api_key(conn, tenant[0])
        tenant_sql.create_api_key(conn, other_tenant[0])
    prefix = api_keys.key_prefix(tenant[1])
    app_engine = app.extensions["sla"].engine
    with app_engine.begin() as conn:
        conn.execute(text("SELECT set_config('app.api_key_prefix', :p, true)"), {"p": prefix})
        keys = conn.execute(text("SELECT tenant_id, prefix FROM api_keys")).all()
        assert keys == [(tenant[0], prefix)]
        counts = _counts(conn)
        assert {t: c for t, c in counts.items() if t != "api_keys"} == {
            t: {} for t in TENANT_TABLES if t != "api_keys"
        }
        # Reading is all the prefix allows: the row cannot be changed through it.
        revoked = conn.execute(
            text("UPDATE api_keys SET revoked_at = now(), key_hash = 'x' WHERE prefix = :p"),
            {"p": prefix},
        )
        assert revoked.rowcount == 0
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT revoked_at, key_hash <> 'x' FROM api_keys WHERE prefix = :p"),
            {"p": prefix},
        ).one()
    assert tuple(row) == (None, True)


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


def _rows_of(engine, tenant_id) -> dict[str, list]:
    """Every row a tenant owns, every column, per table: what another tenant's
    requests must leave exactly as it was."""
    out = {}
    with engine.connect() as conn:
        for table in TENANT_TABLES:
            column = _tenant_column(table)
            out[table] = [
                tuple(r)
                for r in conn.execute(
                    text(f"SELECT * FROM {table} WHERE {column} = :t ORDER BY id"),
                    {"t": tenant_id},
                ).all()
            ]
    return out


def _their_webhook(engine, tenant_id) -> tuple[str, str]:
    """(subscription id, delivery id) of a webhook of the tenant, with one delivery."""
    from models import webhooks as webhook_sql

    with engine.begin() as conn:
        sub = webhook_sql.create_subscription(
            conn,
            tenant_id,
            url="http://93.184.215.14/theirs",
            event_types=None,
            description=None,
            secret="whsec_theirs",
        )
        delivery = conn.execute(
            text(
                "INSERT INTO webhook_deliveries (tenant_id, subscription_id, event_id) "
                "SELECT tenant_id, :s, id FROM outbox_events WHERE tenant_id = :t "
                "ORDER BY id LIMIT 1 RETURNING id"
            ),
            {"s": sub["id"], "t": tenant_id},
        ).scalar_one()
    return str(sub["id"]), str(delivery)


def _webhook_rows(engine, tenant_id) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for table in ("webhook_subscriptions", "webhook_deliveries")
            for r in conn.execute(
                text(f"SELECT * FROM {table} WHERE tenant_id = :t ORDER BY id"), {"t": tenant_id}
            )
        ]


# Valid bodies, so that a request reaches the lookup of the id (or creates the
# caller's own object) rather than stopping at validation.
_BODIES = {
    ("POST", "/v1/timers"): {"lead_id": "own-lead", "window_seconds": 60},
    ("POST", "/v1/timers/bulk"): {"timers": [{"lead_id": "own-bulk", "window_seconds": 60}]},
    ("POST", "/v1/webhooks"): {"url": "http://93.184.215.14/own"},  # a public address
    ("PATCH", "/v1/webhooks/<uuid:webhook_id>"): {"description": "taken over"},
    ("POST", "/v1/webhooks/<uuid:webhook_id>/replay"): {"since": "2020-01-01T00:00:00Z"},
    # The other tenant's lead name: a contact of this tenant's own lead-b.
    ("POST", "/v1/lead-events"): {
        "event_id": "contact-b",
        "type": "lead.contacted",
        "lead_id": "lead-b",
    },
    ("POST", "/v1/lead-events/bulk"): {
        "events": [{"event_id": "close-b", "type": "lead.closed", "lead_id": "lead-b"}]
    },
    # The other tenant's ids, as this tenant's own new calendar and contract.
    ("PUT", "/v1/calendars/<calendar_id>"): {
        "timezone": "Europe/Berlin",
        "weekly_hours": {"mon": [["09:00", "17:00"]]},
    },
    ("PUT", "/v1/contracts/<contract_id>"): {
        "name": "mine",
        "window_seconds": 60,
        "escalation_steps": [{"step": 1, "after_seconds": 0, "action": "notify"}],
    },
}
_THEIR_POLICY = ("/v1/calendars/their-cal", "/v1/contracts/their-contract")
_THEIR_CALENDAR = {"timezone": "Asia/Tokyo", "weekly_hours": {"sun": [["01:00", "02:00"]]}}
_THEIR_CONTRACT = {
    "name": "theirs",
    "window_seconds": 999,
    "calendar_id": "their-cal",
    "escalation_steps": [{"step": 1, "after_seconds": 0, "action": "notify"}],
}


def test_every_tenant_route_treats_another_tenants_ids_as_unknown(
    app, api, other_api, engine, other_tenant, two_tenants_with_history
):
    _, theirs = two_tenants_with_history
    assert other_api.put("/v1/calendars/their-cal", _THEIR_CALENDAR).status_code == 201
    assert other_api.put("/v1/contracts/their-contract", _THEIR_CONTRACT).status_code == 201
    their_policy = [other_api.get(p).get_json() for p in _THEIR_POLICY]
    # PUTs last: they create this tenant's own calendar and contract of those ids.
    routes = sorted(_tenant_routes(app), key=lambda route: route[0] == "PUT")
    assert len(routes) >= 8
    their_hook, their_delivery = _their_webhook(engine, other_tenant[0])
    before = _rows_of(engine, other_tenant[0])
    assert all(before[table] for table in TENANT_TABLES)  # something to compare
    hooks_before = _webhook_rows(engine, other_tenant[0])

    values = {
        "<uuid:timer_id>": theirs["id"],
        "<path:lead_id>": "lead-b",
        "<uuid:webhook_id>": their_hook,
        "<int:delivery_id>": their_delivery,
        "<calendar_id>": "their-cal",
        "<contract_id>": "their-contract",
    }
    for method, rule in routes:
        path = rule
        for name, value in values.items():
            path = path.replace(name, value)
        assert "<" not in path, f"no value for a parameter of {rule}"
        if rule == "/v1/stats":  # every instant PostgreSQL keeps
            path += "?from=0001-01-01T00:00:00Z&to=9999-12-31T00:00:00Z"
        body = _BODIES.get((method, rule))
        response = api.client.open(path, method=method, json=body, headers=api._headers(None, None))
        if method == "PUT":  # this tenant's own calendar or contract, by the same id
            assert response.status_code == 201, (rule, response.get_json())
        elif any(
            name in rule
            for name in ("<uuid:timer_id>", "<uuid:webhook_id>", "<calendar_id>", "<contract_id>")
        ):
            assert_problem(response, 404)
        elif "<path:lead_id>" in rule:
            # Leads are the tenant's own names: the other tenant's "lead-b" is
            # just a lead this tenant has no open timers for.
            assert response.get_json() == {"items": []}, rule
        elif rule in ("/v1/calendars", "/v1/contracts"):
            assert response.get_json()["items"] == [], rule
        elif rule == "/v1/stats":
            with engine.connect() as conn:
                own = conn.execute(
                    text("SELECT count(*) FROM sla_timers WHERE tenant_id <> :other"),
                    {"other": other_tenant[0]},
                ).scalar_one()
            assert response.get_json()["started"] == own, rule
        elif method == "GET":
            ids = {t["id"] for t in response.get_json()["items"]}
            assert not {theirs["id"], their_hook} & ids, rule
        elif rule.startswith("/v1/lead-events"):
            # Taken as this tenant's event, about this tenant's lead-b (if any).
            assert response.status_code == 200, (rule, response.get_json())
        else:  # a start: it creates this tenant's own timer, never touches theirs
            assert response.status_code == 201, (rule, response.get_json())

    assert _rows_of(engine, other_tenant[0]) == before
    assert _webhook_rows(engine, other_tenant[0]) == hooks_before
    assert [other_api.get(p).get_json() for p in _THEIR_POLICY] == their_policy


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
    client = Api(app.test_client(), tenant[1])
    client.start(lead_id="first")
    with app.extensions["sla"].engine.connect() as conn:  # the one pooled connection
        conn.exec_driver_sql("DEALLOCATE ALL")
    client.start(lead_id="second")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM sla_timers")).scalar() == 2


def test_every_table_with_a_tenant_has_forced_row_level_security_and_both_policies(app):
    """Found from the schema, so a new tenant table is covered without editing this test."""
    from models.schema import metadata

    tables = sorted(
        name
        for name, table in metadata.tables.items()
        if "tenant_id" in table.c or name == "tenants"
    )
    assert {"webhook_subscriptions", "webhook_deliveries", "lead_events"} <= set(tables)
    with app.extensions["sla"].engine.connect() as conn:
        found = {
            name: (enabled, forced)
            for name, enabled, forced in conn.execute(
                text(
                    "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class "
                    "WHERE relname = ANY(:names) AND relkind = 'r'"
                ),
                {"names": tables},
            )
        }
        policies = {
            (table, policy)
            for table, policy in conn.execute(
                text("SELECT tablename, policyname FROM pg_policies WHERE tablename = ANY(:n)"),
                {"n": tables},
            )
        }
    for name in tables:
        assert found[name] == (True, True), name
        assert {(name, "tenant_isolation"), (name, "maintenance")} <= policies, name


def test_webhook_rows_of_another_tenant_are_invisible_to_the_api_role(
    app, engine, tenant, other_tenant
):
    """The fan-out trigger runs as the writer: a start by one tenant reaches only its own
    subscriptions, and its deliveries are invisible to the other tenant."""
    from models.signatures import new_secret

    with engine.begin() as conn:
        for tenant_id in (tenant[0], other_tenant[0]):
            conn.execute(
                text(
                    "INSERT INTO webhook_subscriptions (tenant_id, url, secret) "
                    "VALUES (:t, 'http://127.0.0.1:9/hook', :s)"
                ),
                {"t": tenant_id, "s": new_secret()},
            )
    Api(app.test_client(), tenant[1]).start(lead_id="isolated", window_seconds=60)
    with engine.connect() as conn:  # the maintenance role sees everything
        by_tenant = dict(
            conn.execute(
                text("SELECT tenant_id, count(*) FROM webhook_deliveries GROUP BY 1")
            ).all()
        )
    assert by_tenant == {tenant[0]: 1}
    with tenant_scope(app.extensions["sla"].engine, other_tenant[0]) as conn:
        for table in ("webhook_subscriptions", "webhook_deliveries", "outbox_events"):
            rows = conn.execute(text(f"SELECT tenant_id FROM {table}")).scalars().all()
            assert set(rows) <= {other_tenant[0]}, table
        assert conn.execute(text("SELECT count(*) FROM webhook_deliveries")).scalar() == 0
