"""API keys: their form, generation and hashing (pure; no I/O).

A key is ``sla_<prefix>_<secret>``: 48 random bits of prefix in lowercase hex
that name it in logs and find its row, 256 bits of secret. Only a hash of the
whole key is stored, so a key is shown once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

API_KEY_PREFIX = "sla"
# What names a key (sla_<prefix>_<secret>): 48 random bits in lowercase hex.
KEY_PREFIX_PATTERN = "^[0-9a-f]{12}$"
_KEY_PREFIX = re.compile(KEY_PREFIX_PATTERN)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A new key and its prefix."""
    prefix = secrets.token_hex(6)
    return f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}", prefix


def is_key_prefix(prefix: str) -> bool:
    """Whether ``prefix`` has the form of a key's prefix (it may still name no key)."""
    return _KEY_PREFIX.fullmatch(prefix) is not None


def key_prefix(key: str) -> str | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX or not is_key_prefix(parts[1]):
        return None
    return parts[1]


def key_matches(key_hash: str, key: str) -> bool:
    """Constant-time comparison of a presented key with a stored hash."""
    return hmac.compare_digest(key_hash, hash_key(key))
