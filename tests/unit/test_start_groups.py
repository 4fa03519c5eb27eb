"""The grouping of concurrent single starts (web/start_groups.py), with a
statement stand-in: who waits, who leads, what a failure does to the group.
tests/integration/test_start_groups.py runs the real statement."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from models.timers import NewTimer
from web.start_groups import StartGroups

TENANT = __import__("uuid").UUID(int=1)
WAIT = 30.0  # the tests release the statement in flight themselves


def _new(lead: str) -> NewTimer:
    return NewTimer(
        lead_id=lead,
        sla_contract_id="default",
        started_at=None,
        window_seconds=60,
        escalation_steps=[],
        correlation_id="c",
        metadata={},
    )


class Statement:
    """Runs a list of starts: records each call's leads, blocks the first call
    until ``release``, then answers a row per start (or raises ``fail``)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.in_flight = threading.Event()
        self.release = threading.Event()
        self.fail: BaseException | None = None
        self.skip: set[str] = set()

    def __call__(self, starts):
        leads = [new.lead_id for _, new, _ in starts]
        self.calls.append(leads)
        if len(self.calls) == 1:
            self.in_flight.set()
            assert self.release.wait(10)
        if self.fail is not None and len(starts) > 1:
            raise self.fail
        if self.fail is not None and "bad" in leads:
            raise self.fail
        return {i: {"lead": new.lead_id} for i, new, _ in starts if new.lead_id not in self.skip}


def _start_in_threads(groups: StartGroups, statement: Statement, leads: list[str]):
    results: dict[str, object] = {}

    def one(lead: str) -> None:
        try:
            results[lead] = groups.start(TENANT, _new(lead), None, statement)
        except BaseException as exc:
            results[lead] = exc

    first = threading.Thread(target=one, args=(leads[0],))
    first.start()
    assert statement.in_flight.wait(10)
    rest = [threading.Thread(target=one, args=(lead,)) for lead in leads[1:]]
    for t in rest:
        t.start()
    # Every start has joined a group behind the one in flight.
    deadline = time.monotonic() + 10
    while _queued(groups) < len(rest):
        assert time.monotonic() < deadline, "the starts did not queue"
        time.sleep(0.005)
    statement.release.set()
    for t in [first, *rest]:
        t.join(10)
    return results


def _queued(groups: StartGroups) -> int:
    """Starts waiting behind the statement in flight: every group but the
    newest is full."""
    tenant = groups._tenants.get(TENANT)
    if tenant is None or tenant.waiting is None:
        return 0
    return (tenant.leaders - 1) * groups.max_group + len(tenant.waiting.starts)


def test_a_start_with_nothing_in_flight_runs_at_once_and_alone():
    groups, statement = StartGroups(max_wait_s=WAIT), Statement()
    statement.release.set()

    rows = [groups.start(TENANT, _new(f"lead-{i}"), None, statement) for i in range(3)]

    assert statement.calls == [["lead-0"], ["lead-1"], ["lead-2"]]
    assert [r["lead"] for r in rows] == ["lead-0", "lead-1", "lead-2"]
    assert groups._tenants == {}  # nothing kept between starts


def test_starts_arriving_during_a_statement_go_together_in_the_next():
    groups, statement = StartGroups(max_wait_s=WAIT), Statement()

    results = _start_in_threads(groups, statement, [f"lead-{i}" for i in range(6)])

    assert statement.calls[0] == ["lead-0"]
    assert len(statement.calls) == 2 and sorted(statement.calls[1]) == [
        f"lead-{i}" for i in range(1, 6)
    ]
    assert {lead: r["lead"] for lead, r in results.items()} == {lead: lead for lead in results}
    assert groups._tenants == {}


