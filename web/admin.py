"""Admin routes and CLI: creating tenants and their first API key.

Without SLA_ADMIN_TOKEN the HTTP admin routes answer 404, as if absent: an
unconfigured deployment exposes no admin surface at all. The CLI needs no
token, since it already runs with the service's own database credentials.
"""

from __future__ import annotations

import click
from flask import Blueprint, current_app
from flask.cli import AppGroup

from models import repository as repo

from .operations import json_response, operation
from .schemas import Problem, TenantCreate, TenantCreated

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
    with current_app.extensions["sla"].engine.begin() as conn:
        tenant_id, key = repo.create_tenant(conn, body.name)
    created = TenantCreated(tenant_id=tenant_id, name=body.name, api_key=key)
    return json_response(created, 201, {"Cache-Control": "no-store"})


tenants_cli = AppGroup("tenants", help="Manage tenants.")


@tenants_cli.command("create")
@click.argument("name")
def create_tenant_command(name: str) -> None:
    """Create tenant NAME and print its id and a new API key."""
    name = name.strip()
    if not 1 <= len(name) <= 200 or "\x00" in name:
        raise click.BadParameter("must be 1 to 200 characters", param_hint="NAME")
    with current_app.extensions["sla"].engine.begin() as conn:
        tenant_id, key = repo.create_tenant(conn, name)
    click.echo(f"tenant_id={tenant_id}")
    click.echo(f"api_key={key}")
    click.echo("Store the API key now: it cannot be shown again.", err=True)
