"""The lead events' rules (models/lead_rules.py): each rule on its own, and
properties over arrival orders, run against an in-memory lead that applies
``decide`` as models/lead_events.py does."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.lead_rules import (
    ALREADY_PAUSED,
    HOLD_TYPES,
    NO_OPEN_TIMER,
    NOT_A_HOLD,
    NOT_NEWER_START,
    NOT_PAUSED,
    PREDATES_TIMER,
    START_TYPES,
    TERMINAL_TYPES,
    TYPES,
    Decision,
    History,
    decide,
    decide_hold,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
# No example database: the unit tier writes no files.
PROPERTY = settings(database=None, max_examples=300, deadline=None)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


@dataclass
class Lead:
    """One lead and contract: its timers and recorded events, as the database keeps them."""

    open_started_at: datetime | None = None
    timer_starts: list[datetime] = field(default_factory=list)
    events: list[tuple[str, datetime]] = field(default_factory=list)

    def history(self) -> History:
        starts = self.timer_starts + [t for kind, t in self.events if kind in START_TYPES]
        terminals = [(t, kind) for kind, t in self.events if kind in TERMINAL_TYPES]
        return History(
            open_started_at=self.open_started_at,
            latest_start=max(starts, default=None),
            latest_terminal=max(terminals, key=lambda e: e[0], default=None),
        )

    def receive(self, kind: str, t: datetime) -> Decision:
        decision = decide(kind, t, self.history())
        if decision.action == "start":
            self.open_started_at = t  # superseding any open timer
            self.timer_starts.append(t)
        elif decision.action in ("complete", "cancel"):
            self.open_started_at = None
        self.events.append((kind, t))  # every event is recorded, ignored ones too
        return decision


# ----------------------------------------------------------------- single rules


def test_a_start_without_history_starts():
    for kind in START_TYPES:
        assert decide(kind, T0, History()) == Decision("start")


def test_a_newer_start_supersedes_the_open_timer():
    history = History(open_started_at=at(0), latest_start=at(0))
    assert decide("lead.qualified", at(1), history).action == "start"


@pytest.mark.parametrize("offset", [-1, 0])
def test_a_start_not_newer_than_the_open_timers_start_is_ignored(offset):
    history = History(open_started_at=at(0), latest_start=at(0))
    assert decide("lead.created", at(offset), history) == Decision("ignore", NOT_NEWER_START)


def test_a_start_older_than_a_closed_timers_start_is_ignored():
    history = History(latest_start=at(10))
    assert decide("lead.qualified", at(5), history) == Decision("ignore", NOT_NEWER_START)


@pytest.mark.parametrize("offset", [-1, 0])
def test_a_start_at_or_before_a_recorded_terminal_event_is_ignored(offset):
    history = History(latest_terminal=(at(0), "lead.closed"))
    decision = decide("lead.qualified", at(offset), history)
    assert decision == Decision("ignore", "superseded by a later lead.closed")
    assert decision.outcome == "ignored"


def test_a_start_after_every_terminal_event_starts():
    history = History(latest_start=at(0), latest_terminal=(at(5), "lead.contacted"))
    assert decide("lead.qualified", at(6), history).outcome == "started"


def test_contacted_completes_and_the_others_cancel():
    history = History(open_started_at=at(0), latest_start=at(0))
    assert decide("lead.contacted", at(0), history).outcome == "completed"
    for kind in ("lead.disqualified", "lead.closed", "lead.deleted"):
        assert decide(kind, at(3), history).outcome == "cancelled"


def test_a_terminal_event_without_an_open_timer_is_ignored():
    for kind in TERMINAL_TYPES:
        assert decide(kind, T0, History(latest_start=at(-5))) == Decision("ignore", NO_OPEN_TIMER)


def test_a_terminal_event_before_the_open_timers_start_is_ignored():
    history = History(open_started_at=at(0), latest_start=at(0))
    assert decide("lead.closed", at(-1), history) == Decision("ignore", PREDATES_TIMER)


def test_an_unknown_type_is_no_decision():
    with pytest.raises(ValueError, match="bought"):
        decide("lead.bought", T0, History())


# ----------------------------------------------------------------- arrival orders


@PROPERTY
@given(
    qualified=st.integers(-5, 5),
    contacted=st.integers(-5, 5),
    contacted_first=st.booleans(),
)
def test_a_qualified_and_contacted_pair_leaves_no_timer_running_iff_contacted_is_newest(
    qualified, contacted, contacted_first
):
    lead = Lead()
    pair = [("lead.qualified", at(qualified)), ("lead.contacted", at(contacted))]
    for kind, t in reversed(pair) if contacted_first else pair:
        lead.receive(kind, t)
    # Ties go to the terminal event.
    assert (lead.open_started_at is None) == (contacted >= qualified)


# The types ``decide`` judges; hold types go to ``decide_hold`` (below).
ORDERED_TYPES = [t for t in TYPES if t not in HOLD_TYPES]
EVENTS = st.lists(
    st.tuples(st.sampled_from(ORDERED_TYPES), st.integers(0, 8)), min_size=1, max_size=8
)


@PROPERTY
@given(events=EVENTS, data=st.data())
def test_any_arrival_order_ends_as_the_order_of_occurrence_does(events, data):
    """Whatever the order in which events arrive, the lead ends with a timer
    running iff its newest event is a start (a terminal event ranks above a
    start of the same instant), and that timer started with the newest start."""
    arrival = data.draw(st.permutations(events))
    lead = Lead()
    for kind, t in arrival:
        lead.receive(kind, at(t))
    newest = max(events, key=lambda e: (e[1], e[0] in TERMINAL_TYPES))
    if newest[0] in START_TYPES:
        assert lead.open_started_at == at(newest[1])
    else:
        assert lead.open_started_at is None


@PROPERTY
@given(events=EVENTS)
def test_events_in_order_of_occurrence_are_never_ignored_for_their_age(events):
    """In order, a start always starts and a terminal event always closes an
    open timer: age is only a reason to ignore an event that arrives late."""
    lead = Lead()
    for kind, t in sorted(events, key=lambda e: (e[1], e[0] in TERMINAL_TYPES)):
        was_open = lead.open_started_at is not None
        decision = lead.receive(kind, at(t))
        if kind in START_TYPES:
            assert decision.action == "start" or decision.reason == NOT_NEWER_START
            # Only a start of the very instant of the open one is not newer.
            assert decision.action == "start" or lead.open_started_at == at(t)
        else:
            assert decision.action != "ignore" if was_open else decision.reason == NO_OPEN_TIMER


HOLDS = {"pause_on": ("lead.waiting_on_customer",), "resume_on": ("lead.customer_replied",)}


@pytest.mark.parametrize(
    ("kind", "paused", "expected"),
    [
        ("lead.waiting_on_customer", False, Decision("pause")),
        ("lead.waiting_on_customer", True, Decision("ignore", ALREADY_PAUSED)),
        ("lead.customer_replied", True, Decision("resume")),
        ("lead.customer_replied", False, Decision("ignore", NOT_PAUSED)),
        ("lead.on_hold", False, Decision("ignore", NOT_A_HOLD)),  # not in the contract
    ],
)
def test_a_hold_type_pauses_or_resumes_as_the_timers_contract_says(kind, paused, expected):
    decision = decide_hold(kind, at(5), open_started_at=at(1), paused=paused, **HOLDS)
    assert decision == expected


def test_a_hold_type_without_an_open_timer_or_older_than_it_is_ignored():
    assert decide_hold(
        "lead.waiting_on_customer", at(5), open_started_at=None, paused=False, **HOLDS
    ) == Decision("ignore", NO_OPEN_TIMER)
    assert decide_hold(
        "lead.waiting_on_customer", at(0), open_started_at=at(1), paused=False, **HOLDS
    ) == Decision("ignore", PREDATES_TIMER)
    assert Decision("pause").outcome == "paused" and Decision("resume").outcome == "resumed"
