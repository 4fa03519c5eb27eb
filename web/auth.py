"""Bearer authentication: an API key names the tenant; the admin token guards admin routes.

The tenant comes only from the key. No request field can name another tenant,
so every query below the views is scoped by ``g.tenant_id``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import random
import re
import threading
import time
import weakref
from uuid import UUID

import redis
from flask import g, request
from werkzeug.exceptions import NotFound

from models import keys as api_keys
from models import logs
from models import tenants as tenant_sql

from .problems import ApiProblem
from .services import services

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


# Revocations are broadcast here; the message is the key's prefix (12 hex
# digits). Pub/sub ignores the Redis database number, so deployments sharing
# a server share the channel: a stranger's message costs a cache miss at most.
REVOKED_CHANNEL = "sla:api-keys:revoked"


class ApiKeyCache:
    """API key prefix -> (tenant, key hash, tenant disabled), kept ``ttl`` seconds per process, so
    a request does not cost a database round trip to authenticate.

    The presented key is still hashed and compared in constant time with the
    stored hash on every request; only the lookup is cached, and only for keys
    that exist. A revocation is published on ``REVOKED_CHANNEL`` and every web
    process drops the key as it hears it (within a second); a process that
    cannot hear it (Redis down) drops it when the entry expires, after at most
    ``ttl`` seconds (SLA_API_KEY_CACHE_SECONDS; 0 disables the cache).
    Disabling or enabling a tenant (``flask tenants disable``) broadcasts each
    of its keys the same way.
    """

    MAX_ENTRIES = 10_000

    def __init__(self, ttl: float, redis_url: str | None = None, redis_timeout: float = 2) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[UUID, str, bool, float]] = {}
        # Bumped by every forget: a lookup that began before a revocation was
        # heard must not cache what it read.
        self._generation = 0
        self._lock = threading.Lock()
        self._redis_url = redis_url
        self._redis_timeout = redis_timeout
        self._publisher = (
            None
            if redis_url is None
            else redis.Redis.from_url(
                redis_url, socket_timeout=redis_timeout, socket_connect_timeout=redis_timeout
            )
        )
        self.listener: RevocationListener | None = None

    def forget(self, prefix: str) -> None:
        with self._lock:
            self._entries.pop(prefix, None)
            self._generation += 1

    def forget_all(self) -> None:
        with self._lock:
            self._entries.clear()
            self._generation += 1

    def revoked(self, prefix: str) -> None:
        """Drop a key revoked in the database here, and tell the other processes."""
        self.forget(prefix)
        if self._publisher is None:
            return
        try:
            self._publisher.publish(REVOKED_CHANNEL, prefix)
        except redis.RedisError as exc:
            log.warning(
                "revocation of API key %s not broadcast (%s): other web processes drop it "
                "within SLA_API_KEY_CACHE_SECONDS",
                prefix,
                exc,
            )

    def _listen(self) -> None:
        """Start this process's listener on first use (threads do not survive a fork)."""
        if self._redis_url is None or self.ttl <= 0:
            return
        listener = self.listener
        if listener is not None and listener.pid == os.getpid():
            return
        with self._lock:
            if self.listener is None or self.listener.pid != os.getpid():
                self.listener = RevocationListener(self, self._redis_url, self._redis_timeout)
                self.listener.start()

    def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()

    def tenant_for(self, key: str, engine) -> tuple[UUID, bool] | None:
        """(tenant, whether it is disabled) of a valid key; None for any other."""
        prefix = api_keys.key_prefix(key)
        if prefix is None:
            return None
        now = time.monotonic()
        entry = self._entries.get(prefix)
        if entry is None or entry[3] <= now:
            self._listen()
            generation = self._generation
            with engine.connect() as conn:
                record = tenant_sql.api_key_record(conn, prefix)
            if record is None:
                self._entries.pop(prefix, None)
                return None
            entry = (*record, now + self.ttl)
            if self.ttl > 0:
                with self._lock:
                    if len(self._entries) >= self.MAX_ENTRIES:
                        self._entries.clear()
                    if generation == self._generation:
                        self._entries[prefix] = entry
        tenant_id, key_hash, disabled, _ = entry
        return (tenant_id, disabled) if api_keys.key_matches(key_hash, key) else None


