"""The ops page's server side (web/ui.py): the pages and their strict
Content-Security-Policy, nothing inline and nothing from another origin, the
admin's overview of every tenant (GET /v1/admin/stats) and the timers list's
processing_status filter the dead-letter table reads. The page in a real
browser: tests/acceptance/test_ops_page.py."""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.api import Api, assert_problem
from web import create_app
from web.ui import CONTENT_SECURITY_POLICY

TOKEN = "admin-secret-token"
PAGES = ("/ui/", "/ui/admin")


@pytest.fixture
def admin_app(engine, settings):
    return create_app(dataclasses.replace(settings, admin_token=TOKEN))


def admin(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _assets(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize("path", PAGES)
def test_pages_send_a_strict_csp_and_load_only_own_files(app, path):
    client = app.test_client()
    page = client.get(path)
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert csp == CONTENT_SECURITY_POLICY
    for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'"):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["Referrer-Policy"] == "no-referrer"
    html = page.get_data(as_text=True)
    # No inline script, style or handler: the CSP would refuse them.
    assert all(tag.strip() for tag in re.findall(r"<script([^>]*)>", html))
    assert all("src=" in attrs for attrs in re.findall(r"<script([^>]*)>", html))
    assert "<style" not in html and " style=" not in html
    assert not re.search(r"\son[a-z]+=", html)
    # Everything it loads is this server's, and is there.
    for asset in _assets(html):
        assert asset.startswith("/"), asset
        loaded = client.get(asset)
        assert loaded.status_code == 200, asset
        assert loaded.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert loaded.headers["X-Content-Type-Options"] == "nosniff"
    # The sign-in form cannot be submitted to any URL: the script takes the key.
    assert "action=" not in html
    assert "form-action 'none'" in csp


def test_the_scripts_never_write_markup(app):
    """Data goes into the page as text only: injected markup in a lead id or an
    error message can neither run nor restyle the page."""
    client = app.test_client()
    for name in ("common.js", "tenant.js", "admin.js"):
        source = client.get(f"/ui/static/{name}").get_data(as_text=True)
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in source, (name, sink)
        # The key is sent as a header only, never put in a URL or a cookie.
        assert "document.cookie" not in source
        assert "localStorage" not in source


def _start(api: Api, lead: str, window_seconds: int, **extra) -> dict:
    response = api.post("/v1/timers", {"lead_id": lead, "window_seconds": window_seconds, **extra})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_admin_stats_counts_every_tenant(admin_app, engine, tenant, other_tenant):
    client = admin_app.test_client()
    acme, globex = Api(client, tenant[1]), Api(client, other_tenant[1])
    for lead in ("1", "2", "3"):
        _start(acme, lead, 3600)
    paused = _start(acme, "4", 3600)
    assert acme.post(f"/v1/timers/{paused['id']}/pause", {}).status_code == 200
    late = _start(globex, "9", 1)
    with engine.begin() as conn:  # globex's timer is past due, and its firing not yet run
        conn.exec_driver_sql("SET LOCAL ROLE NONE")
        conn.exec_driver_sql(
            "UPDATE sla_timers SET due_at = now() - interval '1 minute', "
            "next_fire_at = now() - interval '1 minute' WHERE id = %s",
            (late["id"],),
        )

    assert_problem(client.get("/v1/admin/stats"), 401)
    assert_problem(client.get("/v1/admin/stats", headers=admin("nope")), 401)
    assert_problem(
        client.get("/v1/admin/stats", headers=Api(client, tenant[1])._headers({}, None)), 401
    )

    response = client.get("/v1/admin/stats", headers=admin())
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    page = response.get_json()
    assert page["next_cursor"] is None
    by_name = {t["name"]: t for t in page["items"]}
    assert [t["name"] for t in page["items"]] == ["acme", "globex"]
    assert by_name["acme"]["tenant_id"] == str(tenant[0])
    assert by_name["acme"] | {"tenant_id": None} == {
        "tenant_id": None,
        "name": "acme",
        "active": 3,
        "paused": 1,
        "overdue": 0,
        "oldest_overdue_age_seconds": None,
        "started_today": 4,
        "breached_today": 0,
        "compliance_percent_today": None,
    }
    g = by_name["globex"]
    assert (g["active"], g["overdue"], g["breached_today"]) == (1, 1, 1)
    assert g["oldest_overdue_age_seconds"] >= 59
    assert g["compliance_percent_today"] == 0.0
    as_of = datetime.fromisoformat(page["as_of"])
    assert abs(as_of - datetime.now(UTC)) < timedelta(seconds=30)
    assert page["day_from"].startswith(as_of.date().isoformat())

    # The same figures the tenant reads from GET /v1/stats.
    today = as_of.replace(hour=0, minute=0, second=0, microsecond=0)
    own = acme.get(
        "/v1/stats",
        query_string={"from": today.isoformat(), "to": (as_of + timedelta(days=1)).isoformat()},
    ).get_json()
    assert (own["active"], own["paused"], own["breached"]) == (3, 1, 0)


def test_admin_stats_pages_by_name(admin_app, engine, tenant, other_tenant):
    client = admin_app.test_client()
    first = client.get("/v1/admin/stats", query_string={"limit": 1}, headers=admin()).get_json()
    assert [t["name"] for t in first["items"]] == ["acme"]
    assert first["next_cursor"]
    second = client.get(
        "/v1/admin/stats",
        query_string={"limit": 1, "cursor": first["next_cursor"]},
        headers=admin(),
    ).get_json()
    assert [t["name"] for t in second["items"]] == ["globex"]
    assert second["next_cursor"] is None
    for bad in ("garbage", "W10=", "bm90IGpzb24"):
        assert_problem(
            client.get("/v1/admin/stats", query_string={"cursor": bad}, headers=admin()),
            422,
            "cursor",
        )
    assert_problem(
        client.get("/v1/admin/stats", query_string={"limit": 0}, headers=admin()), 422, "limit"
    )


def test_admin_stats_is_absent_without_a_token(app):
    response = app.test_client().get("/v1/admin/stats", headers=admin())
    assert_problem(response, 404)


def test_timers_filter_by_processing_status(api, engine):
    ok = _start(api, "1", 3600)
    dead = _start(api, "2", 3600)
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE NONE")
        conn.exec_driver_sql(
            "UPDATE sla_timers SET processing_status = 'FAILED' WHERE id = %s", (dead["id"],)
        )
    page = api.get("/v1/timers", query_string={"processing_status": "FAILED"}).get_json()
    assert [t["id"] for t in page["items"]] == [dead["id"]]
    page = api.get("/v1/timers", query_string={"processing_status": "PENDING"}).get_json()
    assert [t["id"] for t in page["items"]] == [ok["id"]]
    assert_problem(
        api.get("/v1/timers", query_string={"processing_status": "DEAD"}), 422, "processing_status"
    )
