"""Admin tenant creation (HTTP and CLI), the dashboard guard, probes and /openapi.json."""

from __future__ import annotations

import base64
import dataclasses
import re

import pytest

from tests.support.api import TIMER_FIELDS, assert_problem
from web import create_app
from web.health import schema_heads

TOKEN = "admin-secret-token"


@pytest.fixture
def admin_app(engine, settings):
    return create_app(dataclasses.replace(settings, admin_token=TOKEN))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_admin_routes_are_absent_without_a_token(app):
    client = app.test_client()
    assert app.extensions["sla"].settings.admin_token is None
    response = client.post("/v1/admin/tenants", json={"name": "x"}, headers=bearer("anything"))
    absent = assert_problem(response, 404)
    # Indistinguishable from a route that does not exist.
    assert absent["detail"] == client.get("/v1/admin/nothing").get_json()["detail"]
    assert_problem(client.get("/dramatiq/", headers=bearer("anything")), 404)


def test_admin_creates_a_tenant_whose_key_works(admin_app):
    client = admin_app.test_client()
    assert_problem(client.post("/v1/admin/tenants", json={"name": "x"}), 401)
    wrong = client.post("/v1/admin/tenants", json={"name": "x"}, headers=bearer("nope"))
    assert_problem(wrong, 401)
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(
        client.post("/v1/admin/tenants", json={"name": ""}, headers=bearer(TOKEN)), 422, "name"
    )

    created = client.post("/v1/admin/tenants", json={"name": "initech"}, headers=bearer(TOKEN))
    assert created.status_code == 201
    assert created.headers["Cache-Control"] == "no-store"
    body = created.get_json()
    assert set(body) == {"tenant_id", "name", "api_key"}
    assert body["name"] == "initech"
    timers = client.get("/v1/timers", headers=bearer(body["api_key"]))
    assert timers.get_json() == {"items": [], "next_cursor": None}
    # The admin token is not a tenant key.
    assert_problem(client.get("/v1/timers", headers=bearer(TOKEN)), 401)


def test_cli_creates_a_tenant(app):
    result = app.test_cli_runner().invoke(args=["tenants", "create", "umbrella"])
    assert result.exit_code == 0, result.output
    values = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert set(values) == {"tenant_id", "api_key"}
    response = app.test_client().get("/v1/timers", headers=bearer(values["api_key"]))
    assert response.status_code == 200

    empty = app.test_cli_runner().invoke(args=["tenants", "create", " "])
    assert empty.exit_code != 0


def test_dashboard_requires_the_admin_token(admin_app):
    client = admin_app.test_client()
    anonymous = client.get("/dramatiq/")
    assert_problem(anonymous, 401)
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    wrong = base64.b64encode(b"admin:wrong").decode()
    assert client.get("/dramatiq/", headers={"Authorization": f"Basic {wrong}"}).status_code == 401

    basic = base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
    page = client.get("/dramatiq/", headers={"Authorization": f"Basic {basic}"})
    assert page.status_code == 200
    assert "text/html" in page.content_type
    assert client.get("/dramatiq/", headers=bearer(TOKEN)).status_code == 200
    redirect = client.get("/dramatiq", headers=bearer(TOKEN))
    assert redirect.status_code == 308
    assert redirect.headers["Location"] == "/dramatiq/"


def test_probes(app, settings):
    client = app.test_client()
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {
        "database": "ok",
        "migrations": "ok",
        "revision": ",".join(sorted(schema_heads().heads)),
        "redis": "ok",
    }

    # Redis only degrades the service (tests/integration/test_readiness.py).
    no_redis = create_app(dataclasses.replace(settings, redis_url="redis://127.0.0.1:1/0"))
    degraded = no_redis.test_client().get("/readyz")
    assert degraded.status_code == 200
    assert (degraded.get_json()["database"], degraded.get_json()["redis"]) == ("ok", "degraded")


def _refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


# Blueprints of browsable pages: / and /docs (web/docs.py), /ui/ (web/ui.py).
HTML_PAGES = {"docs", "ui"}


