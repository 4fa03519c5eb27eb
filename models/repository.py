"""All SQL of the service, in one place.

Functions take a SQLAlchemy ``Connection`` and leave transactions to the caller.
Bulk writes pass their rows as one JSON document unpacked by
``jsonb_to_recordset``: one statement and one round trip per batch, whatever
its size, with the column types spelled out next to the SQL that uses them.
The start statement, the API's hot path, runs on the psycopg connection under
the SQLAlchemy one (same transaction), so it is written in psycopg's
``%(name)s`` style.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import orjson
import psycopg
from psycopg.rows import dict_row
from sqlalchemy import Connection, text

from . import events
from .schema import OPEN_STATUSES


class TimerConflict(Exception):
    """The request contradicts the stored state (409)."""


def _json(rows: Any) -> str:
    # orjson writes datetimes as RFC 3339 and UUIDs as strings, several times
    # faster than json: this serializes every row the firing path writes.
    return orjson.dumps(rows).decode()


# --------------------------------------------------------------------------- tenants & keys

API_KEY_PREFIX = "sla"
# What names a key (sla_<prefix>_<secret>): 48 random bits in lowercase hex.
KEY_PREFIX_PATTERN = "^[0-9a-f]{12}$"
_KEY_PREFIX = re.compile(KEY_PREFIX_PATTERN)


def _hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_SET_TENANT = text("SELECT set_config('app.tenant_id', :tenant, true)")


def enter_tenant(conn: Connection, tenant_id: UUID) -> None:
    """Scope the rest of this transaction to one tenant (row-level security)."""
    conn.execute(_SET_TENANT, {"tenant": str(tenant_id)})


def create_api_key(conn: Connection, tenant_id: UUID) -> tuple[str, dict[str, Any]]:
    """A new key ``sla_<prefix>_<secret>`` (48 random bits of prefix that name it
    in logs, 256 of secret) and its record. Only a hash is stored, so the key is
    shown once."""
    prefix = secrets.token_hex(6)
    key = f"{API_KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
    record = conn.execute(
        text(
            "INSERT INTO api_keys (tenant_id, prefix, key_hash) VALUES (:t, :p, :h) "
            "RETURNING prefix, created_at, revoked_at"
        ),
        {"t": tenant_id, "p": prefix, "h": _hash_key(key)},
    ).one()
    return key, dict(record._mapping)


def create_tenant(conn: Connection, name: str) -> tuple[UUID, str]:
    """A new tenant and its first API key; scopes the transaction to the new tenant."""
    tenant_id = uuid4()
    enter_tenant(conn, tenant_id)
    conn.execute(
        text("INSERT INTO tenants (id, name) VALUES (:id, :name)"), {"id": tenant_id, "name": name}
    )
    return tenant_id, create_api_key(conn, tenant_id)[0]


def tenant_exists(conn: Connection, tenant_id: UUID) -> bool:
    return (
        conn.execute(text("SELECT 1 FROM tenants WHERE id = :t"), {"t": tenant_id}).first()
        is not None
    )


def is_key_prefix(prefix: str) -> bool:
    """Whether ``prefix`` has the form of a key's prefix (it may still name no key)."""
    return _KEY_PREFIX.fullmatch(prefix) is not None


def key_prefix(key: str) -> str | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != API_KEY_PREFIX or not is_key_prefix(parts[1]):
        return None
    return parts[1]


def api_key_record(conn: Connection, prefix: str) -> tuple[UUID, str] | None:
    """(tenant_id, key_hash) of the unrevoked key with this prefix.

    Runs before the tenant is known: the API's role may read just the key row
    whose prefix the transaction names in ``app.api_key_prefix``.
    """
    conn.execute(text("SELECT set_config('app.api_key_prefix', :p, true)"), {"p": prefix})
    row = conn.execute(
        text("SELECT tenant_id, key_hash FROM api_keys WHERE prefix = :p AND revoked_at IS NULL"),
        {"p": prefix},
    ).first()
    return None if row is None else (row.tenant_id, row.key_hash)


def key_matches(key_hash: str, key: str) -> bool:
    """Constant-time comparison of a presented key with a stored hash."""
    return hmac.compare_digest(key_hash, _hash_key(key))


def tenant_for_api_key(conn: Connection, key: str) -> UUID | None:
    prefix = key_prefix(key)
    record = None if prefix is None else api_key_record(conn, prefix)
    if record is None or not key_matches(record[1], key):
        return None
    return record[0]


def list_api_keys(conn: Connection, tenant_id: UUID) -> list[dict[str, Any]]:
    rows = conn.execute(
        text(
            "SELECT prefix, created_at, revoked_at FROM api_keys WHERE tenant_id = :t "
            "ORDER BY created_at, prefix"
        ),
        {"t": tenant_id},
    )
    return [dict(r._mapping) for r in rows]


