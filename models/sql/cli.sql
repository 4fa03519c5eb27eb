-- The operator's CLI (web/cli.py). Runs as the maintenance role: every tenant.

-- name: timer_tenant
-- The tenant of a timer, found by its id alone.
SELECT tenant_id FROM sla_timers WHERE id = :id

-- name: alembic_revisions
-- The schema's revisions, as alembic recorded them.
SELECT version_num FROM alembic_version

-- name: relations_present
-- Which of the named tables, indexes and constraints exist in the current schema.
SELECT c.relname AS name FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace
  AND c.relname = ANY(CAST(:names AS text[]))
UNION
SELECT conname FROM pg_constraint
WHERE connamespace = current_schema()::regnamespace
  AND conname = ANY(CAST(:names AS text[]))

-- name: row_security
-- Row-level security of the named tables: enabled, and forced on the owner too.
SELECT relname AS name, relrowsecurity AS enabled, relforcerowsecurity AS forced
FROM pg_class
WHERE relnamespace = current_schema()::regnamespace AND relkind = 'r'
  AND relname = ANY(CAST(:names AS text[]))

-- name: roles_present
-- Which of the named roles exist.
SELECT rolname FROM pg_roles WHERE rolname = ANY(CAST(:names AS text[]))
