-- Timers, the API side: start, read, list, cancel and complete.
--
-- The database's clock decides when a timer closes (and so whether it
-- breached): hosts' clocks may be skewed, the database's is the one all share.
-- Statements write it as coalesce(CAST(:now AS timestamptz), now()): tests pass
-- an instant in :now, production passes NULL. now() (the transaction's start)
-- rather than clock_timestamp(): it is stable within a statement.
--
-- "Open" is status IN ('ACTIVE', 'DUE', 'ESCALATED', 'PAUSED'), spelled out so the
-- planner matches the open-timer partial index; models.schema.OPEN_STATUSES
-- holds the same list (a unit test compares them).

-- name: timer_by_id
-- One of a tenant's timers.
SELECT * FROM sla_timers WHERE tenant_id = :tenant AND id = :id

-- name: lock_timer
-- One of a tenant's timers, locked for a change of state.
SELECT * FROM sla_timers WHERE tenant_id = :tenant AND id = :id FOR UPDATE

-- name: start_timers
-- Lock the starts' (tenant, lead, contract) pairs, insert the timers and their started events.
-- It takes the advisory locks of every pair first, in hash order so
-- overlapping starts queue instead of deadlocking, then inserts the timers and
-- their sla.timer.started events. The insert cannot start before the
-- ``locked`` row exists.
--
-- A timer that conflicts with any unique index is skipped, not an error: its
-- lead and contract has an open timer (to supersede first), its idempotency key
-- is taken (a replay or a conflict), or the same start exists; the caller tells
-- these apart with later statements. Taking the lock inside the statement is
-- safe because nothing here depends on the statement's snapshot (taken before
-- the lock): unique checks see every committed row, and in READ COMMITTED a
-- conflict with a row committed after the snapshot is still a DO NOTHING.
--
-- The database's clock dates what the request does not: a start without
-- started_at, hence its due_at and first fire time, and the bookkeeping
-- (created_at, the started event). A web host's clock may be skewed, and a
-- timer dated by a clock running behind would fire early. statement_timestamp()
-- is one instant for the whole statement, so a bulk start shares it.
WITH locked AS MATERIALIZED (
    SELECT count(pg_advisory_xact_lock(k)) AS n FROM (
        SELECT DISTINCT hashtextextended(CAST(:tenant AS text) || '/' || p.lead_id || '/'
                                         || p.sla_contract_id, 0) AS k
        FROM jsonb_to_recordset(CAST(:timers AS jsonb)) AS p(lead_id text, sla_contract_id text)
        ORDER BY k
    ) AS keys
),
inserted AS (
    INSERT INTO sla_timers (
        id, tenant_id, lead_id, sla_contract_id, started_at, due_at, window_seconds,
        correlation_id, idempotency_key, request_fingerprint, escalation_steps, metadata,
        calendar, warning_thresholds, contract_version, contract_snapshot,
        next_fire_at, created_at, updated_at)
    SELECT n.id, :tenant, n.lead_id, n.sla_contract_id, started.at, due.at,
           n.window_seconds, n.correlation_id, n.idempotency_key, n.request_fingerprint,
           n.escalation_steps, n.metadata, n.calendar,
           coalesce(n.warning_thresholds, '{}'), n.contract_version, n.contract_snapshot,
           coalesce(n.next_fire_at, due.at), statement_timestamp(), statement_timestamp()
    FROM locked, jsonb_to_recordset(CAST(:timers AS jsonb)) AS n(
        id uuid, lead_id text, sla_contract_id text, started_at timestamptz,
        due_at timestamptz, window_seconds int, correlation_id text, idempotency_key text,
        request_fingerprint text, escalation_steps jsonb, metadata jsonb, calendar jsonb,
        warning_thresholds int[], contract_version int, contract_snapshot jsonb,
        next_fire_at timestamptz, unresolved boolean)
    CROSS JOIN LATERAL (SELECT coalesce(n.started_at, statement_timestamp()) AS at) AS started
    CROSS JOIN LATERAL (
        SELECT coalesce(n.due_at, started.at + make_interval(secs => n.window_seconds)) AS at
    ) AS due
    -- An unresolved start (a plain "default" start on the fast path) is
    -- skipped when the tenant defined a contract by that name: the caller
    -- resolves it and starts it again. One probe of a primary key, no round trip.
    WHERE NOT (n.unresolved AND EXISTS (
        SELECT FROM sla_contracts k
        WHERE k.tenant_id = :tenant AND k.contract_id = n.sla_contract_id))
    ON CONFLICT DO NOTHING
    RETURNING *
),
started AS (
    INSERT INTO outbox_events
        (tenant_id, timer_id, event_type, payload, correlation_id, idempotency_key,
         created_at)
    -- The event tells the times the row holds, which only this statement knows.
    SELECT e.tenant_id, e.timer_id, e.event_type,
           e.payload || jsonb_build_object('started_at', inserted.started_at,
                                           'due_at', inserted.due_at,
                                           'occurred_at', inserted.created_at),
           e.correlation_id, e.idempotency_key, inserted.created_at
    FROM jsonb_to_recordset(CAST(:events AS jsonb)) AS e(
        tenant_id uuid, timer_id uuid, event_type text, payload jsonb,
        correlation_id text, idempotency_key text)
    JOIN inserted ON inserted.id = e.timer_id
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
)
SELECT * FROM inserted

