"""The operator's CLI, ``flask --app web <group> <command>``:

- ``tenants create|list|disable|enable`` (and ``revoke-key``, web/admin.py);
- ``keys create|list|revoke``;
- ``timers show ID``, ``timers retry ID``, ``timers sweep``;
- ``events replay``;
- ``db check``.

Commands act as the maintenance role (``SLA_DB_MAINTENANCE_ROLE``), which sees
every tenant: the CLI runs with the service's own credentials, as the workers
do. Listing commands take ``--json``. Every failure ends in one line on stderr
naming the cause and exits non-zero (``CliGroup``, web/admin.py): 1 for a
failure, 2 for a bad argument (click's convention).

A disabled tenant's API keys answer 403 (web/auth.py) within a second in every
web process: disabling and enabling broadcast the tenant's keys as revocations
do, so each process's key cache looks them up again.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

import click
from sqlalchemy.dialects import postgresql

from models import firing as firing_sql
from models import tenants as tenant_sql
from models import timer_reads
from models import webhooks as webhook_sql
from models.db import get_maintenance_engine, tenant_scope
from models.schema import metadata
from models.sql import Queries

from .admin import CliGroup, tenants_cli
from .services import services

SQL = Queries("cli.sql")


def _engine():
    return get_maintenance_engine()


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, default=_plain, indent=2))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Aligned columns, a header line first; nothing but the header when empty."""
    cells = [[_cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if isinstance(value, datetime):
        return _when(value)
    return "-" if value is None else str(value)


def _forget_keys(prefixes: list[str]) -> None:
    """Make every web process look these keys up again (the broadcast of revocations)."""
    cache = services().api_keys
    for prefix in prefixes:
        cache.revoked(prefix)


# ------------------------------------------------------------------ tenants
@tenants_cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_tenants_command(as_json: bool) -> None:
    """List every tenant, oldest first, with its key counts."""
    with _engine().begin() as conn:
        found = tenant_sql.list_tenants(conn)
    if as_json:
        _echo_json(found)
        return
    _table(found, ["id", "name", "created_at", "disabled_at", "active_keys", "keys"])


def _set_disabled(tenant_id: UUID, disabled: bool) -> None:
    with _engine().begin() as conn:
        record = tenant_sql.set_disabled(conn, tenant_id, disabled)
    if record is None:
        raise click.ClickException(f"no tenant {tenant_id}")
    _forget_keys(record["prefixes"])
    if disabled:
        click.echo(f"disabled {tenant_id} at {_when(record['disabled_at'])}")
    else:
        click.echo(f"enabled {tenant_id}")


@tenants_cli.command("disable")
@click.argument("tenant_id", type=click.UUID)
def disable_tenant_command(tenant_id: UUID) -> None:
    """Disable TENANT_ID: its API keys answer 403; its timers keep running."""
    _set_disabled(tenant_id, True)


@tenants_cli.command("enable")
@click.argument("tenant_id", type=click.UUID)
def enable_tenant_command(tenant_id: UUID) -> None:
    """Enable TENANT_ID again."""
    _set_disabled(tenant_id, False)


# --------------------------------------------------------------------- keys
keys_cli = CliGroup("keys", help="Manage a tenant's API keys.")


def _known_tenant(conn, tenant_id: UUID) -> None:
    if not tenant_sql.tenant_exists(conn, tenant_id):
        raise click.ClickException(f"no tenant {tenant_id}")


@keys_cli.command("create")
@click.argument("tenant_id", type=click.UUID)
def create_key_command(tenant_id: UUID) -> None:
    """Issue another API key for TENANT_ID (to rotate keys without downtime)."""
    with tenant_scope(_engine(), tenant_id) as conn:
        _known_tenant(conn, tenant_id)
        key, record = tenant_sql.create_api_key(conn, tenant_id)
    click.echo(f"prefix={record['prefix']}")
    click.echo(f"api_key={key}")
    click.echo("Store the API key now: it cannot be shown again.", err=True)


@keys_cli.command("list")
@click.argument("tenant_id", type=click.UUID)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_keys_command(tenant_id: UUID, as_json: bool) -> None:
    """List TENANT_ID's keys (prefixes only), oldest first."""
    with tenant_scope(_engine(), tenant_id) as conn:
        _known_tenant(conn, tenant_id)
        found = tenant_sql.list_api_keys(conn, tenant_id)
    if as_json:
        _echo_json(found)
        return
    _table(found, ["prefix", "created_at", "revoked_at"])


@keys_cli.command("revoke")
@click.argument("tenant_id", type=click.UUID)
@click.argument("prefix")
def revoke_key_command(tenant_id: UUID, prefix: str) -> None:
    """Revoke TENANT_ID's key PREFIX (the 12 characters after sla_)."""
    with tenant_scope(_engine(), tenant_id) as conn:
        record = tenant_sql.revoke_api_key(conn, tenant_id, prefix)
    if record is None:
        raise click.ClickException(f"tenant {tenant_id} has no API key {prefix}")
    _forget_keys([prefix])
    click.echo(f"revoked {prefix} at {_when(record['revoked_at'])}")


# ------------------------------------------------------------------- timers
timers_cli = CliGroup("timers", help="Inspect and steer timers of any tenant.")


def _find_timer(conn, timer_id: UUID) -> UUID:
    tenant_id = conn.execute(SQL.timer_tenant.text, {"id": timer_id}).scalar()
    if tenant_id is None:
        raise click.ClickException(f"no timer {timer_id}")
    return tenant_id


def _timer_document(conn, tenant_id: UUID, row: dict[str, Any]) -> dict[str, Any]:
    from .schemas import Timer

    steps = timer_reads.escalations_for(conn, tenant_id, [row["id"]])[row["id"]]
    warnings = firing_sql.warnings_for(conn, tenant_id, [row["id"]]).get(row["id"])
    return {
        "tenant_id": str(tenant_id),
        **Timer.from_row(row, steps, warnings).model_dump(mode="json"),
    }


def _print_timer(doc: dict[str, Any]) -> None:
    for name in (
        "id", "tenant_id", "lead_id", "sla_contract_id", "status", "processing_status",
        "started_at", "due_at", "next_fire_at", "attempts", "retries", "last_error",
    ):  # fmt: skip
        if name in doc:
            click.echo(f"{name + ':':<19}{'-' if doc[name] is None else doc[name]}")
    for step in doc.get("escalations") or []:
        click.echo(f"step {step.get('escalation_step')}: {json.dumps(step, sort_keys=True)}")


@timers_cli.command("show")
@click.argument("timer_id", type=click.UUID)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_timer_command(timer_id: UUID, as_json: bool) -> None:
    """Show timer TIMER_ID of whichever tenant, with its steps and warnings."""
    with _engine().begin() as conn:
        tenant_id = _find_timer(conn, timer_id)
        doc = _timer_document(conn, tenant_id, timer_reads.get_timer(conn, tenant_id, timer_id))
    if as_json:
        _echo_json(doc)
    else:
        _print_timer(doc)


@timers_cli.command("retry")
@click.argument("timer_id", type=click.UUID)
def retry_timer_command(timer_id: UUID) -> None:
    """Re-arm dead-lettered timer TIMER_ID (as POST /v1/timers/{id}/retry)."""
    from tasks.delivery import wake_delivery
    from tasks.wakeups import schedule_wakeups

    with _engine().begin() as conn:
        tenant_id = _find_timer(conn, timer_id)
        found = firing_sql.retry_timer(conn, tenant_id, timer_id)
    if found is None:
        raise click.ClickException(f"no timer {timer_id}")
    row, retried = found
    if retried:
        schedule_wakeups([row["next_fire_at"]])  # the sweep fires it anyway
        wake_delivery()
        click.echo(f"retried {timer_id}: due now ({row['retries']} retries)")
    else:
        click.echo(f"{timer_id} was retried already and has not failed since")


@timers_cli.command("sweep")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def sweep_command(as_json: bool) -> None:
    """Run the sweeper once: rescue lost leases, fire what is due, schedule wake-ups."""
    from tasks.sweeper import sweep_once

    report = sweep_once()
    figures = {
        "rescued": report.rescued,
        "claimed": report.fired.claimed,
        "steps": report.fired.steps,
        "failures": report.fired.failures,
        "wakeups": report.wakeups,
    }
    if as_json:
        _echo_json(figures)
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in figures.items()))