def revoke_api_key(conn: Connection, tenant_id: UUID, prefix: str) -> dict[str, Any] | None:
    """Revoke one of the tenant's keys (idempotent); None if it has no such key."""
    row = conn.execute(
        text(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) "
            "WHERE tenant_id = :t AND prefix = :p RETURNING prefix, created_at, revoked_at"
        ),
        {"t": tenant_id, "p": prefix},
    ).first()
    return None if row is None else dict(row._mapping)


# --------------------------------------------------------------------------- outbox

_INSERT_EVENTS = text(
    """
    INSERT INTO outbox_events
        (tenant_id, timer_id, event_type, payload, correlation_id, idempotency_key, created_at)
    SELECT tenant_id, timer_id, event_type, payload, correlation_id, idempotency_key, created_at
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
        tenant_id uuid, timer_id uuid, event_type text, payload jsonb,
        correlation_id text, idempotency_key text, created_at timestamptz)
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    """
)


def insert_events(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(_INSERT_EVENTS, {"rows": _json(list(rows))})


# --------------------------------------------------------------------------- timers: API side


@dataclass(frozen=True)
class NewTimer:
    lead_id: str
    sla_contract_id: str
    # None: the start statement dates the timer with the database's clock.
    started_at: datetime | None
    window_seconds: int
    escalation_steps: list[dict[str, Any]]
    correlation_id: str
    metadata: dict[str, Any]
    idempotency_key: str | None = None
    request_fingerprint: str | None = None


_TIMER_BY_ID = text("SELECT * FROM sla_timers WHERE tenant_id = :tenant AND id = :id")

_OPEN = "status IN ({})".format(", ".join(f"'{s}'" for s in OPEN_STATUSES))

# One statement starts timers: it takes the advisory locks of every (tenant,
# lead, contract) first, in hash order so overlapping starts queue instead of
# deadlocking, then inserts the timers and their sla.timer.started events.
# The insert cannot start before the ``locked`` row exists.
#
# A timer that conflicts with any unique index is skipped, not an error: its
# lead and contract has an open timer (to supersede first), its idempotency key
# is taken (a replay or a conflict), or the same start exists; the caller tells
# these apart with later statements. Taking the lock inside the statement is
# safe because nothing here depends on the statement's snapshot (taken before
# the lock): unique checks see every committed row, and in READ COMMITTED a
# conflict with a row committed after the snapshot is still a DO NOTHING.
#
# The database's clock dates what the request does not: a start without
# started_at, hence its due_at and first fire time, and the bookkeeping
# (created_at, the started event). A web host's clock may be skewed, and a
# timer dated by a clock running behind would fire early. statement_timestamp()
# is one instant for the whole statement, so a bulk start shares it.
_START_TIMERS = """
    WITH locked AS MATERIALIZED (
        SELECT count(pg_advisory_xact_lock(k)) AS n FROM (
            SELECT DISTINCT hashtextextended(%(tenant)s::text || '/' || p.lead_id || '/'
                                             || p.sla_contract_id, 0) AS k
            FROM jsonb_to_recordset(%(timers)s::jsonb) AS p(lead_id text, sla_contract_id text)
            ORDER BY k
        ) AS keys
    ),
    inserted AS (
        INSERT INTO sla_timers (
            id, tenant_id, lead_id, sla_contract_id, started_at, due_at, window_seconds,
            correlation_id, idempotency_key, request_fingerprint, escalation_steps, metadata,
            next_fire_at, created_at, updated_at)
        SELECT n.id, %(tenant)s, n.lead_id, n.sla_contract_id, started.at, due.at,
               n.window_seconds, n.correlation_id, n.idempotency_key, n.request_fingerprint,
               n.escalation_steps, n.metadata, due.at, statement_timestamp(),
               statement_timestamp()
        FROM locked, jsonb_to_recordset(%(timers)s::jsonb) AS n(
            id uuid, lead_id text, sla_contract_id text, started_at timestamptz,
            due_at timestamptz, window_seconds int, correlation_id text, idempotency_key text,
            request_fingerprint text, escalation_steps jsonb, metadata jsonb)
        CROSS JOIN LATERAL (SELECT coalesce(n.started_at, statement_timestamp()) AS at) AS started
        CROSS JOIN LATERAL (
            SELECT coalesce(n.due_at, started.at + make_interval(secs => n.window_seconds)) AS at
        ) AS due
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
        FROM jsonb_to_recordset(%(events)s::jsonb) AS e(
            tenant_id uuid, timer_id uuid, event_type text, payload jsonb,
            correlation_id text, idempotency_key text)
        JOIN inserted ON inserted.id = e.timer_id
        ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    )
    SELECT * FROM inserted
"""

_TIMERS_BY_KEYS = text(
    "SELECT * FROM sla_timers WHERE tenant_id = :tenant AND idempotency_key = ANY(:keys)"
)

# The open timers of some (lead, contract) pairs, locked in id order like the
# firing path and the lead routes lock them. Each pair is one probe of the
# open-timer index (LIMIT 1: it holds at most one), whatever the statistics
# say; a plain join can turn into a scan of every open timer of the tenant.
# A timer that a cancel or complete closes meanwhile is not returned: the
# locking read re-checks the row once the closing transaction commits.
_OPEN_FOR_PAIRS = text(
    f"""
    WITH found AS MATERIALIZED (
        SELECT o.id
        FROM unnest(CAST(:leads AS text[]), CAST(:contracts AS text[])) AS p(lead_id, contract)
        CROSS JOIN LATERAL (
            SELECT s.id FROM sla_timers s
            WHERE s.tenant_id = :tenant AND s.lead_id = p.lead_id
              AND s.sla_contract_id = p.contract AND s.{_OPEN}
            LIMIT 1
        ) AS o
    )
    SELECT t.* FROM sla_timers t
    WHERE t.id = ANY(ARRAY(SELECT id FROM found)) AND t.{_OPEN}
    ORDER BY t.id
    FOR UPDATE
    """
)

KEY_REUSED = "Idempotency-Key was already used with a different request body"


class DuplicateStart(TimerConflict):
    """A timer with the same lead, contract and started_at already exists."""


def _driver(conn: Connection) -> psycopg.Connection:
    """The psycopg connection under ``conn``, in the same transaction. The
    start statement runs on it directly: SQLAlchemy's per-statement overhead
    costs as much CPU as the statement's round trip on a small VM."""
    return conn.connection.driver_connection  # type: ignore[return-value]


def _insert_timers(
    conn: Connection,
    tenant_id: UUID,
    starts: Sequence[tuple[UUID, NewTimer, datetime | None]],
    *,
    scope: bool = False,
) -> dict[UUID, dict[str, Any]]:
    """Lock the pairs and insert what ``_START_TIMERS`` does not skip; with
    ``scope``, first scope the (implicit, autocommit) transaction to the tenant.
    The stored rows and their started events carry the statement's times."""
    timers, started = [], []
    for timer_id, new, due in starts:
        timer = {
            "id": timer_id,
            "tenant_id": tenant_id,
            "lead_id": new.lead_id,
            "sla_contract_id": new.sla_contract_id,
            "started_at": new.started_at,
            "due_at": due,
            "window_seconds": new.window_seconds,
            "correlation_id": new.correlation_id,
            "idempotency_key": new.idempotency_key,
            "request_fingerprint": new.request_fingerprint,
            "escalation_steps": new.escalation_steps,
            "metadata": new.metadata,
        }
        timers.append(timer)
        started.append(
            events.timer_event(
                timer,
                events.STARTED,
                None,  # the statement puts the stored times in its place
                window_seconds=new.window_seconds,
                escalation_steps=new.escalation_steps,
                metadata=new.metadata,
            )
        )
    params = {"tenant": tenant_id, "timers": _json(timers), "events": _json(started)}
    if not scope:
        cursor = _driver(conn).cursor(row_factory=dict_row)
        rows = cursor.execute(_START_TIMERS, params).fetchall()
    else:
        # Both statements in one simple query: one round trip, and one implicit
        # transaction, so the tenant setting holds for the insert and ends with
        # it. A simple query cannot use psycopg's prepared statements, so the
        # start is prepared once per connection by hand: planning it costs more
        # than running it.
        # psycopg may DEALLOCATE ALL (after a failed transaction, say): then
        # prepare again; nothing of the failed message was committed.
        driver, info = _driver(conn), conn.connection.info
        cursor = psycopg.ClientCursor(driver, row_factory=dict_row)
        scoped = {**params, "tenant_text": str(tenant_id)}
        for attempt in (1, 2):
            if not info.get(_PREPARED_START):
                driver.execute(_PREPARE_START)
                info[_PREPARED_START] = True
            try:
                cursor.execute(_SCOPED_START, scoped)
                break
            except psycopg.errors.InvalidSqlStatementName:
                info[_PREPARED_START] = False
                if attempt == 2:
                    raise
        cursor.nextset()
        rows = cursor.fetchall()
    return {r["id"]: r for r in rows}


_PREPARED_START = "sla_start_timers"
_PREPARE_START = f"PREPARE {_PREPARED_START} (uuid, text, text) AS" + (
    _START_TIMERS.replace("%(tenant)s", "$1")
    .replace("%(timers)s", "$2")
    .replace("%(events)s", "$3")
)
_SCOPED_START = (
    "SELECT set_config('app.tenant_id', %(tenant_text)s, true);"
    f" EXECUTE {_PREPARED_START} (%(tenant)s, %(timers)s, %(events)s)"
)


def _stored_by_key(
    conn: Connection, tenant_id: UUID, keys: Sequence[str]
) -> dict[str, dict[str, Any]]:
    if not keys:
        return {}
    rows = conn.execute(_TIMERS_BY_KEYS, {"tenant": tenant_id, "keys": list(keys)}).mappings()
    return {r["idempotency_key"]: dict(r) for r in rows}


# How many times a start supersedes and inserts again the timers its insert
# skipped. One more round is all a race with a close can need (see below); the
# bound only guarantees an end.
_START_ROUNDS = 3


def start_timers(
    conn: Connection,
    tenant_id: UUID,
    starts: Sequence[tuple[NewTimer, datetime | None]],
    now: datetime | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Start timers, given as (timer, due_at) with distinct (lead, contract)
    pairs; returns (timers in the given order, created). A timer without
    ``started_at`` (its due_at None) is dated by the database's clock, and so is
    the supersede of an open timer unless ``now`` is given (tests).

    Either every timer is created, or every one is an idempotent replay (each
    carries an idempotency key stored with the same request fingerprint) and
    the stored timers are returned; anything in between is a TimerConflict, and
    the caller must roll the transaction back. A lead's open timer for the same
    contract is cancelled first with reason "superseded".

    Round trips do not grow with the number of timers: one statement locks
    every pair, one inserts the timers with their started events. Only timers
    that insert skipped cost more: a replay lookup, or the supersede and a
    second insert.
    """
    pairs = [(new.lead_id, new.sla_contract_id) for new, _ in starts]
    if len(set(pairs)) != len(pairs):
        raise ValueError("one start per (lead_id, sla_contract_id) pair")
    work = [(uuid4(), new, due) for new, due in starts]
    created = _insert_timers(conn, tenant_id, work)
    if len(created) == len(work):
        return [created[i] for i, _, _ in work], True

    skipped = [w for w in work if w[0] not in created]
    stored = _stored_by_key(
        conn, tenant_id, [new.idempotency_key for _, new, _ in skipped if new.idempotency_key]
    )
    if stored:
        replayed = [stored.get(new.idempotency_key) for _, new, _ in work]  # type: ignore[arg-type]
        if created or any(
            r is None or r["request_fingerprint"] != new.request_fingerprint
            for r, (_, new, _) in zip(replayed, work, strict=True)
        ):
            raise TimerConflict(KEY_REUSED)
        return replayed, False  # type: ignore[return-value]

    # Supersede the open timers of the skipped pairs, then insert those again.
    # The pairs' advisory locks are ours until commit, so no other start can
    # open a timer for them; but a cancel or complete (which do not take the
    # lock) may close one between the insert and the lookup, leaving nothing to
    # supersede: inserting again then succeeds. A round that finds no open
    # timer and inserts nothing means the start repeats an existing one (the
    # transaction is rolled back, superseded timers included).
    for _ in range(_START_ROUNDS):
        previous = (
            conn.execute(
                _OPEN_FOR_PAIRS,
                {
                    "tenant": tenant_id,
                    "leads": [new.lead_id for _, new, _ in skipped],
                    "contracts": [new.sla_contract_id for _, new, _ in skipped],
                },
            )
            .mappings()
            .all()
        )
        close_timers(conn, previous, "cancel", now, reason="superseded")
        inserted = _insert_timers(conn, tenant_id, skipped)
        created |= inserted
        skipped = [w for w in skipped if w[0] not in created]
        if not skipped or not (previous or inserted):
            break
    if skipped:
        keys = [new.idempotency_key for _, new, _ in skipped if new.idempotency_key]
        if _stored_by_key(conn, tenant_id, keys):  # taken meanwhile, by a start of other leads
            raise TimerConflict(KEY_REUSED)
        raise DuplicateStart(
            "a timer with the same lead_id, sla_contract_id and started_at already exists"
        )
    return [created[i] for i, _, _ in work], True


def try_start_timer(
    conn: Connection, tenant_id: UUID, new: NewTimer, due: datetime | None
) -> dict[str, Any] | None:
    """The fast path of ``start_timer``: one statement that is its own
    transaction, so a start costs one round trip instead of three (BEGIN,
    statement, COMMIT). ``conn`` must be in AUTOCOMMIT isolation. The tenant
    scope is set by a statement sent in the same message.

    Returns the new timer, or None when nothing was written because the start
    needs ``start_timer``: the lead has an open timer to supersede, the
    idempotency key is taken (a replay or a conflict), or the start repeats an
    existing one. The statement is atomic, so there is nothing in between.
    """
    if not _driver(conn).autocommit:
        raise RuntimeError("try_start_timer needs an AUTOCOMMIT connection")
    created = _insert_timers(conn, tenant_id, [(uuid4(), new, due)], scope=True)
    return next(iter(created.values()), None)


def start_timer(
    conn: Connection,
    tenant_id: UUID,
    new: NewTimer,
    due: datetime | None,
    now: datetime | None = None,
) -> tuple[dict[str, Any], bool]:
    """Start a timer; returns (timer, created). A replay of the same idempotency key
    and body returns the stored timer; the same key with another body is a conflict.

    Starts for one lead and contract are serialized by an advisory lock, so the
    supersede-then-insert never leaves two open timers behind.
    """
    try:
        rows, created = start_timers(conn, tenant_id, [(new, due)], now)
    except DuplicateStart:
        started = new.started_at.isoformat() if new.started_at else "the same instant"
        raise DuplicateStart(
            f"a timer for lead {new.lead_id!r} and contract {new.sla_contract_id!r} "
            f"started at {started} already exists"
        ) from None
    return rows[0], created


# The database's clock decides what is due, when a lease ends, when a timer
# closes (and so whether it breached) and what the fire records: hosts' clocks
# may be skewed, the database's is the one all share.
# ``now()`` (the transaction's start) rather than ``clock_timestamp()``: it is
# stable within a statement, so ``next_fire_at <= …`` stays an index condition.
# Tests pass an instant in ``:now`` instead; production passes NULL.
_DB_NOW = "coalesce(CAST(:now AS timestamptz), now())"

_SKIP_REMAINING_STEPS = text(
    f"""
    INSERT INTO sla_escalation_events (
        tenant_id, lead_id, timer_id, escalation_step, executed_at, outcome,
        escalation_config, correlation_id, idempotency_key)
    SELECT t.tenant_id, t.lead_id, t.id, (s ->> 'step')::int, {_DB_NOW}, 'SKIPPED',
           s, t.correlation_id, t.id::text || '-' || (s ->> 'step')
    FROM sla_timers t, jsonb_array_elements(t.escalation_steps) AS s
    WHERE t.id = ANY(:ids)
    ON CONFLICT DO NOTHING
    """
)

_CLOSE_TIMERS = text(
    f"""
    UPDATE sla_timers SET
        status = :status,
        cancelled_at = CASE WHEN :status = 'CANCELLED' THEN {_DB_NOW} END,
        completed_at = CASE WHEN :status = 'COMPLETED' THEN {_DB_NOW} END,
        cancel_reason = CASE WHEN :status = 'CANCELLED' THEN :reason END,
        -- Met when handled at or before the due instant.
        breached = CASE WHEN :status = 'COMPLETED' THEN due_at < {_DB_NOW} END,
        -- A dead-lettered timer keeps FAILED so the failure stays visible.
        processing_status = CASE WHEN processing_status = 'FAILED' THEN 'FAILED'
                                 ELSE 'COMPLETED' END,
        next_fire_at = NULL, claim_token = NULL, lease_expires_at = NULL,
        updated_at = {_DB_NOW}
    WHERE id = ANY(:ids)
    RETURNING *
    """
)


def close_timers(
    conn: Connection,
    timers: Sequence[Mapping[str, Any]],
    verb: str,
    now: datetime | None = None,
    *,
    reason: str | None = None,
) -> list[dict[str, Any]]:
    """Cancel or complete open timers (already locked by the caller): their
    remaining steps are recorded SKIPPED so they can never fire, and one event
    per timer is written."""
    if not timers:
        return []
    status, event_type = (
        ("CANCELLED", events.CANCELLED) if verb == "cancel" else ("COMPLETED", events.COMPLETED)
    )
    ids = [t["id"] for t in timers]
    conn.execute(_SKIP_REMAINING_STEPS, {"ids": ids, "now": now})
    closed = [
        dict(r)
        for r in conn.execute(
            _CLOSE_TIMERS, {"ids": ids, "now": now, "status": status, "reason": reason}
        ).mappings()
    ]
    # Events carry the instant the row recorded (the database's, unless given).
    insert_events(
        conn,
        [
            events.timer_event(t, event_type, t["updated_at"], reason=reason)
            if verb == "cancel"
            else events.timer_event(t, event_type, t["updated_at"], breached=t["breached"])
            for t in closed
        ],
    )
    return closed


def finish_timer(
    conn: Connection,
    tenant_id: UUID,
    timer_id: UUID,
    verb: str,
    now: datetime | None = None,
    reason: str | None = None,
) -> dict[str, Any] | None:
    """Cancel or complete one timer; None if the tenant has no such timer.
    Repeating the verb is a no-op; the other verb on a closed timer is a conflict."""
    row = (
        conn.execute(
            text("SELECT * FROM sla_timers WHERE tenant_id = :tenant AND id = :id FOR UPDATE"),
            {"tenant": tenant_id, "id": timer_id},
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    done = "CANCELLED" if verb == "cancel" else "COMPLETED"
    if row["status"] == done:
        return dict(row)
    if row["status"] not in OPEN_STATUSES:
        raise TimerConflict(f"timer is {row['status'].lower()} and cannot be {done.lower()}")
    return close_timers(conn, [row], verb, now, reason=reason)[0]


def finish_lead_timers(
    conn: Connection,
    tenant_id: UUID,
    lead_id: str,
    verb: str,
    now: datetime | None = None,
    *,
    sla_contract_id: str | None = None,
    reason: str | None = None,
) -> list[dict[str, Any]]:
    rows = (
        conn.execute(
            text(
                """
            SELECT * FROM sla_timers
            WHERE tenant_id = :tenant AND lead_id = :lead AND status = ANY(:open)
              AND (CAST(:contract AS text) IS NULL OR sla_contract_id = :contract)
            ORDER BY id  -- the firing path locks in id order too: no deadlock
            FOR UPDATE
            """
            ),
            {
                "tenant": tenant_id,
                "lead": lead_id,
                "open": list(OPEN_STATUSES),
                "contract": sla_contract_id,
            },
        )
        .mappings()
        .all()
    )
    return close_timers(conn, rows, verb, now, reason=reason)


def get_timer(conn: Connection, tenant_id: UUID, timer_id: UUID) -> dict[str, Any] | None:
    row = conn.execute(_TIMER_BY_ID, {"tenant": tenant_id, "id": timer_id}).mappings().first()
    return dict(row) if row is not None else None


def escalations_for(
    conn: Connection, tenant_id: UUID, timer_ids: Sequence[UUID]
) -> dict[UUID, list[dict]]:
    """Step rows for several of a tenant's timers in one query, in step order."""
    found: dict[UUID, list[dict]] = {t: [] for t in timer_ids}
    if timer_ids:
        rows = conn.execute(
            text(
                """
                SELECT timer_id, escalation_step, executed_at, outcome, error_message,
                       escalation_config
                FROM sla_escalation_events
                WHERE tenant_id = :tenant AND timer_id = ANY(:ids)
                ORDER BY timer_id, escalation_step
                """
            ),
            {"tenant": tenant_id, "ids": list(timer_ids)},
        ).mappings()
        for r in rows:
            found[r["timer_id"]].append(dict(r))
    return found


def encode_cursor(created_at: datetime, timer_id: UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{timer_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """Raises ValueError for a cursor this service did not hand out."""
    created, _, timer_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
    return datetime.fromisoformat(created), UUID(timer_id)


def list_timers(
    conn: Connection,
    tenant_id: UUID,
    *,
    lead_id: str | None,
    status: str | None,
    limit: int,
    cursor: tuple[datetime, UUID] | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first, keyset-paginated on (created_at, id)."""
    rows = (
        conn.execute(
            text(
                """
            SELECT * FROM sla_timers
            WHERE tenant_id = :tenant
              AND (CAST(:lead AS text) IS NULL OR lead_id = :lead)
              AND (CAST(:status AS text) IS NULL OR status = :status)
              AND (CAST(:c_at AS timestamptz) IS NULL
                   OR (created_at, id) < (CAST(:c_at AS timestamptz), CAST(:c_id AS uuid)))
            ORDER BY created_at DESC, id DESC
            LIMIT :limit
            """
            ),
            {
                "tenant": tenant_id,
                "lead": lead_id,
                "status": status,
                "c_at": cursor[0] if cursor else None,
                "c_id": cursor[1] if cursor else None,
                "limit": limit + 1,
            },
        )
        .mappings()
        .all()
    )
    items = [dict(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor(last["created_at"], last["id"])
    return items, next_cursor


# --------------------------------------------------------------------------- firing path

_CLAIM_DUE = text(
    f"""
    UPDATE sla_timers t SET
        processing_status = 'PROCESSING',
        claim_token = :token,
        lease_expires_at = {_DB_NOW} + make_interval(secs => :lease),
        last_attempt_at = {_DB_NOW}
    FROM (
        SELECT id FROM sla_timers
        WHERE processing_status = 'PENDING' AND next_fire_at <= {_DB_NOW}
        ORDER BY next_fire_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ) due
    WHERE t.id = due.id
    RETURNING t.id, t.tenant_id, t.lead_id, t.sla_contract_id, t.status, t.started_at,
              t.due_at, t.escalation_steps, t.steps_done, t.attempts, t.retries, t.last_error,
              t.correlation_id, t.last_attempt_at AS claimed_at
    """
)


def claim_due(
    conn: Connection, token: UUID, now: datetime | None, limit: int, lease_seconds: int
) -> list[dict[str, Any]]:
    """Mark up to ``limit`` due timers PROCESSING under ``token``, skipping rows
    another claimer holds, and return what planning them needs, with
    ``claimed_at``, the database's time of the claim. Commit right after, so
    the lease is visible to all. ``now`` overrides the database's clock (tests;
    production passes None)."""
    return [
        dict(r)
        for r in conn.execute(
            _CLAIM_DUE, {"token": token, "now": now, "limit": limit, "lease": lease_seconds}
        ).mappings()
    ]


def lock_claimed(conn: Connection, token: UUID, ids: Sequence[UUID]) -> set[UUID]:
    """Lock the claimed rows that still carry ``token`` and return their ids.

    Run first in the transaction that fires them, before any action: a timer
    cancelled, completed or rescued since the claim has lost the token and is
    left alone. Holding the lock is what renews the lease: the rescue skips
    locked rows, so it cannot take them while the transaction works."""
    return set(
        conn.execute(
            text(
                """
                SELECT id FROM sla_timers
                WHERE id = ANY(:ids) AND claim_token = :token
                ORDER BY id  -- the order cancels lock in too: no deadlock
                FOR UPDATE
                """
            ),
            {"ids": list(ids), "token": token},
        ).scalars()
    )


def release_claimed(conn: Connection, token: UUID, ids: Sequence[UUID]) -> int:
    """Give claimed rows back (PENDING, next_fire_at unchanged) without counting
    an attempt: their processing was not tried, or failed for a reason that was
    not theirs (a transient database error)."""
    return conn.execute(
        text(
            """
            UPDATE sla_timers SET
                processing_status = 'PENDING', claim_token = NULL, lease_expires_at = NULL,
                updated_at = now()
            WHERE id = ANY(:ids) AND claim_token = :token
            """
        ),
        {"ids": list(ids), "token": token},
    ).rowcount


# One statement applies a whole planned batch. ``ours`` locks the claimed rows
# that still carry our token: a timer cancelled, completed or rescued since the
# claim has lost it, and nothing below touches it. A step row is written at
# most once per (timer, step) and its event only when the row is written here.
_APPLY_FIRED = text(
    """
    WITH ours AS (
        SELECT id FROM sla_timers
        WHERE id = ANY(:ids) AND claim_token = :token
        ORDER BY id
        FOR UPDATE
    ),
    steps AS (
        INSERT INTO sla_escalation_events (
            tenant_id, lead_id, timer_id, escalation_step, executed_at, outcome,
            escalation_config, correlation_id, error_message, idempotency_key)
        SELECT s.tenant_id, s.lead_id, s.timer_id, s.escalation_step, :now, s.outcome,
               s.escalation_config, s.correlation_id, s.error_message,
               s.timer_id::text || '-' || s.escalation_step
        FROM jsonb_to_recordset(CAST(:steps AS jsonb)) AS s(
            tenant_id uuid, lead_id text, timer_id uuid, escalation_step int, outcome text,
            escalation_config jsonb, correlation_id text, error_message text)
        JOIN ours ON ours.id = s.timer_id
        ON CONFLICT DO NOTHING
        RETURNING tenant_id, timer_id, escalation_step
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
                   e.idempotency_key, e.step
            FROM jsonb_to_recordset(CAST(:step_events AS jsonb)) AS e(
                tenant_id uuid, timer_id uuid, event_type text, payload jsonb,
                correlation_id text, idempotency_key text, step int)
            JOIN steps s ON s.tenant_id = e.tenant_id AND s.timer_id = e.timer_id
                        AND s.escalation_step = e.step
        ) AS all_events
        ORDER BY timer_id, seq  -- outbox order: due before the timer's steps, in step order
        ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    )
    UPDATE sla_timers t SET
        status = r.status,
        steps_done = r.steps_done,
        next_fire_at = r.next_fire_at,
        processing_status = r.processing_status,
        attempts = r.attempts,
        last_error = r.last_error,
        next_attempt_at = r.next_attempt_at,
        claim_token = NULL,
        lease_expires_at = NULL,
        updated_at = :now
    FROM jsonb_to_recordset(CAST(:updates AS jsonb)) AS r(
        id uuid, status text, steps_done int, next_fire_at timestamptz,
        processing_status text, attempts int, last_error text, next_attempt_at timestamptz)
    JOIN ours ON ours.id = r.id
    WHERE t.id = r.id
    RETURNING t.id
    """
)


def apply_fired(
    conn: Connection,
    token: UUID,
    *,
    events: Sequence[Mapping[str, Any]],
    steps: Sequence[Mapping[str, Any]],
    step_events: Sequence[Mapping[str, Any]],
    updates: Sequence[Mapping[str, Any]],
    now: datetime,
) -> set[UUID]:
    """Write a planned batch (events, step rows with their events, new timer
    states) in one statement; returns the ids of the timers it applied to."""
    result = conn.execute(
        _APPLY_FIRED,
        {
            "ids": [u["id"] for u in updates],
            "token": token,
            "now": now,
            "events": _json(events),
            "steps": _json(steps),
            "step_events": _json(step_events),
            "updates": _json(updates),
        },
    )
    return set(result.scalars())


LEASE_EXPIRED = "lease expired: the worker processing this timer was lost"

# A rescue is an attempt: a timer whose processing keeps killing its worker, or
# outlasting its lease, is dead-lettered like one that keeps raising, with its
# sla.timer.failed event in the same statement. Rows whose claimer still holds
# their lock (a long batch at work) are skipped, not taken from it.
_RESCUE_EXPIRED = text(
    f"""
    WITH expired AS (
        -- A claimed row keeps its (past) next_fire_at: the index finds it.
        SELECT id FROM sla_timers
        WHERE next_fire_at <= {_DB_NOW}
          AND processing_status = 'PROCESSING' AND lease_expires_at < {_DB_NOW}
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
            updated_at = {_DB_NOW}
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
    """
)


def rescue_expired_leases(
    conn: Connection, max_attempts: int, *, now: datetime | None = None
) -> int:
    """Return rows whose claimer vanished (killed mid-batch) to PENDING,
    counting an attempt; dead-letter those that reach ``max_attempts``. Returns
    how many were rescued (dead letters included). ``now`` overrides the
    database's clock (tests)."""
    row = conn.execute(
        _RESCUE_EXPIRED, {"now": now, "max_attempts": max_attempts, "error": LEASE_EXPIRED}
    ).one()
    return row.rescued


def retry_timer(
    conn: Connection, tenant_id: UUID, timer_id: UUID
) -> tuple[dict[str, Any], bool] | None:
    """Re-arm a dead-lettered timer: (timer, retried now?), or None if the
    tenant has no such timer.

    A FAILED open timer goes back to PENDING, due now by the database's clock,
    with its attempts reset and ``retries`` + 1; ``last_error`` keeps the reason
    of the dead letter until the next attempt's outcome replaces it, and
    ``sla.timer.retried`` is written. Asking again before it fails again changes
    nothing (False): it was retried already. Anything else is a conflict."""
    row = (
        conn.execute(
            text("SELECT * FROM sla_timers WHERE tenant_id = :tenant AND id = :id FOR UPDATE"),
            {"tenant": tenant_id, "id": timer_id},
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    if row["processing_status"] == "FAILED" and row["status"] in ("ACTIVE", "DUE"):
        retried = dict(
            conn.execute(
                text(
                    """
                    UPDATE sla_timers SET
                        processing_status = 'PENDING', attempts = 0, retries = retries + 1,
                        next_fire_at = now(), next_attempt_at = NULL,
                        claim_token = NULL, lease_expires_at = NULL, updated_at = now()
                    WHERE id = :id
                    RETURNING *
                    """
                ),
                {"id": timer_id},
            )
            .mappings()
            .one()
        )
        insert_events(
            conn,
            [
                events.timer_event(
                    retried,
                    events.RETRIED,
                    retried["updated_at"],
                    retries=retried["retries"],
                    previous_error=row["last_error"],
                )
            ],
        )
        return retried, True
    if row["retries"] > 0 and row["processing_status"] != "FAILED":
        return dict(row), False
    if row["processing_status"] == "FAILED":
        raise TimerConflict(
            f"timer is {row['status'].lower()} and cannot be retried: only an open timer can"
        )
    raise TimerConflict("timer has not failed: only a dead-lettered (FAILED) timer can be retried")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def upcoming_fire_times(
    conn: Connection, start: datetime, end: datetime, bucket_ms: int
) -> list[datetime]:
    """The wake-up instants of PENDING timers due in [start, end): each due
    instant rounded up to ``bucket_ms`` (as ``models.sla.wakeup_instant`` does),
    one per bucket, however many timers share it."""
    # Bucketing here, not in Python, bounds the result by the horizon's length
    # (horizon / bucket rows) instead of the number of timers in it, so the
    # whole horizon is covered without a LIMIT whatever the rate. extract()
    # is exact (numeric), so the rounding matches wakeup_instant's.
    rows = conn.execute(
        text(
            """
            SELECT DISTINCT
                   ceil(extract(epoch FROM next_fire_at) * 1000 / :bucket)::bigint * :bucket
            FROM sla_timers
            WHERE processing_status = 'PENDING'
              AND next_fire_at >= :start AND next_fire_at < :end
            ORDER BY 1
            """
        ),
        {"start": start, "end": end, "bucket": bucket_ms},
    ).scalars()
    return [_EPOCH + timedelta(milliseconds=ms) for ms in rows]
