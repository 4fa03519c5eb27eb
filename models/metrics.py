"""Prometheus metrics: what the service counts, and how its processes share it.

Every process (gunicorn's workers, Dramatiq's worker processes, the scheduler)
counts into prometheus-client's multiprocess directory, ``PROMETHEUS_MULTIPROC_DIR``
(one file per process and metric type), and a scrape adds the files up: one
``GET /metrics`` on any web worker sees every process of its host. The variable
must be set before prometheus-client is first imported, which is why this
module reads the settings (and so ``.env``) first. Unset, each process keeps its
own counts, right only for a single process (tests, ``flask run``). Who creates
and wipes the directory is in docs/metrics.md.

Counters move only for what committed: a transaction's counts wait on its
connection (``count_on_commit``) and are added when it commits, dropped when it
rolls back. The firing routine adds its batch's counts after the batch's commit.

No label holds a tenant: tenants are unbounded, and every label set lives in
every process's file. Labels take values from fixed sets; the escalation step
is capped (``step_label``).

The state of the timers (active, paused, overdue) is not counted but read from
the database when scraped (``read_state``, one statement, cached).
"""

from __future__ import annotations

import bisect
import os
from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, event

from .config import get_settings
from .sql import Queries

# The directory, from the environment or .env, before prometheus_client reads it.
MULTIPROCESS_DIR = get_settings().metrics_dir
if MULTIPROCESS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = MULTIPROCESS_DIR
    os.makedirs(MULTIPROCESS_DIR, exist_ok=True)
    # Dramatiq's Prometheus middleware reads its own variable at import: the same directory.
    os.environ["dramatiq_prom_db"] = MULTIPROCESS_DIR  # noqa: SIM112 (its spelling)

import prometheus_client as prom  # noqa: E402  (after the directory is set)
from prometheus_client import values as _values  # noqa: E402

# Whether this process writes to the directory (prometheus_client chose at its import).
MULTIPROCESS = _values.ValueClass is not _values.MutexValue

SQL = Queries("metrics.sql")
# The service's own registry (not prometheus_client's global one), so that
# importing this module afresh (tests/integration/test_imports.py) defines them
# again instead of clashing; in multiprocess mode the files are what counts.
REGISTRY = prom.CollectorRegistry(auto_describe=True)

# -- timers

TIMERS_STARTED = prom.Counter(
    "sla_timers_started",
    "Timers started (single, bulk and lead-event starts).",
    registry=REGISTRY,
)
TIMER_FIRES = prom.Counter(
    "sla_timer_fires",
    "Timers processed by the firing routine, by outcome: due (became due), step "
    "(ran escalation steps, already due), warning (warnings only), retry (failed, "
    "retried later), dead_letter (failed for the last time), released (given back "
    "after a transient error), none (nothing was due after all).",
    ["outcome"],
    registry=REGISTRY,
)
TIMERS_COMPLETED = prom.Counter(
    "sla_timers_completed",
    "Timers completed, by outcome: within_sla or breached.",
    ["outcome"],
    registry=REGISTRY,
)
TIMERS_CANCELLED = prom.Counter(
    "sla_timers_cancelled",
    "Timers cancelled, by reason: requested (the API), superseded (a new start), "
    "lead_event (a lead event closed the lead).",
    ["reason"],
    registry=REGISTRY,
)
# Lateness of a fire: the claim's instant (the database's clock) minus the
# timer's next_fire_at, the instant its warning, due time, step or retry was for.
FIRE_LATENESS = prom.Histogram(
    "sla_fire_lateness_seconds",
    "Fire time minus the instant the timer was due to fire, per claimed timer.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
    registry=REGISTRY,
)
ESCALATIONS = prom.Counter(
    "sla_escalations",
    "Escalation step runs recorded by the firing routine, by step and outcome (success, failed).",
    ["step", "outcome"],
    registry=REGISTRY,
)
WARNINGS = prom.Counter(
    "sla_warnings",
    "Warnings recorded by the firing routine, by outcome (sent, skipped).",
    ["outcome"],
    registry=REGISTRY,
)
DEAD_LETTERS = prom.Counter(
    "sla_dead_letters",
    "Timers dead-lettered (processing FAILED), by cause: failed (the last attempt "
    "raised) or lease_expired (its worker was lost on the last attempt).",
    ["cause"],
    registry=REGISTRY,
)

# -- the sweeper

SWEEPS = prom.Counter(
    "sla_sweeps", "Sweeper runs, by result (ok, error).", ["result"], registry=REGISTRY
)
LEASES_RESCUED = prom.Counter(
    "sla_leases_rescued",
    "Timers returned from an expired lease (their worker was lost).",
    registry=REGISTRY,
)

# -- webhooks

