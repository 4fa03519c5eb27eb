"""The ops page (/ui/) and the admin's overview of every tenant (GET /v1/admin/stats).

The pages are server-rendered templates (web/templates/ui/) with a little
vanilla JavaScript (web/static/ui/), served from the package: no build step,
nothing fetched from elsewhere. They hold no data: the script reads the JSON
API from the same origin, so the page shows exactly what the API answers.

Key handling (docs/ops-page.md): the tenant's API key, or the admin token, is
typed into a form whose submit the script handles; the script keeps it in
``sessionStorage`` (this tab only, gone when the tab closes) and sends it as
``Authorization: Bearer`` on its fetch() calls. It is never in a URL (the form
has no action the browser could submit to), never in a cookie (so a
cross-site request cannot carry it) and never logged (access logs hold the
request line, not headers). Every response of this blueprint carries a strict
Content-Security-Policy: scripts, styles and connections only from this
origin, nothing inline, no frames, so injected markup cannot run or send the
key anywhere; the scripts write data with textContent, never as markup.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from datetime import UTC, datetime
from uuid import UUID

from flask import Blueprint, Response, render_template
from pydantic import ConfigDict, Field
from sqlalchemy import Engine

from models import overview
from models.config import Settings
from models.db import make_engine

from .operations import json_response, operation
from .problems import validation_error
from .schemas import Problem, RequestModel, ResponseModel, UtcDatetime, constraints
from .services import services

bp = Blueprint(
    "ui",
    __name__,
    static_folder="static/ui",
    static_url_path="/ui/static",
    template_folder="templates",
)

# Everything from this origin only, nothing inline, no plugins, frames or
# foreign form targets. 'self' in connect-src: the API on the same origin.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@bp.after_request
def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _page(template: str) -> Response:
    response = Response(render_template(template), mimetype="text/html")
    # The pages are the same for everyone and hold no data; the scripts may be cached.
    response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/ui/")
def tenant_page() -> Response:
    return _page("ui/tenant.html")


@bp.get("/ui/admin")
def admin_page() -> Response:
    return _page("ui/admin.html")


# --------------------------------------------------------------------------- admin stats

ISSUED_TENANT_CURSOR = {
    "rule": "issued-by-api",
    "source": "TenantOverviewPage.next_cursor",
    "description": "Only a next_cursor this listing returned; its content is not specified.",
}


class TenantOverviewQuery(RequestModel):
    model_config = ConfigDict(strict=False)  # query strings are all text

    limit: int = Field(default=50, ge=1, le=200, description="Tenants per page.")
    cursor: str | None = Field(
        default=None,
        max_length=2000,
        description="The next_cursor of a page of this listing, as returned; any other "
        "string is a 422 (x-constraints: an opaque value has no schema).",
        json_schema_extra=constraints(ISSUED_TENANT_CURSOR),
    )


class TenantCounts(ResponseModel):
    tenant_id: UUID
    name: str
    active: int = Field(description="Open and not paused (ACTIVE, DUE or ESCALATED).")
    paused: int
    overdue: int = Field(
        description="Open timers whose next_fire_at has come and that the firing path has "
        "not recorded yet."
    )
    oldest_overdue_age_seconds: float | None
    started_today: int = Field(description="Timers started since 00:00 UTC.")
    breached_today: int = Field(
        description="Of the timers started since 00:00 UTC: completed late, or open and "
        "past due (GET /v1/stats' breached)."
    )
    compliance_percent_today: float | None = Field(
        description="GET /v1/stats' compliance_percent over the timers started today."
    )


class TenantOverviewPage(ResponseModel):
    as_of: UtcDatetime = Field(description="The instant open timers are judged at.")
    day_from: UtcDatetime = Field(description="00:00 UTC today: where today's figures start.")
    items: list[TenantCounts] = Field(description="Tenants by name.")
    next_cursor: str | None


def _encode(name: str, tenant_id: UUID) -> str:
    return base64.urlsafe_b64encode(json.dumps([name, str(tenant_id)]).encode()).decode()


def _decode(cursor: str) -> tuple[str, UUID]:
    try:
        name, tenant_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(name, str):
            raise ValueError(name)
        return name, UUID(tenant_id)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise validation_error(
            [{"field": "cursor", "reason": "is not a cursor returned by this API"}]
        ) from None


_maintenance_engines: dict[tuple, Engine] = {}
_maintenance_lock = threading.Lock()


def _maintenance_engine(settings: Settings) -> Engine:
    """The role that sees every tenant, made on the first admin read: a web
    process that never serves one opens no such connection."""
    key = (settings.database_url, settings.db_maintenance_role, settings.db_statement_timeout_ms)
    with _maintenance_lock:
        if key not in _maintenance_engines:
            # Two connections: an admin page, not traffic.
            _maintenance_engines[key] = make_engine(
                settings, role=settings.db_maintenance_role, pool_size=2, all_tenants=True
            )
        return _maintenance_engines[key]


@bp.get("/v1/admin/stats")
@operation(
    "Every tenant's live counts",
    tag="admin",
    auth="admin",
    query=TenantOverviewQuery,
    responses={
        200: ("A page of tenants by name, with their counts", TenantOverviewPage),
        404: ("SLA_ADMIN_TOKEN is not configured", Problem),
    },
    description=(
        "Per tenant: active, paused and overdue timers now (whenever they started), and of "
        "the timers started since 00:00 UTC how many started, are breached and the "
        "compliance: GET /v1/stats' figures, read in one snapshot for the whole page."
    ),
)
def admin_stats(query: TenantOverviewQuery):
    after = None if query.cursor is None else _decode(query.cursor)
    now = datetime.now(UTC)
    rows, more = overview.tenant_counts(
        _maintenance_engine(services().settings), query.limit, after, now
    )
    next_cursor = _encode(rows[-1]["name"], rows[-1]["tenant_id"]) if more else None
    page = TenantOverviewPage(
        as_of=now,
        day_from=overview.start_of_day(now),
        items=[TenantCounts(**r) for r in rows],
        next_cursor=next_cursor,
    )
    return json_response(page, headers={"Cache-Control": "no-store"})
