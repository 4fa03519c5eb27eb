"""Concurrent single starts of one tenant share one statement.

A single start's fast path is one statement of its own (``models.timers.
try_start_timers``), and most of its cost is the statement's, not the
timer's: PostgreSQL's CPU for a statement of one start was about three times
its CPU per start in a statement of four. So the starts that arrive while one
of their tenant's statements is in flight wait for it, then go together in the
next one: a group commit. Under P4 a statement carries 1.6-1.9 starts and
PostgreSQL's CPU per start falls by a fifth to a quarter; the web process
spends about what it saves on waking the waiting threads, and the rate on two
shared cores is unchanged (docs/performance.md, P4). It is the database's CPU
that it saves, the part a web tier of several hosts shares.

- A start that finds nothing in flight for its tenant goes at once, alone: an
  idle service adds no wait.
- One that finds a statement in flight joins the group waiting behind it (up
  to ``SLA_START_GROUP_MAX`` starts), or opens one and leads it. The leader waits for
  the statement in flight, runs the group's, and hands each start its row. It
  waits ``MAX_WAIT_S`` at most: a statement held up (by a lead's lock, say)
  then has the next group run beside it instead of holding back every start
  of its tenant.
- A start missing from the statement's rows wrote nothing (its own ``ON
  CONFLICT DO NOTHING``: a lead to supersede, a taken idempotency key, an
  unresolved contract), and its request takes the transactional path, as it
  would alone. Two starts of one group for the same lead end as they would in
  sequence: the second is skipped, then supersedes the first.
- A statement that fails on a row's data (PostgreSQL's error, not the
  connection's) is retried start by start, so one bad start fails only its own
  request. A connection or server failure fails the group's requests alike,
  each with the error it would have had alone; none is retried, since a
  statement whose commit went unanswered may have committed.

With ``SLA_START_GROUP_MAX=1`` nothing is grouped or waited for: each start
runs its own statement at once, as before grouping. One ``StartGroups`` per
process; it holds no connection and no thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg

from models.config import Settings
from models.timers import NewTimer, new_timer_id

MAX_GROUP = Settings.start_group_max  # SLA_START_GROUP_MAX's default
# The longest a group waits for the statement in flight before it goes beside
# it: a statement held up (a lead's lock, a slow disk) must not hold up every
# start of its tenant in the process. Statements take milliseconds.
MAX_WAIT_S = 0.05

Start = tuple[UUID, NewTimer, datetime | None]
Run = Callable[[list[Start]], dict[UUID, dict[str, Any]]]


class _Group:
    def __init__(self, start: Start) -> None:
        self.starts = [start]
        self.done = threading.Event()
        self.rows: dict[UUID, dict[str, Any]] = {}
        self.error: BaseException | None = None
        self.alone = False  # its statement failed on data: each start goes alone


class _Tenant:
    def __init__(self) -> None:
        self.in_flight = 0  # this tenant's statements running
        self.waiting: _Group | None = None  # the group still taking starts
        self.leaders = 0  # leaders waiting for a statement in flight


class StartGroups:
    def __init__(self, max_group: int = MAX_GROUP, max_wait_s: float = MAX_WAIT_S) -> None:
        self.max_group = max_group
        self.max_wait_s = max_wait_s
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._tenants: dict[UUID, _Tenant] = {}

    def start(self, tenant_id: UUID, new: NewTimer, due: datetime | None, run: Run):
        """The row of the timer started, or None when it wrote nothing and needs
        the transactional path. ``run`` executes a list of the tenant's starts
        as one statement (``try_start_timers`` on an engine)."""
        start: Start = (new_timer_id(), new, due)
        if self.max_group <= 1:
            # No grouping: each start is its own statement, concurrent with others.
            return run([start]).get(start[0])
        with self._lock:
            tenant = self._tenants.setdefault(tenant_id, _Tenant())
            group, leader, wait = tenant.waiting, False, False
            if group is not None and len(group.starts) < self.max_group:
                group.starts.append(start)
            else:
                group, leader = _Group(start), True
                if tenant.in_flight:
                    tenant.waiting, wait = group, True
                    tenant.leaders += 1
                else:
                    tenant.in_flight = 1
        if not leader:
            group.done.wait()
        else:
            self._lead(tenant_id, tenant, group, run, wait)
        if group.alone:
            return run([start]).get(start[0])
        if group.error is not None:
            raise group.error
        return group.rows.get(start[0])

    def _lead(self, tenant_id: UUID, tenant: _Tenant, group: _Group, run: Run, wait: bool) -> None:
        try:
            if wait:
                with self._lock:
                    # Past the bound it goes beside the statement it waited for.
                    self._idle.wait_for(lambda: not tenant.in_flight, self.max_wait_s)
                    tenant.in_flight += 1
                    tenant.leaders -= 1
                    if tenant.waiting is group:  # it takes no more starts
                        tenant.waiting = None
            try:
                group.rows = run(group.starts)
            except psycopg.DatabaseError as exc:
                # The statement's own error (a row's data): with more than one
                # start, find whose. A connection that failed may have committed.
                data_error = exc.sqlstate is not None and not isinstance(
                    exc, psycopg.OperationalError
                )
                if data_error and len(group.starts) > 1:
                    group.alone = True
                else:
                    group.error = exc
            except BaseException as exc:
                group.error = exc
        finally:
            with self._lock:
                tenant.in_flight -= 1
                if not tenant.in_flight and not tenant.leaders:
                    del self._tenants[tenant_id]
                self._idle.notify_all()
            group.done.set()
