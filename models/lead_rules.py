"""What a lead event does to its lead's timer (pure): the rules of
POST /v1/lead-events, docs/lead-events.md.

A start type (``lead.qualified``, ``lead.created``) starts the lead's timer for
its contract, a terminal type completes (``lead.contacted``) or cancels it, and
a hold type pauses or resumes it when the timer's contract names it in
``pause_on`` or ``resume_on`` (``decide_hold``).
Events are judged by when they occurred, not by when they arrived: ``decide``
compares the event with the lead's history for the contract (the open timer,
the latest start, the latest recorded terminal event), so that any arrival
order of the same events leaves the same timer running, or none. Ties go to
the terminal event: a start and a terminal event at the same instant leave no
timer running, whichever arrives first.

Nothing here touches the database; models/lead_events.py gathers the history
under a lock and carries out the decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

START_TYPES = ("lead.qualified", "lead.created")
COMPLETE_TYPES = ("lead.contacted",)
CANCEL_TYPES = ("lead.disqualified", "lead.closed", "lead.deleted")
TERMINAL_TYPES = COMPLETE_TYPES + CANCEL_TYPES
# Types that only a contract gives a meaning: its pause_on and resume_on name
# them (e.g. pause while waiting on the customer, resume on their reply).
HOLD_TYPES = (
    "lead.waiting_on_customer",
    "lead.customer_replied",
    "lead.on_hold",
    "lead.off_hold",
)
TYPES = START_TYPES + TERMINAL_TYPES + HOLD_TYPES

Action = Literal["start", "complete", "cancel", "pause", "resume", "ignore"]
OUTCOMES: dict[str, str] = {
    "start": "started",
    "complete": "completed",
    "cancel": "cancelled",
    "pause": "paused",
    "resume": "resumed",
    "ignore": "ignored",
}

NO_OPEN_TIMER = "no open timer for this lead and contract"
PREDATES_TIMER = "occurred before the open timer's start"
NOT_NEWER_START = "not newer than the start already recorded for this lead and contract"
NOT_A_HOLD = "the open timer's contract neither pauses nor resumes on this type"
ALREADY_PAUSED = "the open timer is already paused"
NOT_PAUSED = "the open timer is not paused"


@dataclass(frozen=True)
class History:
    """A lead's history for one contract, as far as the rules need it."""

    # The open timer's started_at; None when the lead has no open timer.
    open_started_at: datetime | None = None
    # The latest start: of any of the lead's timers (open or closed) and of
    # every recorded start event, whatever its outcome.
    latest_start: datetime | None = None
    # The latest recorded terminal event (occurred_at, type), whatever its outcome.
    latest_terminal: tuple[datetime, str] | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str | None = None

    @property
    def outcome(self) -> str:
        return OUTCOMES[self.action]


def decide(event_type: str, occurred_at: datetime, history: History) -> Decision:
    """What an event of ``event_type`` that occurred at ``occurred_at`` does.

    A start is ignored when a terminal event at or after it is recorded (the
    lead was handled since), or when a start at or after it is (a newer SLA
    runs, or ran). A terminal event is ignored when no timer is open, or when
    it occurred before the open timer started (it ended an earlier SLA); it is
    recorded all the same, so that it blocks older starts that arrive later.
    """
    if event_type in START_TYPES:
        if history.latest_terminal is not None and occurred_at <= history.latest_terminal[0]:
            return Decision("ignore", f"superseded by a later {history.latest_terminal[1]}")
        starts = [s for s in (history.open_started_at, history.latest_start) if s is not None]
        if starts and occurred_at <= max(starts):
            return Decision("ignore", NOT_NEWER_START)
        return Decision("start")
    if event_type not in TERMINAL_TYPES:
        raise ValueError(f"not a lead event type: {event_type!r}")
    if history.open_started_at is None:
        return Decision("ignore", NO_OPEN_TIMER)
    if occurred_at < history.open_started_at:
        return Decision("ignore", PREDATES_TIMER)
    return Decision("complete" if event_type in COMPLETE_TYPES else "cancel")


def decide_hold(
    event_type: str,
    occurred_at: datetime,
    *,
    open_started_at: datetime | None,
    paused: bool,
    pause_on: Sequence[str],
    resume_on: Sequence[str],
) -> Decision:
    """What a hold type (``HOLD_TYPES``) does to the lead's open timer: pause
    or resume it when the contract version the timer started under says so
    (its snapshot's ``pause_on``/``resume_on``; later versions never reach a
    running timer). It takes effect when it is taken: an event older than the
    open timer's start is about an earlier SLA and is ignored, as terminal
    events are; pausing a paused timer or resuming a running one is ignored,
    with the reason."""
    if event_type not in HOLD_TYPES:
        raise ValueError(f"not a hold type: {event_type!r}")
    if open_started_at is None:
        return Decision("ignore", NO_OPEN_TIMER)
    if occurred_at < open_started_at:
        return Decision("ignore", PREDATES_TIMER)
    if event_type in pause_on:
        return Decision("ignore", ALREADY_PAUSED) if paused else Decision("pause")
    if event_type in resume_on:
        return Decision("resume") if paused else Decision("ignore", NOT_PAUSED)
    return Decision("ignore", NOT_A_HOLD)
