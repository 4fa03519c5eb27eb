-- What closing a timer records so nothing of it can fire any more: its
-- remaining (step, repeat) runs and warnings, SKIPPED. The rows already
-- recorded (fired, sent, or skipped before) keep theirs: the unique keys make
-- every insert here a no-op for them, and the firing path's inserts a no-op
-- for these.

-- name: skip_remaining_steps
-- Record the (step, repeat) runs closing timers have not run as SKIPPED, so they can never fire.
-- A repeating step has 1 + max_repeats runs (:repeat_cap without max_repeats,
-- as models.sla.Step.repeats); the runs already recorded keep their row.
INSERT INTO sla_escalation_events (
    tenant_id, lead_id, timer_id, escalation_step, repeat, executed_at, outcome,
    escalation_config, correlation_id, idempotency_key)
SELECT t.tenant_id, t.lead_id, t.id, (s ->> 'step')::int, r.repeat,
       coalesce(CAST(:now AS timestamptz), now()), 'SKIPPED',
       s, t.correlation_id,
       t.id::text || '-' || (s ->> 'step')
           || CASE WHEN r.repeat > 0 THEN '-r' || r.repeat ELSE '' END
FROM sla_timers t
CROSS JOIN LATERAL jsonb_array_elements(t.escalation_steps) AS s
CROSS JOIN LATERAL generate_series(
    0,
    CASE WHEN coalesce((s ->> 'repeat_every_seconds')::int, 0) > 0
         THEN coalesce((s ->> 'max_repeats')::int, :repeat_cap) ELSE 0 END
) AS r(repeat)
WHERE t.id = ANY(:ids)
ON CONFLICT DO NOTHING

-- name: skip_remaining_warnings
-- Record the warnings closing timers have not sent as SKIPPED, so they can never be sent.
INSERT INTO sla_timer_warnings (
    tenant_id, timer_id, threshold, outcome, scheduled_at, recorded_at, correlation_id)
SELECT w.tenant_id, w.timer_id, w.threshold, 'SKIPPED', w.scheduled_at,
       coalesce(CAST(:now AS timestamptz), now()), w.correlation_id
FROM jsonb_to_recordset(CAST(:warnings AS jsonb)) AS w(
    tenant_id uuid, timer_id uuid, threshold int, scheduled_at timestamptz,
    correlation_id text)
ON CONFLICT DO NOTHING