# ------------------------------------------------------------------- events
events_cli = CliGroup("events", help="Outbox events and their webhook deliveries.")


@events_cli.command("replay")
@click.option("--tenant", "tenant_id", type=click.UUID, required=True, help="The tenant.")
@click.option("--webhook", "webhook_id", type=click.UUID, required=True, help="Its subscription.")
@click.option("--since", type=click.DateTime(), required=True, help="Events created from (UTC).")
@click.option("--until", type=click.DateTime(), help="Events created before (UTC).")
@click.option("--type", "event_types", multiple=True, help="Only this event type (repeatable).")
def replay_command(
    tenant_id: UUID,
    webhook_id: UUID,
    since: datetime,
    until: datetime | None,
    event_types: tuple[str, ...],
) -> None:
    """Deliver the tenant's events created since --since to a webhook again (as
    POST /v1/webhooks/{id}/replay): each gets a fresh retry schedule."""
    from datetime import UTC

    from tasks.delivery import wake_delivery

    from .webhooks import MAX_REPLAY_EVENTS

    since = since.replace(tzinfo=since.tzinfo or UTC)
    until = None if until is None else until.replace(tzinfo=until.tzinfo or UTC)
    with tenant_scope(_engine(), tenant_id) as conn:
        subscription = webhook_sql.lock_subscription(conn, tenant_id, webhook_id)
        if subscription is None:
            raise click.ClickException(f"tenant {tenant_id} has no webhook {webhook_id}")
        if not subscription["enabled"]:
            raise click.ClickException(f"webhook {webhook_id} is disabled: enable it first")
        try:
            replayed = webhook_sql.replay(
                conn,
                tenant_id,
                subscription,
                since=since,
                until=until,
                event_types=event_types or None,
                cap=MAX_REPLAY_EVENTS,
            )
        except webhook_sql.ReplayTooLarge as exc:
            raise click.ClickException(
                f"the window holds more than {exc.cap} events: replay narrower windows (--until)"
            ) from None
    if replayed:
        wake_delivery()
    click.echo(f"replayed {replayed} events to webhook {webhook_id}")


