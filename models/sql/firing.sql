-- The firing path: claim, lock, apply and release due timers; rescue expired
-- leases; re-arm dead letters; list upcoming wake-up instants.
--
-- The database's clock decides what is due, when a lease ends and what the
-- fire records: hosts' clocks may be skewed, the database's is the one all
-- share. Statements write it as coalesce(CAST(:now AS timestamptz), now()):
-- tests pass an instant in :now, production passes NULL. now() (the
-- transaction's start) rather than clock_timestamp(): it is stable within a
-- statement, so ``next_fire_at <= …`` stays an index condition.

-- name: claim_due
-- Mark up to :limit due timers PROCESSING under a claim token, skipping rows another claimer holds.
UPDATE sla_timers t SET
    processing_status = 'PROCESSING',
    claim_token = :token,
    lease_expires_at = coalesce(CAST(:now AS timestamptz), now())
                       + make_interval(secs => :lease),
    last_attempt_at = coalesce(CAST(:now AS timestamptz), now())
FROM (
    SELECT id FROM sla_timers
    WHERE processing_status = 'PENDING'
      AND next_fire_at <= coalesce(CAST(:now AS timestamptz), now())
    ORDER BY next_fire_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
) due
WHERE t.id = due.id
RETURNING t.id, t.tenant_id, t.lead_id, t.sla_contract_id, t.status, t.started_at,
          t.due_at, t.escalation_steps, t.steps_done, t.attempts, t.retries, t.last_error,
          t.correlation_id, t.created_at, t.window_seconds, t.calendar, t.warning_thresholds,
          t.warnings_done, t.shift_seconds, t.next_fire_at, t.last_attempt_at AS claimed_at

-- name: lock_claimed
-- Lock the claimed rows that still carry the token.
SELECT id FROM sla_timers
WHERE id = ANY(:ids) AND claim_token = :token
ORDER BY id  -- the order cancels lock in too: no deadlock
FOR UPDATE

-- name: release_claimed
-- Give claimed rows back (PENDING, next_fire_at unchanged) without counting an attempt.
UPDATE sla_timers SET
    processing_status = 'PENDING', claim_token = NULL, lease_expires_at = NULL,
    updated_at = now()
WHERE id = ANY(:ids) AND claim_token = :token

-- name: apply_fired
-- Write a planned batch: warnings, events, step runs with their events, new timer states.
-- ``ours`` locks the claimed rows that still carry our token: a timer
-- cancelled, completed, paused or rescued since the claim has lost it, and
-- nothing below touches it. A warning row is written at most once per (timer,
-- threshold) and a step row once per (timer, step, repeat); the event of
-- either only when its row is written here.
WITH ours AS (
    SELECT id FROM sla_timers
    WHERE id = ANY(:ids) AND claim_token = :token
    ORDER BY id
    FOR UPDATE
),
warnings AS (
    INSERT INTO sla_timer_warnings (
        tenant_id, timer_id, threshold, outcome, scheduled_at, recorded_at, correlation_id)
    SELECT w.tenant_id, w.timer_id, w.threshold, w.outcome, w.scheduled_at, :now,
           w.correlation_id
    FROM jsonb_to_recordset(CAST(:warnings AS jsonb)) AS w(
        tenant_id uuid, timer_id uuid, threshold int, outcome text, scheduled_at timestamptz,
        correlation_id text)
    JOIN ours ON ours.id = w.timer_id
    ON CONFLICT DO NOTHING
    RETURNING tenant_id, timer_id, threshold
),
steps AS (
    INSERT INTO sla_escalation_events (
        tenant_id, lead_id, timer_id, escalation_step, repeat, executed_at, outcome,
        escalation_config, correlation_id, error_message, idempotency_key)
    SELECT s.tenant_id, s.lead_id, s.timer_id, s.escalation_step, s.repeat, :now, s.outcome,
           s.escalation_config, s.correlation_id, s.error_message,
           s.timer_id::text || '-' || s.escalation_step
               || CASE WHEN s.repeat > 0 THEN '-r' || s.repeat ELSE '' END
    FROM jsonb_to_recordset(CAST(:steps AS jsonb)) AS s(
        tenant_id uuid, lead_id text, timer_id uuid, escalation_step int, repeat int,
        outcome text, escalation_config jsonb, correlation_id text, error_message text)
    JOIN ours ON ours.id = s.timer_id
    ON CONFLICT DO NOTHING
    RETURNING tenant_id, timer_id, escalation_step, repeat
),
events AS (
    INSERT INTO outbox_events
        (tenant_id, timer_id, event_type, payload, correlation_id, idempotency_key,
         created_at)
    SELECT tenant_id, timer_id, event_type, payload, correlation_id, idempotency_key, :now
    FROM (
        SELECT e.*, 0 AS seq
        FROM jsonb_to_recordset(CAST(:events AS jsonb)) AS e(
            tenant_id uuid, timer_id uuid, event_type text, payload jsonb,
            correlation_id text, idempotency_key text)
        JOIN ours ON ours.id = e.timer_id
        UNION ALL
        SELECT e.tenant_id, e.timer_id, e.event_type, e.payload, e.correlation_id,
               e.idempotency_key, e.seq
        FROM jsonb_to_recordset(CAST(:warning_events AS jsonb)) AS e(
            tenant_id uuid, timer_id uuid, event_type text, payload jsonb,
            correlation_id text, idempotency_key text, threshold int, seq int)
        JOIN warnings w ON w.tenant_id = e.tenant_id AND w.timer_id = e.timer_id
                       AND w.threshold = e.threshold
        UNION ALL
        SELECT e.tenant_id, e.timer_id, e.event_type, e.payload, e.correlation_id,
               e.idempotency_key, e.seq
        FROM jsonb_to_recordset(CAST(:step_events AS jsonb)) AS e(
            tenant_id uuid, timer_id uuid, event_type text, payload jsonb,
            correlation_id text, idempotency_key text, step int, repeat int, seq int)
        JOIN steps s ON s.tenant_id = e.tenant_id AND s.timer_id = e.timer_id
                    AND s.escalation_step = e.step AND s.repeat = e.repeat
    ) AS all_events
    -- Outbox order per timer: warnings (seq < 0), due, then the runs in firing order.
    ORDER BY timer_id, seq
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
)
UPDATE sla_timers t SET
    status = r.status,
    steps_done = r.steps_done,
    warnings_done = r.warnings_done,
    next_fire_at = r.next_fire_at,
    processing_status = r.processing_status,
    attempts = r.attempts,
    last_error = r.last_error,
    next_attempt_at = r.next_attempt_at,
    claim_token = NULL,
    lease_expires_at = NULL,
    updated_at = :now
FROM jsonb_to_recordset(CAST(:updates AS jsonb)) AS r(
    id uuid, status text, steps_done int, warnings_done int, next_fire_at timestamptz,
    processing_status text, attempts int, last_error text, next_attempt_at timestamptz)
JOIN ours ON ours.id = r.id
WHERE t.id = r.id
RETURNING t.id

-- name: rescue_expired
-- Return rows whose lease expired to PENDING, counting an attempt; dead-letter those at the limit.
-- A rescue is an attempt: a timer whose processing keeps killing its worker,
-- or outlasting its lease, is dead-lettered like one that keeps raising, with
-- its sla.timer.failed event in the same statement. Rows whose claimer still
-- holds their lock (a long batch at work) are skipped, not taken from it.
WITH expired AS (
    -- A claimed row keeps its (past) next_fire_at: the index finds it.
    SELECT id FROM sla_timers
    WHERE next_fire_at <= coalesce(CAST(:now AS timestamptz), now())
      AND processing_status = 'PROCESSING'
      AND lease_expires_at < coalesce(CAST(:now AS timestamptz), now())
    ORDER BY id
    FOR UPDATE SKIP LOCKED
),
rescued AS (
    UPDATE sla_timers t SET
        attempts = t.attempts + 1,
        processing_status = CASE WHEN t.attempts + 1 >= :max_attempts
                                 THEN 'FAILED' ELSE 'PENDING' END,
        next_fire_at = CASE WHEN t.attempts + 1 >= :max_attempts
                            THEN NULL ELSE t.next_fire_at END,
        next_attempt_at = NULL,
        claim_token = NULL, lease_expires_at = NULL,
        last_error = :error,
        updated_at = coalesce(CAST(:now AS timestamptz), now())
    FROM expired
    WHERE t.id = expired.id
    RETURNING t.*
),
failed AS (
    -- The payload of models.events.timer_event(timer, FAILED, …).
    INSERT INTO outbox_events
        (tenant_id, timer_id, event_type, payload, correlation_id, idempotency_key,
         created_at)
    SELECT tenant_id, id, 'sla.timer.failed',
           jsonb_build_object(
               'type', 'sla.timer.failed', 'timer_id', id, 'lead_id', lead_id,
               'sla_contract_id', sla_contract_id, 'started_at', started_at,
               'due_at', due_at, 'correlation_id', correlation_id,
               'occurred_at', updated_at, 'attempts', attempts, 'error', last_error),
           correlation_id, id::text || ':failed:' || retries, updated_at
    FROM rescued
    WHERE processing_status = 'FAILED'
    ORDER BY id
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
)
SELECT count(*) AS rescued, count(*) FILTER (WHERE processing_status = 'FAILED') AS failed
FROM rescued

-- name: rearm_failed
-- Put a dead-lettered timer back to PENDING, due now, with its attempts reset.
UPDATE sla_timers SET
    processing_status = 'PENDING', attempts = 0, retries = retries + 1,
    next_fire_at = now(), next_attempt_at = NULL,
    claim_token = NULL, lease_expires_at = NULL, updated_at = now()
WHERE id = :id
RETURNING *

-- name: upcoming_fire_times
-- The wake-up buckets (epoch ms, rounded up) of PENDING timers due in [start, end).
-- Bucketing here, not in Python, bounds the result by the horizon's length
-- (horizon / bucket rows) instead of the number of timers in it, so the whole
-- horizon is covered without a LIMIT whatever the rate. extract() is exact
-- (numeric), so the rounding matches models.sla.wakeup_instant's.
SELECT DISTINCT
       ceil(extract(epoch FROM next_fire_at) * 1000 / :bucket)::bigint * :bucket
FROM sla_timers
WHERE processing_status = 'PENDING'
  AND next_fire_at >= :start AND next_fire_at < :end
ORDER BY 1

-- name: warnings_for
-- The warning rows of several of a tenant's timers, in threshold order.
SELECT timer_id, threshold, outcome, scheduled_at, recorded_at
FROM sla_timer_warnings
WHERE tenant_id = :tenant AND timer_id = ANY(:ids)
ORDER BY timer_id, threshold
