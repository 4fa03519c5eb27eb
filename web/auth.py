"""Bearer authentication: an API key names the tenant; the admin token guards admin routes.

The tenant comes only from the key. No request field can name another tenant,
so every query below the views is scoped by ``g.tenant_id``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
import time
from uuid import UUID

from flask import current_app, g, request
from werkzeug.exceptions import NotFound

from models import repository as repo

from .problems import ApiProblem

log = logging.getLogger(__name__)

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


class ApiKeyCache:
    """API key prefix -> (tenant, key hash), kept ``ttl`` seconds per process, so
    a request does not cost a database round trip to authenticate.

    The presented key is still hashed and compared in constant time with the
    stored hash on every request; only the lookup is cached, and only for keys
    that exist. The price: a revoked key keeps working in a process that saw it
    for up to ``ttl`` seconds (SLA_API_KEY_CACHE_SECONDS; 0 disables the cache).
    """

    MAX_ENTRIES = 10_000

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[UUID, str, float]] = {}

    def forget(self, prefix: str) -> None:
        self._entries.pop(prefix, None)

    def tenant_for(self, key: str, engine) -> UUID | None:
        prefix = repo.key_prefix(key)
        if prefix is None:
            return None
        now = time.monotonic()
        entry = self._entries.get(prefix)
        if entry is None or entry[2] <= now:
            with engine.connect() as conn:
                record = repo.api_key_record(conn, prefix)
            if record is None:
                self._entries.pop(prefix, None)
                return None
            entry = (*record, now + self.ttl)
            if self.ttl > 0:
                if len(self._entries) >= self.MAX_ENTRIES:
                    self._entries.clear()
                self._entries[prefix] = entry
        tenant_id, key_hash, _ = entry
        return tenant_id if repo.key_matches(key_hash, key) else None


def authenticate_tenant() -> UUID:
    token = bearer_token()
    challenge = 'Bearer realm="sla-timers"'
    if token is None:
        raise _unauthorized("an API key is required: Authorization: Bearer <key>", challenge)
    tenant_id = None
    # Logs name a key by its prefix only, never by the secret.
    g.api_key_prefix = None
    if _KEY_SHAPE.fullmatch(token):
        g.api_key_prefix = repo.key_prefix(token)
        services = current_app.extensions["sla"]
        tenant_id = services.api_keys.tenant_for(token, services.engine)
    if tenant_id is None:
        log.info("refused API key %s", g.api_key_prefix or "(not an API key)")
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
