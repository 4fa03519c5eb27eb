"""Admin routes and CLI: tenants and their API keys (create, list, revoke).

Without SLA_ADMIN_TOKEN the HTTP admin routes answer 404, as if absent: an
unconfigured deployment exposes no admin surface at all. The CLI needs no
token, since it already runs with the service's own database credentials. A CLI
command that fails for a known reason (database unreachable or missing, schema
not migrated, Redis unreachable) prints one line naming the cause and the fix and
exits 1, rather than a traceback.
"""

from __future__ import annotations

from uuid import UUID

import click
from flask import Blueprint
from flask.cli import AppGroup, ScriptInfo

from models import keys as api_keys
from models import tenants as tenant_sql
from models.config import get_settings
from models.db import tenant_scope

from .limits import TENANT_NAME
from .operations import json_response, operation
from .problems import not_found, validation_error
from .schemas import ApiKey, ApiKeyCreated, ApiKeyList, Problem, TenantCreate, TenantCreated
from .services import services

bp = Blueprint("admin", __name__)


@bp.post("/v1/admin/tenants")
@operation(
    "Create a tenant and its first API key",
    tag="admin",
    auth="admin",
    body=TenantCreate,
    responses={
        201: ("Created; the API key is shown only in this response", TenantCreated),
        404: ("SLA_ADMIN_TOKEN is not configured", Problem),
    },
)
def create_tenant(body: TenantCreate):
    with services().engine.begin() as conn:
        tenant_id, key = tenant_sql.create_tenant(conn, body.name)
    created = TenantCreated(tenant_id=tenant_id, name=body.name, api_key=key)
    return json_response(created, 201, {"Cache-Control": "no-store"})


NO_TENANT = ("No such tenant, or SLA_ADMIN_TOKEN is not configured", Problem)
NO_KEY = ("No such tenant or key, or SLA_ADMIN_TOKEN is not configured", Problem)
PREFIX_REASON = "must be the 12 lowercase hexadecimal characters after sla_ in the key"


def _tenant_scope(raw: str):
    """The named tenant's scope: admin routes act through row-level security too."""
    try:
        tenant_id = UUID(raw)
    except ValueError:
        raise not_found("tenant") from None
    return tenant_id, tenant_scope(services().engine, tenant_id)


@bp.get("/v1/admin/tenants/<tenant_id>/api-keys")
@operation(
    "List a tenant's API keys (prefixes only)",
    tag="admin",
    auth="admin",
    responses={200: ("The keys, oldest first", ApiKeyList), 404: NO_TENANT},
)
def list_keys(tenant_id: str):
    tid, scope = _tenant_scope(tenant_id)
    with scope as conn:
        if not tenant_sql.tenant_exists(conn, tid):
            raise not_found("tenant")
        keys = tenant_sql.list_api_keys(conn, tid)
    return json_response(ApiKeyList(items=[ApiKey(**k) for k in keys]))


@bp.post("/v1/admin/tenants/<tenant_id>/api-keys")
@operation(
    "Issue another API key for a tenant (to rotate keys without downtime)",
    tag="admin",
    auth="admin",
    responses={
        201: ("Created; the API key is shown only in this response", ApiKeyCreated),
        404: NO_TENANT,
    },
)
def create_key(tenant_id: str):
    tid, scope = _tenant_scope(tenant_id)
    with scope as conn:
        if not tenant_sql.tenant_exists(conn, tid):
            raise not_found("tenant")
        key, record = tenant_sql.create_api_key(conn, tid)
    created = ApiKeyCreated(**record, api_key=key)
    return json_response(created, 201, {"Cache-Control": "no-store"})


@bp.delete("/v1/admin/tenants/<tenant_id>/api-keys/<prefix>")
@operation(
    "Revoke an API key",
    tag="admin",
    auth="admin",
    responses={
        200: ("Revoked (also when it already was)", ApiKey),
        404: NO_KEY,
        422: ("The prefix is not 12 lowercase hexadecimal characters", Problem),
    },
    description=(
        "This process stops accepting the key at once, other API processes within a "
        "second (the revocation is broadcast through Redis); while Redis is unreachable, "
        "within SLA_API_KEY_CACHE_SECONDS."
    ),
)
def revoke_key(tenant_id: str, prefix: str):
    if not api_keys.is_key_prefix(prefix):  # e.g. a NUL, which the database cannot even compare
        raise validation_error([{"field": "prefix", "reason": PREFIX_REASON}])
    tid, scope = _tenant_scope(tenant_id)
    with scope as conn:
        record = tenant_sql.revoke_api_key(conn, tid, prefix)
    if record is None:
        raise not_found("API key")
    services().api_keys.revoked(prefix)
    return json_response(ApiKey(**record))


def cli_failure(exc: BaseException, settings) -> str | None:
    """One line naming the cause of a CLI command's failure and its fix, or None
    for a failure this does not recognise (a bug: its traceback is wanted)."""
    import psycopg
    import redis
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    db = make_url(settings.database_url)
    where = f"{db.host or 'localhost'}:{db.port or 5432}"
    cause = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
    if isinstance(cause, psycopg.errors.UndefinedTable):
        return (
            f'schema not migrated in database "{db.database}" at {where}: '
            "run `alembic upgrade head`"
        )
    if isinstance(cause, psycopg.OperationalError) and not isinstance(
        cause, psycopg.errors.QueryCanceled
    ):
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        if "does not exist" in reason:
            return f"{reason.split('FATAL:')[-1].strip()} at {where}: create it or set DATABASE_URL"
        return f"database unreachable at {where} ({reason}): start it or set DATABASE_URL"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        rd = make_url(settings.redis_url)
        return (
            f"Redis unreachable at {rd.host or 'localhost'}:{rd.port or 6379}: "
            "start it or set REDIS_URL"
        )
    return None


class CliGroup(AppGroup):
    """Commands whose known failures end in one line and exit status 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.exceptions.ClickException:
            raise
        except Exception as exc:
            # The app context is gone by now; the CLI loaded its app once, kept here.
            info = ctx.find_object(ScriptInfo)
            app = info.load_app() if info is not None else None
            settings = services(app).settings if app is not None else get_settings()
            message = cli_failure(exc, settings)
            if message is None:
                raise
            raise click.ClickException(message) from None


tenants_cli = CliGroup("tenants", help="Manage tenants.")


@tenants_cli.command("create")
@click.argument("name")
def create_tenant_command(name: str) -> None:
    """Create tenant NAME and print its id and a new API key."""
    name = name.strip()
    if not TENANT_NAME.accepts(name) or "\x00" in name:
        raise click.BadParameter(TENANT_NAME.reason, param_hint="NAME")
    with services().engine.begin() as conn:
        tenant_id, key = tenant_sql.create_tenant(conn, name)
    click.echo(f"tenant_id={tenant_id}")
    click.echo(f"api_key={key}")
    click.echo("Store the API key now: it cannot be shown again.", err=True)


@tenants_cli.command("revoke-key")
@click.argument("tenant_id", type=click.UUID)
@click.argument("prefix")
def revoke_key_command(tenant_id: UUID, prefix: str) -> None:
    """Revoke the API key PREFIX of tenant TENANT_ID."""
    with tenant_scope(services().engine, tenant_id) as conn:
        record = tenant_sql.revoke_api_key(conn, tenant_id, prefix)
    if record is None:
        raise click.ClickException(f"tenant {tenant_id} has no API key {prefix}")
    services().api_keys.revoked(prefix)  # tell the web processes
    click.echo(f"revoked {prefix} at {record['revoked_at'].isoformat()}")
