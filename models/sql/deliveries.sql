-- Webhook delivery, the worker side: claim due deliveries, record their
-- attempts' outcomes, and find when the next one falls due.
--
-- As on the firing path the database's clock decides what is due and when a
-- lease ends: statements write coalesce(CAST(:now AS timestamptz), now()),
-- tests pass an instant in :now, production passes NULL.

-- name: claim_due
-- Claim up to :limit due deliveries under :token, each subscription within its in-flight room.
-- Subscriptions are visited in random order and locked (FOR NO KEY UPDATE
-- SKIP LOCKED: the fan-out trigger's foreign-key lock does not conflict with
-- it), so two claimers never count the same subscription's room at once and
-- one subscription's backlog cannot fill a batch while others wait. A
-- subscription's room is :max_in_flight (:failing_in_flight once it has had no
-- success for :failing_after seconds: a dead endpoint is probed by a few requests
-- at a time instead of holding many sending threads for a timeout each, while a
-- flaky one, failing some requests among successes, keeps its room) less its live claims
-- (PENDING rows whose lease has not ended; ix_webhook_deliveries_in_flight
-- counts them). A
-- delivery is held back while an earlier event of the same timer is still
-- PENDING for the subscription (per-timer order); first attempts wait for
-- :first_delay seconds after the event was written. A row under a live lease
-- (made due again by a retry request while in flight) is left to its claimer.
-- The claim moves next_attempt_at to the lease's end: a claim whose worker
-- died is due again then, and any claimer takes it over under a new token.
-- Within a subscription, due order (the index's) and nothing else: sorting on
-- a second key would read every due row of a backlog.
-- One statement, run in autocommit (one round trip), committed without waiting
-- for the WAL flush (``relaxed``): a claim lost in a crash only means the
-- delivery is claimed, and perhaps sent, again.
WITH relaxed AS (
    SELECT set_config('synchronous_commit', 'off', true)
),
subs AS (
    SELECT s.id, due.first_due,
           CASE WHEN s.failing_since IS NULL
                     OR s.failing_since > coalesce(CAST(:now AS timestamptz), now())
                                          - make_interval(secs => :failing_after)
                THEN :max_in_flight
                ELSE least(:max_in_flight, :failing_in_flight) END AS room
    FROM webhook_subscriptions s
    -- min() reads the first live entry of ix_webhook_deliveries_due; an EXISTS
    -- may be planned as a scan of the table, through every delivered row.
    CROSS JOIN LATERAL (
        SELECT min(w.next_attempt_at) AS first_due FROM webhook_deliveries w
        WHERE w.subscription_id = s.id AND w.status = 'PENDING'
    ) due
    WHERE s.enabled AND due.first_due <= coalesce(CAST(:now AS timestamptz), now())
    ORDER BY random()
    FOR NO KEY UPDATE OF s SKIP LOCKED
),
picked AS (
    SELECT p.tenant_id, p.id
    FROM subs
    CROSS JOIN LATERAL (
        SELECT w.tenant_id, w.id
        FROM webhook_deliveries w
        WHERE w.subscription_id = subs.id
          AND w.status = 'PENDING'
          -- From the first due entry that min() found: the index scan starts
          -- there instead of walking again through the dead entries of the
          -- deliveries already done, which stay in the index until a vacuum
          -- (or longer, while any transaction of the cluster is older).
          AND w.next_attempt_at >= subs.first_due
          AND w.next_attempt_at <= coalesce(CAST(:now AS timestamptz), now())
          AND (w.lease_expires_at IS NULL
               OR w.lease_expires_at <= coalesce(CAST(:now AS timestamptz), now()))
          AND (w.attempts > 0
               OR w.next_attempt_at
                  <= coalesce(CAST(:now AS timestamptz), now()) - make_interval(secs => :first_delay))
          -- The timer's first pending event here: the first entry of
          -- ix_webhook_deliveries_pending_timer, whose order this is. (A NOT
          -- EXISTS was planned on the due index whenever the statistics were
          -- stale, reading the subscription's whole backlog for each row.) The
          -- subscription is compared with IS NOT DISTINCT FROM (both sides are
          -- never NULL), which is no index condition: an equality let a table
          -- never analyzed be read through the due index, led by the
          -- subscription, at ≈ 20 ms a row with a 100,000-delivery backlog.
          AND (w.timer_id IS NULL OR w.event_id = (
              SELECT e.event_id FROM webhook_deliveries e
              WHERE e.timer_id = w.timer_id
                AND e.subscription_id IS NOT DISTINCT FROM w.subscription_id
                AND e.status = 'PENDING' AND e.timer_id IS NOT NULL
              ORDER BY e.timer_id, e.subscription_id, e.event_id
              LIMIT 1))
        ORDER BY w.next_attempt_at
        -- The live claims, read from ix_webhook_deliveries_in_flight: its order
        -- (lease_expires_at) makes it the only index that needs no sort. The
        -- due index also holds every claimed row, and a plan that counted
        -- through it walked a dead endpoint's whole backlog in every claim.
        LIMIT greatest(0, subs.room - (
            SELECT count(*) FROM (
                SELECT FROM webhook_deliveries f
                WHERE f.subscription_id = subs.id AND f.status = 'PENDING'
                  AND f.claim_token IS NOT NULL
                  AND f.lease_expires_at > coalesce(CAST(:now AS timestamptz), now())
                ORDER BY f.lease_expires_at
                LIMIT subs.room) live))
        FOR UPDATE OF w SKIP LOCKED
    ) p
    LIMIT :limit
)
UPDATE webhook_deliveries d SET
    claim_token = :token,
    lease_expires_at = coalesce(CAST(:now AS timestamptz), now()) + make_interval(secs => :lease),
    next_attempt_at = coalesce(CAST(:now AS timestamptz), now()) + make_interval(secs => :lease),
    last_attempt_at = coalesce(CAST(:now AS timestamptz), now())
FROM picked, webhook_subscriptions s, outbox_events e, relaxed
-- By the primary keys, (tenant_id, id): unique, so the planner reads one row
-- each even on tables never analyzed (a lone id index is not unique, and was
-- planned as a scan of the whole backlog).
WHERE d.tenant_id = picked.tenant_id AND d.id = picked.id AND s.id = d.subscription_id
  AND e.tenant_id = d.tenant_id AND e.id = d.event_id
-- Each row comes ready to send, in the order of models.deliveries.Claimed: the
-- envelope's exact text is built here (models/envelope.py's object: id, type,
-- timestamp in RFC 3339 UTC with microseconds, data = the payload less its type
-- plus tenant_id), so the worker neither decodes the payload nor encodes it again.
RETURNING d.id, d.tenant_id, d.subscription_id, d.attempts, s.url, s.secret,
          CASE WHEN s.previous_secret_expires_at > coalesce(CAST(:now AS timestamptz), now())
               THEN s.previous_secret END AS previous_secret,
          'evt_' || e.id AS webhook_id,
          '{"id":"evt_' || e.id || '","type":' || to_json(e.event_type)::text
              || ',"timestamp":"'
              || to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
              || '","data":'
              || (jsonb_build_object('tenant_id', d.tenant_id) || (e.payload - 'type'))::text
              || '}' AS body,
          e.correlation_id

-- name: record_outcomes
-- Record a round's attempts: the deliveries still carrying their token, an attempt row each, and their subscriptions' health.
-- The :o_* arrays hold one element per attempt (tenant_id, id, token, attempt,
-- status, delay, status_code, duration_ms, error; status and delay decided by
-- the caller from the schedule). Arrays, not a JSON document: unnest() of an
-- array is estimated at its length (10 in a generic plan), where
-- jsonb_to_recordset() counts as 100 rows, and with 100 the planner joined the
-- deliveries by a hash over a scan of the whole table, in every recording.
-- A delivery taken over since its claim (the token changed) is left alone and
-- gets no attempt row. :health holds one row per
-- subscription: ok (its last outcome of the round succeeded) and succeeded
-- (any did). A success ends the failure streak; a failure starts one if none
-- is running. A subscription failing for :disable_after seconds is disabled
-- at that failure; it is returned for its webhook.disabled event. Only
-- subscriptions with a recorded outcome change; last_success_at of a healthy
-- one is kept to the second.
WITH clock AS (
    -- Committed without waiting for the WAL flush: an outcome lost in a crash
    -- only means the delivery is sent again (at least once).
    SELECT coalesce(CAST(:now AS timestamptz), now()) AS at,
           set_config('synchronous_commit', 'off', true) AS relaxed
),
outcome AS (
    SELECT * FROM unnest(
        CAST(:o_tenant_id AS uuid[]), CAST(:o_id AS bigint[]), CAST(:o_token AS uuid[]),
        CAST(:o_attempt AS int[]), CAST(:o_status AS text[]), CAST(:o_delay AS float8[]),
        CAST(:o_status_code AS int[]), CAST(:o_duration_ms AS int[]), CAST(:o_error AS text[])
    ) AS r(tenant_id, id, token, attempt, status, delay, status_code, duration_ms, error)
),
recorded AS (
    UPDATE webhook_deliveries d SET
        status = o.status,
        attempts = o.attempt,
        next_attempt_at = CASE WHEN o.status = 'PENDING'
                               THEN clock.at + make_interval(secs => o.delay)
                               ELSE d.next_attempt_at END,
        claim_token = NULL,
        lease_expires_at = NULL,
        last_status_code = o.status_code,
        last_duration_ms = o.duration_ms,
        last_error = o.error,
        delivered_at = CASE WHEN o.status = 'DELIVERED' THEN clock.at ELSE d.delivered_at END
    FROM outcome o, clock
    WHERE d.tenant_id = o.tenant_id AND d.id = o.id AND d.claim_token = o.token
    RETURNING d.id, d.tenant_id, d.subscription_id, d.timer_id, d.event_id, d.status,
              d.next_attempt_at
),
held_back AS (
    -- A retry holds back the later events of its timer for the subscription
    -- (per-timer order), so their next attempt moves to the retry's: left
    -- earlier, they would sit blocked at the front of the due index, and every
    -- claim would walk through them (with one failing receiver in five and a
    -- backlog, tens of thousands of rows and ~150 ms a claim).
    UPDATE webhook_deliveries w SET next_attempt_at = r.next_attempt_at
    FROM recorded r
    WHERE r.status = 'PENDING' AND r.timer_id IS NOT NULL
      AND w.timer_id = r.timer_id AND w.subscription_id = r.subscription_id
      AND w.tenant_id = r.tenant_id AND w.status = 'PENDING' AND w.event_id > r.event_id
      AND w.next_attempt_at < r.next_attempt_at AND w.claim_token IS NULL
      AND w.id NOT IN (SELECT id FROM outcome)
),
attempts AS (
    INSERT INTO webhook_attempts
        (tenant_id, delivery_id, attempt, attempted_at, status_code, duration_ms, error)
    SELECT r.tenant_id, r.id, o.attempt,
           clock.at - make_interval(secs => o.duration_ms / 1000.0),
           o.status_code, o.duration_ms, o.error
    FROM recorded r JOIN outcome o ON o.id = r.id, clock
    ORDER BY r.id
),
health AS (
    SELECT * FROM jsonb_to_recordset(CAST(:health AS jsonb)) AS h(
        id uuid, ok boolean, succeeded boolean)
    WHERE h.id IN (SELECT subscription_id FROM recorded)
),
locked AS (
    -- In id order: two rounds touching the same subscriptions never deadlock.
    -- A healthy subscription's success is written at most once a second: the
    -- row is not locked, round after round, against the claims.
    SELECT s.id FROM webhook_subscriptions s JOIN health h ON h.id = s.id, clock
    WHERE NOT h.ok OR NOT h.succeeded OR s.failing_since IS NOT NULL
       OR s.last_success_at IS NULL OR s.last_success_at < clock.at - interval '1 second'
    ORDER BY s.id
    FOR NO KEY UPDATE OF s
)
UPDATE webhook_subscriptions s SET
    last_success_at = CASE WHEN h.succeeded THEN clock.at ELSE s.last_success_at END,
    failing_since = CASE
        WHEN h.ok THEN NULL
        WHEN h.succeeded THEN clock.at
        ELSE coalesce(s.failing_since, clock.at) END,
    enabled = s.enabled AND (h.ok OR h.succeeded OR s.failing_since IS NULL
                             OR s.failing_since > clock.at - make_interval(secs => :disable_after)),
    disabled_at = CASE
        WHEN s.enabled AND NOT (h.ok OR h.succeeded) AND s.failing_since IS NOT NULL
             AND s.failing_since <= clock.at - make_interval(secs => :disable_after)
        THEN clock.at ELSE s.disabled_at END,
    disabled_reason = CASE
        WHEN s.enabled AND NOT (h.ok OR h.succeeded) AND s.failing_since IS NOT NULL
             AND s.failing_since <= clock.at - make_interval(secs => :disable_after)
        THEN :disabled_reason ELSE s.disabled_reason END,
    disable_count = CASE
        WHEN s.enabled AND NOT (h.ok OR h.succeeded) AND s.failing_since IS NOT NULL
             AND s.failing_since <= clock.at - make_interval(secs => :disable_after)
        THEN s.disable_count + 1 ELSE s.disable_count END,
    updated_at = clock.at
FROM health h JOIN locked l ON l.id = h.id, clock
WHERE s.id = h.id
RETURNING s.id, s.tenant_id, s.url, s.enabled, s.disabled_at = clock.at AS disabled_now,
          s.disable_count, s.failing_since, s.disabled_reason, clock.at AS at
