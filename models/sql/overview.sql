-- The admin's overview of every tenant (models/overview.py). Run by the
-- maintenance role, which alone sees every tenant's rows.

-- name: tenants_page
-- Up to :limit tenants by name (and id, for equal names), after the position (:name, :id).
SELECT id, name FROM tenants
WHERE CAST(:name AS text) IS NULL OR (name, id) > (CAST(:name AS text), CAST(:id AS uuid))
ORDER BY name, id
LIMIT :limit