class RevocationListener(threading.Thread):
    """Subscribes to ``REVOKED_CHANNEL`` and makes the cache forget what it hears.

    Revocations published while it is not subscribed are lost to it, so each
    (re)subscription empties the cache: what was revoked meanwhile is looked
    up again. A PING every ``HEARTBEAT_SECONDS`` shows a connection that died
    silently; any failure reconnects with exponential backoff (with jitter).
    """

    HEARTBEAT_SECONDS = 5.0
    BACKOFF_SECONDS = (0.1, 5.0)  # first, longest

    def __init__(self, cache: ApiKeyCache, redis_url: str, timeout: float) -> None:
        super().__init__(name="sla-api-key-revocations", daemon=True)
        # Weak: the thread ends with the cache (an app that is gone, as in tests).
        self._cache = weakref.ref(cache)
        self.redis_url = redis_url
        self.timeout = timeout
        self.pid = os.getpid()
        self.subscribed = threading.Event()
        self._stopping = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def _live_cache(self) -> ApiKeyCache:
        cache = self._cache()
        if cache is None:
            self.stop()
            raise LookupError("the API key cache is gone")
        return cache

    def run(self) -> None:
        self.failures = 0
        while not self._stopping.is_set() and self._cache() is not None:
            try:
                self._subscribe_and_listen()
            except LookupError:
                return
            except Exception as exc:
                first, longest = self.BACKOFF_SECONDS
                delay = min(longest, first * 2**self.failures) * random.uniform(0.5, 1)
                if self.failures == 0:
                    log.warning("API key revocations: not subscribed (%s); retrying", exc)
                self.failures += 1
                self._stopping.wait(delay)

    def _subscribe_and_listen(self) -> None:
        client = redis.Redis.from_url(
            self.redis_url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
        )
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(REVOKED_CHANNEL)
            last_heard = last_ping = time.monotonic()
            while not self._stopping.is_set():
                self._live_cache()
                message = pubsub.get_message(timeout=0.5)
                now = time.monotonic()
                if message is not None:
                    last_heard = now
                    if message["type"] == "subscribe":
                        self._live_cache().forget_all()
                        self.failures = 0
                        self.subscribed.set()
                        log.info("API key revocations: subscribed to %s", REVOKED_CHANNEL)
                    elif message["type"] == "message":
                        self._live_cache().forget(message["data"].decode("ascii", "replace"))
                if now - last_ping >= self.HEARTBEAT_SECONDS:
                    pubsub.ping()
                    last_ping = now
                if now - last_heard > 2 * self.HEARTBEAT_SECONDS + self.timeout:
                    raise redis.ConnectionError("no answer to PING")
        finally:
            self.subscribed.clear()
            pubsub.close()
            client.close()


def authenticate_tenant() -> UUID:
    token = bearer_token()
    challenge = 'Bearer realm="sla-timers"'
    if token is None:
        raise _unauthorized("an API key is required: Authorization: Bearer <key>", challenge)
    match = None
    # Logs name a key by its prefix only, never by the secret.
    g.api_key_prefix = None
    if _KEY_SHAPE.fullmatch(token):
        g.api_key_prefix = api_keys.key_prefix(token)
        found = services()
        match = found.api_keys.tenant_for(token, found.engine)
    if match is None:
        log.info("refused API key %s", g.api_key_prefix or "(not an API key)")
        raise _unauthorized("the API key is not valid", f'{challenge}, error="invalid_token"')
    tenant_id, disabled = match
    if disabled:
        log.info("refused API key %s: its tenant is disabled", g.api_key_prefix)
        raise ApiProblem(403, "the tenant of this API key is disabled")
    g.tenant_id = tenant_id
    logs.bind(tenant_id=tenant_id)  # unbound with the request (web/logs.py)
    return tenant_id


def token_matches(candidate: str | None, token: str) -> bool:
    return candidate is not None and hmac.compare_digest(
        candidate.encode("utf-8", "replace"), token.encode("utf-8")
    )


def authenticate_admin() -> None:
    """Admin routes do not exist (404) unless SLA_ADMIN_TOKEN is set."""
    token = services().settings.admin_token
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
