"""First contact: ``/`` leads to ``/docs``, a Swagger UI page rendered from
``/openapi.json`` with every file served by the app itself (web/docs.py), under a
strict Content-Security-Policy, so the page works with no internet access."""

from __future__ import annotations

import re

import pytest

# Anything the page or its script would load from another origin.
REMOTE = re.compile(r"""(?:src|href|url)\s*[=:(]\s*["']?\s*(?:https?:)?//""", re.I)


@pytest.fixture
def client(app):
    return app.test_client()


def test_root_redirects_to_the_docs(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/docs"
    assert client.get("/", follow_redirects=True).request.path == "/docs"


def test_the_docs_page_loads_only_files_the_app_serves(client):
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert not re.search(r"https?://", html)
    assert not REMOTE.search(html)
    assert "<script>" not in html and " style=" not in html  # nothing inline

    loaded = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/init.js"} <= set(loaded)
    for path in loaded:
        asset = client.get(path)
        assert asset.status_code == 200, path
        assert len(asset.data) > 0, path
    bundle = client.get("/docs/assets/swagger-ui-bundle.js").get_data(as_text=True)
    assert "SwaggerUIBundle" in bundle  # the real thing, from the installed package

    init = client.get("/docs/init.js").get_data(as_text=True)
    assert not re.search(r"https?://", init)
    assert 'url: "/openapi.json"' in init
    assert "validatorUrl: null" in init  # else Swagger UI calls validator.swagger.io
    assert client.get("/openapi.json").status_code == 200


def test_the_stylesheet_draws_its_images_without_the_network(client):
    css = client.get("/docs/assets/swagger-ui.css").get_data(as_text=True)
    urls = re.findall(r"url\(\s*['\"]?([^'\")]*)", css)
    assert urls, "Swagger UI's stylesheet draws icons: the pattern must find them"
    assert all(u.startswith("data:") for u in urls), [u[:40] for u in urls]
    assert "@import" not in css


@pytest.mark.parametrize("path", ["/docs", "/docs/init.js", "/docs/assets/swagger-ui.css"])
def test_the_docs_send_a_strict_content_security_policy(client, path):
    headers = client.get(path).headers
    policy = dict(
        part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_only_the_pages_files_are_served(client):
    assert client.get("/docs/assets/swagger-editor-bundle.js").status_code == 404
    assert client.get("/docs/assets/..%2F__init__.py").status_code == 404