# ----------------------------------------------------------------------- db
db_cli = CliGroup("db", help="The database the service runs on.")


def schema_problems(conn, settings) -> list[str]:
    """What keeps this database from serving this code, most basic first:
    revision, tables, indexes and constraints, roles, row-level security."""
    from .health import migration_state

    heads = services().schema_heads
    revisions = {r for (r,) in conn.execute(SQL.alembic_revisions.text)}
    state = migration_state(revisions, heads)
    if state != "ok":
        return [
            f"schema {state}: database at {', '.join(sorted(revisions)) or 'no revision'}, "
            f"code at {', '.join(sorted(heads.heads))}: run `alembic upgrade head`"
            if state == "behind"
            else "schema ahead: deploy the code of revision " + ", ".join(sorted(revisions))
        ]
    # Names as PostgreSQL has them: long ones shortened the way the DDL was.
    name = postgresql.dialect().identifier_preparer.format_constraint
    expected: dict[str, str] = {}
    for table in metadata.sorted_tables:
        expected[table.name] = "table"
        for index in table.indexes:
            expected[name(index)] = f"index of {table.name}"
        for constraint in table.constraints:
            expected[name(constraint)] = f"constraint of {table.name}"
    present = {r for (r,) in conn.execute(SQL.relations_present.text, {"names": list(expected)})}
    found = [f"{expected[n]} {n} is missing" for n in expected if n not in present]
    roles = [r for r in (settings.db_app_role, settings.db_maintenance_role) if r]
    have = {r for (r,) in conn.execute(SQL.roles_present.text, {"names": roles})}
    found += [
        f"role {r} is missing: run the migrations as a role that may create it"
        for r in roles
        if r not in have
    ]
    tenant_tables = [
        t.name for t in metadata.sorted_tables if "tenant_id" in t.c or t.name == "tenants"
    ]
    for row in conn.execute(SQL.row_security.text, {"names": tenant_tables}):
        if not (row.enabled and row.forced):
            found.append(f"row-level security is not enabled and forced on {row.name}")
    return found


@db_cli.command("check")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def db_check_command(as_json: bool) -> None:
    """Check the schema is at head, with every index, role and row-level security."""
    from models.db import TenantIsolationOff, web_role_guard

    # The API's engine: its role reads alembic_version (for /readyz) and the catalogs.
    settings = services().settings
    with services().engine.connect() as conn:
        found = schema_problems(conn, settings)
    if not found:
        try:
            web_role_guard(services().engine, settings).verify()
        except TenantIsolationOff as exc:
            found.append(str(exc))
    if as_json:
        _echo_json({"ok": not found, "problems": found})
    if found:
        raise click.ClickException(found[0])
    if not as_json:
        click.echo("database ok: schema at head, indexes, roles and row-level security in place")


def register(app) -> None:
    """Add the command groups to the app's ``flask`` CLI (``tenants`` is web/admin.py's)."""
    for group in (tenants_cli, keys_cli, timers_cli, events_cli, db_cli):
        app.cli.add_command(group)