def _second_while_first_held(groups: StartGroups, statement: Statement):
    """Start lead-0 and hold its statement; start lead-1 meanwhile, on this
    thread, then release. (results, seconds lead-1 took, whether lead-0 was
    still held when lead-1 had its row)."""
    results: dict[str, object] = {}

    def one(lead: str) -> None:
        results[lead] = groups.start(TENANT, _new(lead), None, statement)

    first = threading.Thread(target=one, args=("lead-0",))
    first.start()
    assert statement.in_flight.wait(10)
    started = time.monotonic()
    one("lead-1")
    took, first_held = time.monotonic() - started, "lead-0" not in results
    statement.release.set()
    first.join(10)
    return results, took, first_held


def test_with_a_limit_of_one_starts_run_at_once_side_by_side():
    groups, statement = StartGroups(max_group=1), Statement()

    results, _, first_held = _second_while_first_held(groups, statement)

    # With the first statement still in flight, the next ran without waiting.
    assert first_held and results["lead-1"] == {"lead": "lead-1"}
    assert statement.calls == [["lead-0"], ["lead-1"]]
    assert groups._tenants == {}


def test_a_group_waits_a_bounded_time_behind_a_statement_held_up():
    # A statement held up (a lead's lock) must not hold up every start of its tenant.
    groups, statement = StartGroups(max_wait_s=0.05), Statement()

    results, took, first_held = _second_while_first_held(groups, statement)

    # It waited the bound, then ran beside the one held up.
    assert first_held and took >= 0.05
    assert results == {"lead-0": {"lead": "lead-0"}, "lead-1": {"lead": "lead-1"}}
    assert groups._tenants == {}


def test_a_full_group_opens_the_next():
    groups, statement = StartGroups(max_group=2, max_wait_s=WAIT), Statement()

    results = _start_in_threads(groups, statement, [f"lead-{i}" for i in range(6)])

    assert sorted(len(c) for c in statement.calls) == [1, 1, 2, 2]
    assert sorted(lead for c in statement.calls for lead in c) == sorted(results)
    assert all(r["lead"] == lead for lead, r in results.items())
    assert groups._tenants == {}


def test_a_start_the_statement_skips_gets_none():
    groups, statement = StartGroups(max_wait_s=WAIT), Statement()
    statement.skip = {"lead-2"}

    results = _start_in_threads(groups, statement, ["lead-0", "lead-1", "lead-2", "lead-3"])

    assert results["lead-2"] is None
    assert [results[lead]["lead"] for lead in ("lead-0", "lead-1", "lead-3")] == [
        "lead-0",
        "lead-1",
        "lead-3",
    ]


def test_a_data_error_is_retried_start_by_start_so_only_its_start_fails():
    groups, statement = StartGroups(max_wait_s=WAIT), Statement()
    statement.fail = psycopg.errors.NumericValueOutOfRange("integer out of range")
    assert statement.fail.sqlstate == "22003"

    results = _start_in_threads(groups, statement, ["lead-0", "lead-1", "bad", "lead-3"])

    assert isinstance(results["bad"], psycopg.errors.NumericValueOutOfRange)
    assert [results[lead]["lead"] for lead in ("lead-0", "lead-1", "lead-3")] == [
        "lead-0",
        "lead-1",
        "lead-3",
    ]
    # The group's statement, then each of its starts alone.
    assert sorted(len(c) for c in statement.calls[2:]) == [1, 1, 1]


@pytest.mark.parametrize(
    "error",
    [psycopg.OperationalError("server closed the connection"), TimeoutError("pool timeout")],
    ids=["connection", "pool"],
)
def test_a_failure_of_the_connection_fails_the_group_and_retries_nothing(error):
    # A commit that went unanswered may have committed: running the starts
    # again could start their timers twice.
    groups, statement = StartGroups(max_wait_s=WAIT), Statement()
    statement.fail = error

    results = _start_in_threads(groups, statement, ["lead-0", "lead-1", "lead-2"])

    assert results["lead-0"] == {"lead": "lead-0"}
    assert results["lead-1"] is error and results["lead-2"] is error
    assert len(statement.calls) == 2
    assert groups._tenants == {}