-- name: timers_by_keys
-- A tenant's timers stored under some idempotency keys (replays).
SELECT * FROM sla_timers WHERE tenant_id = :tenant AND idempotency_key = ANY(:keys)

-- name: open_for_pairs
-- The open timers of some (lead, contract) pairs, locked in id order.
-- The firing path and the lead routes lock in id order too. Each pair is one
-- probe of the open-timer index (LIMIT 1: it holds at most one), whatever the
-- statistics say; a plain join can turn into a scan of every open timer of the
-- tenant. A timer that a cancel or complete closes meanwhile is not returned:
-- the locking read re-checks the row once the closing transaction commits.
WITH found AS MATERIALIZED (
    SELECT o.id
    FROM unnest(CAST(:leads AS text[]), CAST(:contracts AS text[])) AS p(lead_id, contract)
    CROSS JOIN LATERAL (
        SELECT s.id FROM sla_timers s
        WHERE s.tenant_id = :tenant AND s.lead_id = p.lead_id
          AND s.sla_contract_id = p.contract AND s.status IN ('ACTIVE', 'DUE', 'ESCALATED', 'PAUSED')
        LIMIT 1
    ) AS o
)
SELECT t.* FROM sla_timers t
WHERE t.id = ANY(ARRAY(SELECT id FROM found)) AND t.status IN ('ACTIVE', 'DUE', 'ESCALATED', 'PAUSED')
ORDER BY t.id
FOR UPDATE

-- name: close_timers
-- Cancel or complete timers (locked by the caller), dated by the database's clock.
-- :at, when given, is the instant the lead was handled (a lead event's
-- occurred_at): it dates completed_at or cancelled_at and decides breached,
-- while updated_at still tells when the row changed.
UPDATE sla_timers SET
    status = :status,
    cancelled_at = CASE WHEN :status = 'CANCELLED'
                        THEN coalesce(CAST(:at AS timestamptz), CAST(:now AS timestamptz),
                                      now()) END,
    completed_at = CASE WHEN :status = 'COMPLETED'
                        THEN coalesce(CAST(:at AS timestamptz), CAST(:now AS timestamptz),
                                      now()) END,
    cancel_reason = CASE WHEN :status = 'CANCELLED' THEN :reason END,
    -- Met when handled at or before the due instant.
    breached = CASE WHEN :status = 'COMPLETED'
                    THEN due_at < coalesce(CAST(:at AS timestamptz), CAST(:now AS timestamptz),
                                           now()) END,
    -- A dead-lettered timer keeps FAILED so the failure stays visible.
    processing_status = CASE WHEN processing_status = 'FAILED' THEN 'FAILED'
                             ELSE 'COMPLETED' END,
    next_fire_at = NULL, claim_token = NULL, lease_expires_at = NULL,
    updated_at = coalesce(CAST(:now AS timestamptz), now())
WHERE id = ANY(:ids)
RETURNING *

-- name: lead_open_timers
-- A lead's open timers (of one contract, if given), locked in id order.
SELECT * FROM sla_timers
WHERE tenant_id = :tenant AND lead_id = :lead AND status = ANY(:open)
  AND (CAST(:contract AS text) IS NULL OR sla_contract_id = :contract)
ORDER BY id  -- the firing path locks in id order too: no deadlock
FOR UPDATE

-- name: escalations_for
-- The step rows of several of a tenant's timers, in the order they were recorded.
SELECT timer_id, escalation_step, repeat, executed_at, outcome, error_message,
       escalation_config
FROM sla_escalation_events
WHERE tenant_id = :tenant AND timer_id = ANY(:ids)
ORDER BY timer_id, executed_at, escalation_step, repeat

-- name: list_timers
-- A page of a tenant's timers, newest first, keyset-paginated on (created_at, id).
SELECT * FROM sla_timers
WHERE tenant_id = :tenant
  AND (CAST(:lead AS text) IS NULL OR lead_id = :lead)
  AND (CAST(:status AS text) IS NULL OR status = :status)
  AND (CAST(:processing AS text) IS NULL OR processing_status = :processing)
  AND (CAST(:c_at AS timestamptz) IS NULL
       OR (created_at, id) < (CAST(:c_at AS timestamptz), CAST(:c_id AS uuid)))
ORDER BY created_at DESC, id DESC
LIMIT :limit