DELIVERIES = prom.Counter(
    "sla_webhook_deliveries",
    "Webhook delivery attempts, by result: delivered (2xx), retry (failed, tried "
    "again later), failed (failed, the retry schedule ran out).",
    ["result"],
    registry=REGISTRY,
)
DELIVERY_LATENCY = prom.Histogram(
    "sla_webhook_delivery_seconds",
    "Duration of a webhook delivery attempt, connection included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
SUBSCRIPTIONS_DISABLED = prom.Counter(
    "sla_webhook_subscriptions_disabled",
    "Webhook subscriptions disabled after failing too long.",
    registry=REGISTRY,
)

# Steps above this share one label value, so a ladder numbered 10, 20, ...
# 10,000 cannot grow the series without bound.
MAX_STEP_LABEL = 10


def step_label(step: int) -> str:
    return str(step) if 1 <= step <= MAX_STEP_LABEL else f"{MAX_STEP_LABEL + 1}+"


# -- counted on commit

_PENDING = "sla_metrics_pending"


def count_on_commit(conn: Connection, counter: Any, amount: float = 1) -> None:
    """Add ``amount`` to ``counter`` (a metric or a labelled child) when ``conn``'s
    transaction commits; nothing if it rolls back. On an AUTOCOMMIT connection
    the statement has committed already: counted at once."""
    if amount <= 0:
        return
    autocommit = conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    if conn.in_transaction() and not autocommit:
        conn.info.setdefault(_PENDING, []).append((counter, amount))
    else:
        counter.inc(amount)


def _take_pending(conn: Connection) -> list | None:
    # An invalidated connection's info is out of reach (and cleared by the pool
    # before the connection is used again): its counts are lost with it.
    if conn.invalidated:
        return None
    try:
        return conn.info.pop(_PENDING, None)
    except Exception:
        return None


@event.listens_for(Engine, "commit")
def _on_commit(conn: Connection) -> None:
    for counter, amount in _take_pending(conn) or ():
        counter.inc(amount)


@event.listens_for(Engine, "rollback")
def _on_rollback(conn: Connection) -> None:
    _take_pending(conn)


def closed(conn: Connection, verb: str, timers: Iterable[Mapping[str, Any]]) -> None:
    """Count timers that ``close_timers`` cancelled or completed (on commit)."""
    tally: Tally[str] = Tally()
    for t in timers:
        if verb == "cancel":
            reason = t.get("cancel_reason") or ""
            if reason == "superseded":
                tally["superseded"] += 1
            elif reason.startswith("lead."):  # a lead event's type
                tally["lead_event"] += 1
            else:
                tally["requested"] += 1
        else:
            tally["breached" if t.get("breached") else "within_sla"] += 1
    family = TIMERS_CANCELLED if verb == "cancel" else TIMERS_COMPLETED
    for label, n in tally.items():
        count_on_commit(conn, family.labels(label), n)


# -- the firing routine


def observe_lateness(at: datetime, due: Iterable[datetime | None]) -> None:
    """One lateness observation per claimed timer (``due``: their next_fire_at),
    binned here so that a batch of a thousand costs a handful of writes."""
    bounds = FIRE_LATENESS._upper_bounds
    counts = [0] * len(bounds)
    total = 0.0
    for instant in due:
        if instant is None:
            continue
        late = max((at - instant).total_seconds(), 0.0)
        total += late
        counts[bisect.bisect_left(bounds, late)] += 1
    if not any(counts):
        return
    # What Histogram.observe does per value, once per bucket (bucket counts are
    # kept per bucket, made cumulative when collected).
    FIRE_LATENESS._sum.inc(total)
    for i, n in enumerate(counts):
        if n:
            FIRE_LATENESS._buckets[i].inc(n)


def record_fire(tally: Mapping[tuple, int]) -> None:
    """Add a committed batch's tally (see tasks/firing.py ``FireReport.tally``)."""
    for key, n in tally.items():
        if n <= 0:
            continue
        kind = key[0]
        if kind == "fire":
            TIMER_FIRES.labels(key[1]).inc(n)
            if key[1] == "dead_letter":
                DEAD_LETTERS.labels("failed").inc(n)
        elif kind == "step":
            ESCALATIONS.labels(step_label(key[1]), key[2].lower()).inc(n)
        elif kind == "warning":
            WARNINGS.labels(key[1].lower()).inc(n)


# -- scrape-time state


def read_state(engine: Engine, queue: str, redis_client) -> dict[str, Any]:
    """The state gauges: timers active, paused and overdue, the oldest overdue's
    age, pending deliveries (one statement, ``engine`` seeing every tenant), and
    the queue's depth in Redis. A part that fails is left out."""
    state: dict[str, Any] = {}
    try:
        with engine.begin() as conn:
            row = conn.execute(SQL.state.text).mappings().one()
        state.update(row)
        state["database_up"] = 1
    except Exception:
        state["database_up"] = 0
    try:
        pipe = redis_client.pipeline(transaction=False)
        pipe.llen(f"dramatiq:{queue}")
        pipe.llen(f"dramatiq:{queue}.DQ")
        pipe.zcard(f"dramatiq:{queue}.XQ")
        ready, delayed, dead = pipe.execute()
        state["queue"] = {"ready": ready, "delayed": delayed, "dead": dead}
        state["redis_up"] = 1
    except Exception:
        state["redis_up"] = 0
    return state
