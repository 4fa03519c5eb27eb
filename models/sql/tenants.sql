-- Tenants and their API keys. Statements run in the caller's transaction.

-- name: enter_tenant
-- Scope the rest of the transaction to one tenant (row-level security).
SELECT set_config('app.tenant_id', :tenant, true)

-- name: insert_tenant
-- A new tenant; the transaction is already scoped to it.
INSERT INTO tenants (id, name) VALUES (:id, :name)

-- name: tenant_exists
-- Whether the tenant exists.
SELECT 1 FROM tenants WHERE id = :t

-- name: insert_api_key
-- A new key: only its prefix and the hash of the whole key are stored.
INSERT INTO api_keys (tenant_id, prefix, key_hash) VALUES (:t, :p, :h)
RETURNING prefix, created_at, revoked_at

-- name: enter_key_prefix
-- Name the key this transaction may read before the tenant is known.
-- The API's role sees just the key row whose prefix app.api_key_prefix names.
SELECT set_config('app.api_key_prefix', :p, true)

-- name: api_key_record
-- The tenant and hash of the unrevoked key with this prefix.
SELECT tenant_id, key_hash FROM api_keys WHERE prefix = :p AND revoked_at IS NULL

-- name: tenant_disabled_at
-- When the tenant was disabled (NULL: enabled); the transaction is scoped to it.
SELECT disabled_at FROM tenants WHERE id = :t

-- name: list_api_keys
-- A tenant's keys, revoked ones included, oldest first.
SELECT prefix, created_at, revoked_at FROM api_keys WHERE tenant_id = :t
ORDER BY created_at, prefix

-- name: revoke_api_key
-- Revoke one of the tenant's keys; revoking again keeps the first instant.
UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
WHERE tenant_id = :t AND prefix = :p RETURNING prefix, created_at, revoked_at

-- name: list_tenants
-- Every tenant with its key counts, oldest first (the maintenance role sees all).
SELECT t.id, t.name, t.created_at, t.disabled_at,
       count(k.prefix) FILTER (WHERE k.revoked_at IS NULL) AS active_keys,
       count(k.prefix) AS keys
FROM tenants t LEFT JOIN api_keys k ON k.tenant_id = t.id
GROUP BY t.id ORDER BY t.created_at, t.id

-- name: set_tenant_disabled
-- Disable (keeping the first instant) or enable a tenant; its unrevoked key prefixes.
UPDATE tenants SET disabled_at = CASE WHEN :disabled THEN coalesce(disabled_at, now()) END
WHERE id = :t
RETURNING id, name, disabled_at,
          ARRAY(SELECT prefix FROM api_keys WHERE tenant_id = :t AND revoked_at IS NULL)
              AS prefixes
