"""First contact: ``GET /`` redirects to ``/docs``, a browsable API reference that
Swagger UI renders from ``/openapi.json``.

Swagger UI's files come from the installed ``swagger-ui-py`` package (Swagger UI 5,
which reads OpenAPI 3.1) and are served from ``/docs/assets/``; the page's own
script is a file too, so nothing is fetched from the internet and the page runs
under a strict Content-Security-Policy (no inline script, no other origin).
Swagger UI's spec validator, which would call validator.swagger.io, is switched
off. None of these routes touch the database or Redis.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from flask import Blueprint, Response, abort, redirect, send_from_directory

bp = Blueprint("docs", __name__)


def _assets_dir() -> Path:
    # Located, not imported: the package's Python side (handlers for many frameworks)
    # is not used, only its static files.
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


ASSETS = _assets_dir()
# What the page loads; nothing else of the package is served.
SERVED = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"})
ASSET_MAX_AGE = 24 * 3600

# 'self' only. Images may be data: URLs (Swagger UI's CSS draws its icons so).
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>SLA timers: API</title>
<link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""

# Try-it-out sends the key typed into "Authorize" as a Bearer header; it stays in
# the page's memory (persistAuthorization off), never in a URL or storage.
INIT = """window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  persistAuthorization: false,
  tryItOutEnabled: false,
  displayRequestDuration: true,
  defaultModelsExpandDepth: 0
});
"""


def _secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


@bp.get("/")
def root():
    return redirect("/docs", code=302)


@bp.get("/docs")
def docs_page():
    return _secured(Response(PAGE, mimetype="text/html"))


@bp.get("/docs/init.js")
def docs_init():
    return _secured(Response(INIT, mimetype="text/javascript"))


@bp.get("/docs/assets/<name>")
def docs_asset(name: str):
    if name not in SERVED:
        abort(404)
    return _secured(send_from_directory(ASSETS, name, max_age=ASSET_MAX_AGE))
