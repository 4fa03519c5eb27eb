-- Calendars and contracts: a tenant's business-hours calendars and versioned
-- SLA contracts (models/contracts.py), and the lookup that resolves a start's
-- contract and calendar.
--
-- "Current, non-retired" is sla_contracts.retired_at IS NULL, the version
-- sla_contracts.current_version.

-- name: put_calendar
-- Create or replace a calendar; created tells which.
-- xmax is 0 on a row version this statement inserted, and the locker's
-- transaction id on one it updated: the one way an upsert tells the two apart.
INSERT INTO calendars (tenant_id, calendar_id, timezone, weekly_hours, holidays,
                       holiday_country, holiday_subdivision)
VALUES (:tenant, :calendar_id, :timezone, CAST(:weekly_hours AS jsonb),
        CAST(:holidays AS jsonb), :holiday_country, :holiday_subdivision)
ON CONFLICT (tenant_id, calendar_id) DO UPDATE SET
    timezone = EXCLUDED.timezone, weekly_hours = EXCLUDED.weekly_hours,
    holidays = EXCLUDED.holidays, holiday_country = EXCLUDED.holiday_country,
    holiday_subdivision = EXCLUDED.holiday_subdivision, updated_at = now()
RETURNING *, (xmax = 0) AS created

-- name: get_calendar
-- One of a tenant's calendars.
SELECT * FROM calendars WHERE tenant_id = :tenant AND calendar_id = :calendar_id

-- name: list_calendars
-- A page of a tenant's calendars by id, after an id.
SELECT * FROM calendars
WHERE tenant_id = :tenant AND (CAST(:after AS text) IS NULL OR calendar_id > :after)
ORDER BY calendar_id
LIMIT :limit

-- name: lock_calendar
-- Lock a calendar for deletion, and the current versions of live contracts that name it.
-- The row lock conflicts with the key-share lock a contract PUT takes on the
-- calendar it names, so a PUT and a DELETE of its calendar go one after the
-- other: either the DELETE sees the new version, or the PUT finds no calendar.
SELECT c.calendar_id,
       ARRAY(SELECT k.contract_id FROM sla_contracts k
             JOIN sla_contract_versions v
               ON v.tenant_id = k.tenant_id AND v.contract_id = k.contract_id
              AND v.version = k.current_version
             WHERE k.tenant_id = :tenant AND k.retired_at IS NULL
               AND v.calendar_id = :calendar_id
             ORDER BY k.contract_id) AS contracts
FROM calendars c
WHERE c.tenant_id = :tenant AND c.calendar_id = :calendar_id
FOR UPDATE OF c

-- name: delete_calendar
-- Delete a calendar (locked by lock_calendar).
DELETE FROM calendars WHERE tenant_id = :tenant AND calendar_id = :calendar_id

-- name: share_calendar
-- Whether a calendar exists, kept from deletion until the transaction ends.
SELECT calendar_id FROM calendars
WHERE tenant_id = :tenant AND calendar_id = :calendar_id
FOR KEY SHARE

-- name: put_contract
-- Write a contract's next version (1 for a new contract) and make it current; a retired contract is revived.
-- The upsert locks the contract's row, so concurrent PUTs of one contract
-- queue on it and each writes the version after the last committed one. The
-- version row's foreign key is checked at the end of the statement, when the
-- contract row exists.
WITH contract AS (
    INSERT INTO sla_contracts AS k (tenant_id, contract_id, current_version)
    VALUES (:tenant, :contract_id, 1)
    ON CONFLICT (tenant_id, contract_id) DO UPDATE SET
        current_version = k.current_version + 1, retired_at = NULL, updated_at = now()
    RETURNING tenant_id, contract_id, current_version, retired_at
)
INSERT INTO sla_contract_versions (
    tenant_id, contract_id, version, name, window_seconds, calendar_id,
    warning_thresholds, escalation_steps, pause_on, resume_on)
SELECT contract.tenant_id, contract.contract_id, contract.current_version, :name,
       :window_seconds, :calendar_id, CAST(:warning_thresholds AS integer[]),
       CAST(:escalation_steps AS jsonb), CAST(:pause_on AS text[]), CAST(:resume_on AS text[])
FROM contract
RETURNING *, version AS current_version, CAST(NULL AS timestamptz) AS retired_at

-- name: get_contract
-- One version of a tenant's contract (the current one when :version is NULL).
SELECT v.*, k.current_version, k.retired_at
FROM sla_contracts k
JOIN sla_contract_versions v ON v.tenant_id = k.tenant_id AND v.contract_id = k.contract_id
WHERE k.tenant_id = :tenant AND k.contract_id = :contract_id
  AND v.version = coalesce(CAST(:version AS integer), k.current_version)

-- name: list_contracts
-- A page of a tenant's contracts by id, each at its current version.
SELECT v.*, k.current_version, k.retired_at
FROM sla_contracts k
JOIN sla_contract_versions v ON v.tenant_id = k.tenant_id AND v.contract_id = k.contract_id
                            AND v.version = k.current_version
WHERE k.tenant_id = :tenant AND (CAST(:after AS text) IS NULL OR k.contract_id > :after)
ORDER BY k.contract_id
LIMIT :limit

-- name: retire_contract
-- Retire a contract (idempotent: the first retirement's instant stays).
UPDATE sla_contracts SET retired_at = coalesce(retired_at, now()), updated_at = now()
WHERE tenant_id = :tenant AND contract_id = :contract_id
RETURNING retired_at

-- name: resolve
-- The current versions of some contracts with their calendars, some calendars by id, and the database's clock.
-- One row, one round trip for a whole bulk start: each distinct contract
-- once. The clock dates the starts that give no started_at (a host's clock
-- may be skewed, and one running behind would make timers fire early).
SELECT statement_timestamp() AS now,
       (SELECT coalesce(jsonb_object_agg(
                   k.contract_id,
                   to_jsonb(v) || jsonb_build_object('retired_at', k.retired_at,
                                                     'calendar', to_jsonb(c))), '{}')
        FROM sla_contracts k
        JOIN sla_contract_versions v
          ON v.tenant_id = k.tenant_id AND v.contract_id = k.contract_id
         AND v.version = k.current_version
        LEFT JOIN calendars c ON c.tenant_id = k.tenant_id AND c.calendar_id = v.calendar_id
        WHERE k.tenant_id = :tenant AND k.contract_id = ANY(CAST(:contracts AS text[])))
       AS contracts,
       (SELECT coalesce(jsonb_object_agg(c.calendar_id, to_jsonb(c)), '{}')
        FROM calendars c
        WHERE c.tenant_id = :tenant AND c.calendar_id = ANY(CAST(:calendars AS text[])))
       AS calendars
