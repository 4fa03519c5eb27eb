"""API key revocation across web processes.

Each ``create_app`` has its own ``ApiKeyCache``, as each web process does. A
revocation is published on ``sla:api-keys:revoked``; every process's listener
drops the key within a second. With Redis unreachable the revocation still
takes effect in the other processes when their cache entry expires.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator

import pytest

from models import keys as api_keys
from models import tenants as tenant_sql
from tests.support.common import redis_conn, wait_until
from tests.support.outage_proxy import OutageProxy
from web.auth import REVOKED_CHANNEL

ADMIN_TOKEN = "revocation-admin-token"
BROADCAST_S = 1.0


@pytest.fixture
def apps(engine, settings) -> Iterator:
    """make(**changes) -> a new app (a web process of its own), closed afterwards."""
    from web import create_app

    made = []

    def make(**changes):
        app = create_app(dataclasses.replace(settings, admin_token=ADMIN_TOKEN, **changes))
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["sla"].api_keys.close()


def _accepts(app, key: str) -> bool:
    response = app.test_client().get("/v1/timers", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code in (200, 401), response.get_json()
    return response.status_code == 200


def _revoke(app, tenant) -> None:
    tenant_id, key = tenant
    response = app.test_client().delete(
        f"/v1/admin/tenants/{tenant_id}/api-keys/{api_keys.key_prefix(key)}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 200, response.get_json()


def _listening(app, key: str) -> None:
    """Wait until the app's listener is subscribed, then cache ``key`` in it
    (subscribing empties the cache)."""
    listener = app.extensions["sla"].api_keys.listener
    assert listener is not None, "the listener starts with the first lookup"
    assert listener.subscribed.wait(5), "the listener did not subscribe"
    assert _accepts(app, key)


def test_a_revocation_reaches_another_web_process_within_a_second(apps, tenant):
    one, other = apps(), apps()
    assert _accepts(one, tenant[1]) and _accepts(other, tenant[1])  # cached in both
    _listening(other, tenant[1])

    t0 = time.monotonic()
    _revoke(one, tenant)
    assert not _accepts(one, tenant[1])  # the revoking process: at once
    wait_until(lambda: not _accepts(other, tenant[1]), BROADCAST_S, "the other process to refuse")
    print(f"\n[revocation] other process refused the key after {time.monotonic() - t0:.3f} s")


def test_a_revocation_from_the_cli_reaches_the_web_processes(apps, tenant):
    web, cli = apps(), apps()
    assert _accepts(web, tenant[1])
    _listening(web, tenant[1])
    result = cli.test_cli_runner().invoke(
        args=["tenants", "revoke-key", str(tenant[0]), api_keys.key_prefix(tenant[1])]
    )
    assert result.exit_code == 0, result.output
    wait_until(lambda: not _accepts(web, tenant[1]), BROADCAST_S, "the web process to refuse")


def test_the_message_is_the_keys_prefix(apps, tenant):
    app = apps()
    subscriber = redis_conn().pubsub()
    subscriber.subscribe(REVOKED_CHANNEL)
    confirmed = wait_until(lambda: subscriber.get_message(timeout=0.1), 2, "the subscription")
    assert confirmed["type"] == "subscribe"
    _revoke(app, tenant)
    message = wait_until(lambda: subscriber.get_message(timeout=0.1), 2, "the broadcast")
    assert (message["type"], message["data"]) == (
        "message",
        api_keys.key_prefix(tenant[1]).encode(),
    )
    subscriber.close()


def test_with_redis_unreachable_a_revocation_takes_effect_at_the_cache_lifetime(apps, tenant):
    ttl = 3
    down = {"redis_url": "redis://127.0.0.1:1/0", "api_key_cache_seconds": ttl}
    one, other = apps(**down), apps(**down)
    # Taken before the request that caches the key: the entry's clock starts inside it.
    cached_at = time.monotonic()
    assert _accepts(other, tenant[1])

    t0 = time.monotonic()
    _revoke(one, tenant)  # the broadcast fails; the revocation does not
    assert time.monotonic() - t0 < 2 * 1 + 1.5  # at most the Redis timeouts
    assert not _accepts(one, tenant[1])
    if time.monotonic() - cached_at < ttl - 0.5:  # unless the machine was too slow to tell
        assert _accepts(other, tenant[1])  # nothing told it: its entry still holds
    wait_until(lambda: not _accepts(other, tenant[1]), ttl + 1, "the cache entry to expire")
    assert time.monotonic() - cached_at >= ttl


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_a_listener_that_reconnects_forgets_what_it_may_have_missed(
    mode, apps, tenant, engine, monkeypatch
):
    """Revocations published while a listener is not subscribed are lost to
    it: it empties its cache when it subscribes again. A blackholed Redis
    answers nothing, not even the heartbeat's PING (shortened here)."""
    from web.auth import RevocationListener

    monkeypatch.setattr(RevocationListener, "HEARTBEAT_SECONDS", 0.3)
    with OutageProxy.for_url(os.environ["REDIS_URL"]) as p:
        app = apps(redis_url=p.url_for(os.environ["REDIS_URL"]), redis_timeout_seconds=1)
        assert _accepts(app, tenant[1])
        _listening(app, tenant[1])
        listener = app.extensions["sla"].api_keys.listener
        p.down(mode)
        wait_until(lambda: not listener.subscribed.is_set(), 5, "the listener to notice")
        with engine.begin() as conn:  # revoked while nobody listens
            assert tenant_sql.revoke_api_key(conn, tenant[0], api_keys.key_prefix(tenant[1]))
        assert _accepts(app, tenant[1])  # the cached entry, within its lifetime
        p.up()
        assert listener.subscribed.wait(10), "the listener did not come back"
        assert not _accepts(app, tenant[1])


def test_the_listener_ends_with_its_cache(engine, settings, tenant):
    import gc

    from web import create_app

    app = create_app(settings)
    assert _accepts(app, tenant[1])
    listener = app.extensions["sla"].api_keys.listener
    assert listener.subscribed.wait(5)
    del app
    gc.collect()
    listener.join(5)
    assert not listener.is_alive()
