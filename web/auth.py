"""Bearer authentication: an API key names the tenant; the admin token guards admin routes.

The tenant comes only from the key. No request field can name another tenant,
so every query below the views is scoped by ``g.tenant_id``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from uuid import UUID

from flask import current_app, g, request
from werkzeug.exceptions import NotFound

from models import repository as repo

from .problems import ApiProblem

# Keys are ``sla_<hex prefix>_<urlsafe secret>``; anything else is refused
# before it reaches the database.
_KEY_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,200}")


def _unauthorized(detail: str, challenge: str) -> ApiProblem:
    return ApiProblem(401, detail, headers={"WWW-Authenticate": challenge})


def bearer_token_of(authorization: str) -> str | None:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def bearer_token() -> str | None:
    return bearer_token_of(request.headers.get("Authorization", ""))


def authenticate_tenant() -> UUID:
    token = bearer_token()
    challenge = 'Bearer realm="sla-timers"'
    if token is None:
        raise _unauthorized("an API key is required: Authorization: Bearer <key>", challenge)
    tenant_id = None
    if _KEY_SHAPE.fullmatch(token):
        with current_app.extensions["sla"].engine.connect() as conn:
            tenant_id = repo.tenant_for_api_key(conn, token)
    if tenant_id is None:
        raise _unauthorized("the API key is not valid", f'{challenge}, error="invalid_token"')
    g.tenant_id = tenant_id
    return tenant_id


def token_matches(candidate: str | None, token: str) -> bool:
    return candidate is not None and hmac.compare_digest(
        candidate.encode("utf-8", "replace"), token.encode("utf-8")
    )


def authenticate_admin() -> None:
    """Admin routes do not exist (404) unless SLA_ADMIN_TOKEN is set."""
    token = current_app.extensions["sla"].settings.admin_token
    if token is None:
        raise NotFound()  # the same answer as for a route that does not exist
    if not token_matches(bearer_token(), token):
        raise _unauthorized(
            "the admin token is required: Authorization: Bearer <token>",
            'Bearer realm="sla-timers-admin"',
        )


def basic_password(authorization: str) -> str | None:
    """The password of an HTTP Basic ``Authorization`` value, if it is one."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2]