def test_openapi_document_describes_every_route(app):
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["openapi"].startswith("3.1")
    assert {"title", "version"} <= doc["info"].keys()
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "Tenant API key",
    }

    documented = {(p, m.upper()) for p, ops in doc["paths"].items() for m in ops}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".")[0] in HTML_PAGES:
            continue  # pages for people and their files, not API operations
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)  # <uuid:timer_id> -> {timer_id}
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented

    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas

    start = doc["paths"]["/v1/timers"]["post"]
    assert start["security"] == [{"apiKey": []}]
    body_schema = start["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema == {"$ref": "#/components/schemas/TimerCreate"}
    assert {"lead_id", "window_seconds", "escalation_steps"} <= schemas["TimerCreate"][
        "properties"
    ].keys()
    assert schemas["TimerCreate"]["additionalProperties"] is False
    assert {"200", "201", "400", "401", "409", "413", "415", "422", "503"} <= start[
        "responses"
    ].keys()
    assert "application/problem+json" in start["responses"]["422"]["content"]
    assert {p["name"] for p in start["parameters"]} == {"Idempotency-Key", "X-Correlation-ID"}

    listing = doc["paths"]["/v1/timers"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {
        "lead_id",
        "status",
        "processing_status",
        "limit",
        "cursor",
    }
    timer = schemas["Timer"]["properties"]
    assert set(timer) == TIMER_FIELDS
    assert doc["paths"]["/healthz"]["get"]["security"] == []


def test_api_keys_can_be_issued_listed_and_revoked(admin_app, settings, tenant, other_tenant):
    client = admin_app.test_client()
    admin = bearer(TOKEN)
    keys = f"/v1/admin/tenants/{tenant[0]}/api-keys"
    assert_problem(client.get(keys), 401)
    assert_problem(client.get(keys, headers=bearer(tenant[1])), 401)  # a tenant key is not admin

    issued = client.post(keys, headers=admin)
    assert issued.status_code == 201
    assert issued.headers["Cache-Control"] == "no-store"
    second = issued.get_json()
    assert second["api_key"].startswith(f"sla_{second['prefix']}_")
    listed = client.get(keys, headers=admin).get_json()["items"]
    assert [k["prefix"] for k in listed] == [tenant[1].split("_")[1], second["prefix"]]
    assert all("api_key" not in k and k["revoked_at"] is None for k in listed)

    # Rotation: both keys work, then the first is revoked and refused at once here.
    first_prefix = tenant[1].split("_")[1]
    for key in (tenant[1], second["api_key"]):
        assert client.get("/v1/timers", headers=bearer(key)).status_code == 200
    revoked = client.delete(f"{keys}/{first_prefix}", headers=admin)
    assert revoked.status_code == 200 and revoked.get_json()["revoked_at"]
    assert_problem(client.get("/v1/timers", headers=bearer(tenant[1])), 401)
    assert client.get("/v1/timers", headers=bearer(second["api_key"])).status_code == 200
    again = client.delete(f"{keys}/{first_prefix}", headers=admin)
    assert again.get_json()["revoked_at"] == revoked.get_json()["revoked_at"]

    # Another tenant's key cannot be revoked through this tenant's path.
    other_prefix = other_tenant[1].split("_")[1]
    assert_problem(client.delete(f"{keys}/{other_prefix}", headers=admin), 404)
    assert client.get("/v1/timers", headers=bearer(other_tenant[1])).status_code == 200
    unknown = "/v1/admin/tenants/00000000-0000-0000-0000-000000000000/api-keys"
    assert_problem(client.get(unknown, headers=admin), 404)
    assert_problem(client.post(unknown, headers=admin), 404)
    assert_problem(client.get("/v1/admin/tenants/not-a-uuid/api-keys", headers=admin), 404)


@pytest.mark.parametrize(
    "prefix",
    [
        "%00",
        "%00" * 12,
        "ABCDEF012345",
        "abcdef01234",
        "abcdef0123456",
        "sla_abcdef012345",
        "%C3%A9",
    ],
)
def test_a_malformed_key_prefix_is_422_naming_it(admin_app, tenant, prefix):
    client = admin_app.test_client()
    response = client.delete(
        f"/v1/admin/tenants/{tenant[0]}/api-keys/{prefix}", headers=bearer(TOKEN)
    )
    problem = assert_problem(response, 422, "prefix")
    assert "12 lowercase hexadecimal" in problem["errors"][0]["reason"]
    # Nothing was revoked: the tenant's key still works.
    assert client.get("/v1/timers", headers=bearer(tenant[1])).status_code == 200


def test_a_well_formed_unknown_prefix_is_404(admin_app, tenant):
    client = admin_app.test_client()
    response = client.delete(
        f"/v1/admin/tenants/{tenant[0]}/api-keys/0123456789ab", headers=bearer(TOKEN)
    )
    assert_problem(response, 404)


def test_openapi_documents_the_prefix_pattern(admin_app):
    doc = admin_app.test_client().get("/openapi.json").get_json()
    revoke = doc["paths"]["/v1/admin/tenants/{tenant_id}/api-keys/{prefix}"]["delete"]
    (prefix,) = [p for p in revoke["parameters"] if p["name"] == "prefix"]
    assert prefix["in"] == "path" and prefix["schema"]["pattern"] == "^[0-9a-f]{12}$"
    assert "422" in revoke["responses"]


def test_keys_are_high_entropy_and_stored_only_as_hashes(engine, tenant):
    import hashlib

    from sqlalchemy import text

    _, prefix, secret = tenant[1].split("_", 2)
    assert len(prefix) == 12 and int(prefix, 16) >= 0
    assert len(secret) >= 43  # 32 random bytes, base64url
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT prefix, key_hash FROM api_keys")).one()
    assert stored.prefix == prefix
    assert secret not in stored.key_hash and tenant[1] not in stored.key_hash
    # The SHA-256 of the whole key, hex: computed here, not by the code under test.
    assert stored.key_hash == hashlib.sha256(tenant[1].encode()).hexdigest()


def test_cli_revokes_a_key(app, tenant):
    runner = app.test_cli_runner()
    prefix = tenant[1].split("_")[1]
    result = runner.invoke(args=["tenants", "revoke-key", str(tenant[0]), prefix])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"revoked {prefix} at ")
    missing = runner.invoke(args=["tenants", "revoke-key", str(tenant[0]), "nope"])
    assert missing.exit_code != 0 and "has no API key nope" in missing.output


def test_a_refused_key_is_logged_by_its_prefix_only(app, tenant, caplog):
    prefix = tenant[1].split("_")[1]
    forged = f"sla_{prefix}_{'A' * 43}"
    with caplog.at_level("INFO", logger="web.auth"):
        response = app.test_client().get("/v1/timers", headers=bearer(forged))
    assert_problem(response, 401)
    assert f"refused API key {prefix}" in caplog.text
    assert "A" * 43 not in caplog.text
