"""Webhook signing secrets and the Standard Webhooks signature (pure).

Secrets look like ``whsec_<base64 of 24 random bytes>``, the form Standard
Webhooks' libraries take. Signatures come from the ``standardwebhooks``
package, never hand-written HMAC: ``webhook-signature`` is the space-separated
list of ``v1,<base64>`` signatures, one per secret that currently signs (two
during a rotation's grace period), so a receiver holding either secret
verifies the message.
"""

from __future__ import annotations

import base64
import secrets as _random
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache

from standardwebhooks.webhooks import Webhook

PREFIX = "whsec_"
SECRET_BYTES = 24


def new_secret() -> str:
    return PREFIX + base64.b64encode(_random.token_bytes(SECRET_BYTES)).decode()


@lru_cache(maxsize=4096)
def _signer(secret: str) -> Webhook:
    # The constructor decodes the secret: once per secret, not once per request.
    return Webhook(secret)


def sign(secrets: Iterable[str], msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header for ``body`` sent as ``msg_id`` at ``timestamp``
    (whole seconds since the epoch), signed with each of ``secrets``."""
    at = datetime.fromtimestamp(timestamp, UTC)
    return " ".join(_signer(secret).sign(msg_id, at, body) for secret in secrets)


def headers(secrets: Iterable[str], msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers of one request."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secrets, msg_id, timestamp, body),
    }
