-- Pause and resume: a paused timer neither warns nor escalates; on resume its
-- schedule moves by the working time it was paused (models/sla.py).
--
-- The caller locks the rows first (FOR UPDATE, in id order, as every path
-- that changes a timer's state), so these statements see the latest state.
-- The database's clock dates both, as every other change of state.

-- name: db_now
-- The database's time of the transaction (what pause_timers wrote into paused_at).
SELECT coalesce(CAST(:now AS timestamptz), now()) AS now

-- name: pause_timers
-- Pause open timers that are not paused: nothing of them is due any more, and a claim on them is void.
-- Clearing claim_token is what stops a firing batch that claimed the timer
-- before the pause: its writes only touch rows that still carry its token (as
-- after a cancel). A dead letter stays FAILED.
UPDATE sla_timers SET
    status = 'PAUSED',
    paused_from = status,
    paused_at = coalesce(CAST(:now AS timestamptz), now()),
    pause_reason = :reason,
    next_fire_at = NULL,
    claim_token = NULL,
    lease_expires_at = NULL,
    processing_status = CASE WHEN processing_status = 'PROCESSING' THEN 'PENDING'
                             ELSE processing_status END,
    updated_at = coalesce(CAST(:now AS timestamptz), now())
WHERE id = ANY(:ids) AND status IN ('ACTIVE', 'DUE', 'ESCALATED')
RETURNING *

-- name: resume_timers
-- Resume paused timers with their shifted schedule (computed by the caller).
UPDATE sla_timers t SET
    status = r.status,
    paused_at = NULL,
    pause_reason = NULL,
    paused_from = NULL,
    paused_seconds = t.paused_seconds + r.paused_seconds,
    shift_seconds = r.shift_seconds,
    due_at = r.due_at,
    next_fire_at = r.next_fire_at,
    processing_status = r.processing_status,
    updated_at = coalesce(CAST(:now AS timestamptz), now())
FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
    id uuid, status text, paused_seconds float8, shift_seconds float8, due_at timestamptz,
    next_fire_at timestamptz, processing_status text)
WHERE t.id = r.id AND t.status = 'PAUSED'
RETURNING t.*
