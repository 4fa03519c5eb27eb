"""Tenants and their API keys: the SQL side (models/sql/tenants.sql).

Functions take a SQLAlchemy ``Connection`` and leave transactions to the
caller. What a key looks like, and how it is hashed, is models/keys.py.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import Connection

from . import keys
from .sql import Queries

SQL = Queries("tenants.sql")


def enter_tenant(conn: Connection, tenant_id: UUID) -> None:
    """Scope the rest of this transaction to one tenant (row-level security)."""
    conn.execute(SQL.enter_tenant.text, {"tenant": str(tenant_id)})


def create_api_key(conn: Connection, tenant_id: UUID) -> tuple[str, dict[str, Any]]:
    """A new key and its record. Only a hash is stored, so the key is shown once."""
    key, prefix = keys.new_key()
    record = conn.execute(
        SQL.insert_api_key.text, {"t": tenant_id, "p": prefix, "h": keys.hash_key(key)}
    ).one()
    return key, dict(record._mapping)


def create_tenant(conn: Connection, name: str) -> tuple[UUID, str]:
    """A new tenant and its first API key; scopes the transaction to the new tenant."""
    tenant_id = uuid4()
    enter_tenant(conn, tenant_id)
    conn.execute(SQL.insert_tenant.text, {"id": tenant_id, "name": name})
    return tenant_id, create_api_key(conn, tenant_id)[0]


def tenant_exists(conn: Connection, tenant_id: UUID) -> bool:
    return conn.execute(SQL.tenant_exists.text, {"t": tenant_id}).first() is not None


def api_key_record(conn: Connection, prefix: str) -> tuple[UUID, str, bool] | None:
    """(tenant_id, key_hash, tenant disabled) of the unrevoked key with this prefix.

    Runs before the tenant is known: the API's role may read just the key row
    whose prefix the transaction names in ``app.api_key_prefix``; then, scoped
    to the key's tenant, the tenant's row.
    """
    conn.execute(SQL.enter_key_prefix.text, {"p": prefix})
    row = conn.execute(SQL.api_key_record.text, {"p": prefix}).first()
    if row is None:
        return None
    enter_tenant(conn, row.tenant_id)
    disabled_at = conn.execute(SQL.tenant_disabled_at.text, {"t": row.tenant_id}).scalar()
    return row.tenant_id, row.key_hash, disabled_at is not None


def tenant_for_api_key(conn: Connection, key: str) -> UUID | None:
    prefix = keys.key_prefix(key)
    record = None if prefix is None else api_key_record(conn, prefix)
    if record is None or not keys.key_matches(record[1], key):
        return None
    return record[0]


def list_api_keys(conn: Connection, tenant_id: UUID) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in conn.execute(SQL.list_api_keys.text, {"t": tenant_id})]


def list_tenants(conn: Connection) -> list[dict[str, Any]]:
    """Every tenant (``conn`` must see them all: the maintenance role)."""
    return [dict(r._mapping) for r in conn.execute(SQL.list_tenants.text)]


def set_disabled(conn: Connection, tenant_id: UUID, disabled: bool) -> dict[str, Any] | None:
    """Disable or enable a tenant (idempotent); None if there is no such tenant.
    The record names the tenant's unrevoked key prefixes, for the key caches."""
    row = conn.execute(SQL.set_tenant_disabled.text, {"t": tenant_id, "disabled": disabled})
    found = row.first()
    return None if found is None else dict(found._mapping)


def revoke_api_key(conn: Connection, tenant_id: UUID, prefix: str) -> dict[str, Any] | None:
    """Revoke one of the tenant's keys (idempotent); None if it has no such key."""
    row = conn.execute(SQL.revoke_api_key.text, {"t": tenant_id, "p": prefix}).first()
    return None if row is None else dict(row._mapping)
