"""Calendars and versioned contracts, the database side (models/sql/contracts.sql),
and how a start resolves its contract (docs/contracts.md).

- A calendar is stored as ``Calendar.to_json()`` (models/calendars.py) under the
  tenant's own id. Deleting one that a live contract's current version names is
  refused (``CalendarInUse``); timers hold their own copy in
  ``sla_timers.calendar``, so they never depend on the row.
- Each PUT of a contract writes version N+1 and makes it current, under the
  contract row's lock: concurrent PUTs get consecutive versions. DELETE retires
  the contract: it starts no timers; running ones keep their snapshot.
- ``resolve`` turns a start (its contract id and the fields it gives) into the
  policy the timer follows: the request's fields win over the contract's, and
  the snapshot records the result with the contract id and version, for audit.
  ``Unresolvable`` says which field of the request is at fault (a 422).

Functions take a SQLAlchemy ``Connection`` and leave transactions to the
caller, except ``resolve``, which is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import Connection

from .calendars import Calendar, calendar_from_row
from .errors import SlaError, TimerConflict
from .sla import DEFAULT_LADDER, Schedule, first_fire_at
from .sql import Queries

SQL = Queries("contracts.sql")

# A start that names this contract, when the tenant has defined none by that
# name, keeps the behaviour from before contracts: no policy but its own.
DEFAULT_CONTRACT = "default"
_CALENDAR_FIELDS = (
    "timezone",
    "weekly_hours",
    "holidays",
    "holiday_country",
    "holiday_subdivision",
)


class Unresolvable(SlaError):
    """A start's contract or calendar cannot be used: ``field`` and ``reason``
    make the 422."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class CalendarInUse(TimerConflict):
    """A calendar named by the current version of live contracts (409)."""

    def __init__(self, calendar_id: str, contracts: Sequence[str]) -> None:
        names = ", ".join(contracts)
        super().__init__(
            f"calendar {calendar_id!r} is named by the current version of contract(s) "
            f"{names}: put versions without it or retire them first"
        )
        self.contracts = list(contracts)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


# --------------------------------------------------------------------------- calendars


def calendar_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The calendar's own fields (no ids or timestamps), as Calendar.from_json takes them."""
    return {k: row[k] for k in _CALENDAR_FIELDS}


def put_calendar(
    conn: Connection, tenant_id: UUID, calendar_id: str, calendar: Calendar
) -> tuple[dict[str, Any], bool]:
    """Create or replace; returns (row, created)."""
    data = calendar.to_json()
    row = (
        conn.execute(
            SQL.put_calendar.text,
            {
                "tenant": tenant_id,
                "calendar_id": calendar_id,
                **data,
                "weekly_hours": _json(data["weekly_hours"]),
                "holidays": _json(data["holidays"]),
            },
        )
        .mappings()
        .one()
    )
    return dict(row), row["created"]


def get_calendar(conn: Connection, tenant_id: UUID, calendar_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        SQL.get_calendar.text, {"tenant": tenant_id, "calendar_id": calendar_id}
    ).mappings()
    found = row.first()
    return None if found is None else dict(found)


def list_calendars(
    conn: Connection, tenant_id: UUID, *, after: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    rows = conn.execute(
        SQL.list_calendars.text, {"tenant": tenant_id, "after": after, "limit": limit + 1}
    ).mappings()
    found = [dict(r) for r in rows]
    return found[:limit], len(found) > limit


def delete_calendar(conn: Connection, tenant_id: UUID, calendar_id: str) -> bool:
    """Delete; False if there is no such calendar. Raises CalendarInUse."""
    keys = {"tenant": tenant_id, "calendar_id": calendar_id}
    row = conn.execute(SQL.lock_calendar.text, keys).mappings().first()
    if row is None:
        return False
    if row["contracts"]:
        raise CalendarInUse(calendar_id, row["contracts"])
    conn.execute(SQL.delete_calendar.text, keys)
    return True


# --------------------------------------------------------------------------- contracts


@dataclass(frozen=True)
class ContractSpec:
    """A contract version as PUT gives it (validated by web/schemas.py)."""

    name: str
    window_seconds: int
    calendar_id: str | None
    warning_thresholds: list[int]
    escalation_steps: list[dict[str, Any]]
    pause_on: list[str]
    resume_on: list[str]


def put_contract(
    conn: Connection, tenant_id: UUID, contract_id: str, spec: ContractSpec
) -> dict[str, Any]:
    """Write the contract's next version and make it current (reviving a
    retired contract). Raises Unresolvable when calendar_id names no calendar."""
    if spec.calendar_id is not None:
        # Kept from deletion until commit: a concurrent DELETE of the calendar
        # waits and then sees this version (models/sql/contracts.sql).
        shared = conn.execute(
            SQL.share_calendar.text, {"tenant": tenant_id, "calendar_id": spec.calendar_id}
        ).first()
        if shared is None:
            raise Unresolvable("calendar_id", f"names no calendar: {spec.calendar_id!r}")
    row = (
        conn.execute(
            SQL.put_contract.text,
            {
                "tenant": tenant_id,
                "contract_id": contract_id,
                "name": spec.name,
                "window_seconds": spec.window_seconds,
                "calendar_id": spec.calendar_id,
                "warning_thresholds": spec.warning_thresholds,
                "escalation_steps": _json(spec.escalation_steps),
                "pause_on": spec.pause_on,
                "resume_on": spec.resume_on,
            },
        )
        .mappings()
        .one()
    )
    return dict(row)


def get_contract(
    conn: Connection, tenant_id: UUID, contract_id: str, version: int | None = None
) -> dict[str, Any] | None:
    """The current version (or ``version``); None if either is unknown."""
    row = conn.execute(
        SQL.get_contract.text,
        {"tenant": tenant_id, "contract_id": contract_id, "version": version},
    ).mappings()
    found = row.first()
    return None if found is None else dict(found)


def list_contracts(
    conn: Connection, tenant_id: UUID, *, after: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    rows = conn.execute(
        SQL.list_contracts.text, {"tenant": tenant_id, "after": after, "limit": limit + 1}
    ).mappings()
    found = [dict(r) for r in rows]
    return found[:limit], len(found) > limit


def retire_contract(conn: Connection, tenant_id: UUID, contract_id: str) -> datetime | None:
    """Retire; the instant it was (first) retired, or None if there is no such contract."""
    return conn.execute(
        SQL.retire_contract.text, {"tenant": tenant_id, "contract_id": contract_id}
    ).scalar_one_or_none()


# --------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Lookup:
    """What ``lookup`` found: contracts' current versions (with their calendar
    rows), calendars by id, and the database's clock."""

    now: datetime
    contracts: Mapping[str, Mapping[str, Any]]
    calendars: Mapping[str, Mapping[str, Any]]


def lookup(
    conn: Connection, tenant_id: UUID, contract_ids: Iterable[str], calendar_ids: Iterable[str]
) -> Lookup:
    """Each distinct contract and calendar once, in one round trip."""
    row = (
        conn.execute(
            SQL.resolve.text,
            {
                "tenant": tenant_id,
                "contracts": sorted(set(contract_ids)),
                "calendars": sorted(set(calendar_ids)),
            },
        )
        .mappings()
        .one()
    )
    return Lookup(row["now"], row["contracts"], row["calendars"])


@dataclass(frozen=True)
class Policy:
    """What a start follows once its contract is resolved."""

    window_seconds: int
    escalation_steps: list[dict[str, Any]]
    warning_thresholds: list[int]
    calendar: dict[str, Any] | None  # Calendar.to_json(), or None: every second counts
    contract_version: int | None
    snapshot: dict[str, Any] | None

    def schedule(self, started_at: datetime) -> Schedule:
        return Schedule(
            started_at=started_at,
            window_seconds=self.window_seconds,
            calendar=calendar_from_row(self.calendar),
        )

    def due_at(self, started_at: datetime) -> datetime:
        return self.schedule(started_at).due

    def first_fire_at(self, started_at: datetime) -> datetime:
        """The earliest of due and the first warning: what the timer waits for
        first. A warning already past is the firing path's to record skipped."""
        return first_fire_at(self.schedule(started_at), self.warning_thresholds)

    @property
    def plain(self) -> bool:
        """No calendar and no warnings: due and the first fire time are start + window."""
        return self.calendar is None and not self.warning_thresholds


def needs_lookup(contract_id: str, calendar_id: str | None) -> bool:
    """Whether a start must look its contract or calendar up before it can be
    inserted. A plain start under "default" need not: its insert is skipped
    when the tenant defined a "default" contract, and then it resolves."""
    return contract_id != DEFAULT_CONTRACT or calendar_id is not None


def resolve(
    found: Lookup,
    contract_id: str,
    *,
    window_seconds: int | None,
    escalation_steps: list[dict[str, Any]] | None,
    warning_thresholds: list[int] | None,
    calendar_id: str | None,
) -> Policy:
    """The policy of a start under ``contract_id`` that gives these fields
    (None: not given). Raises Unresolvable naming the request's field."""
    contract = found.contracts.get(contract_id)
    if contract is None and contract_id != DEFAULT_CONTRACT:
        raise Unresolvable("sla_contract_id", f"names no contract of this tenant: {contract_id!r}")
    if contract is not None and contract["retired_at"] is not None:
        raise Unresolvable(
            "sla_contract_id", f"contract {contract_id!r} is retired: it starts no timers"
        )
    if contract is None and window_seconds is None:
        raise Unresolvable("window_seconds", "give exactly one of window_seconds or window_minutes")

    if calendar_id is not None:
        row = found.calendars.get(calendar_id)
        if row is None:
            raise Unresolvable("calendar_id", f"names no calendar of this tenant: {calendar_id!r}")
    else:
        row = contract.get("calendar") if contract is not None else None
        calendar_id = contract.get("calendar_id") if contract is not None else None
        if calendar_id is not None and row is None:  # deleted under a retired version
            raise Unresolvable(
                "sla_contract_id", f"contract {contract_id!r} names a deleted calendar"
            )
    calendar = None if row is None else calendar_json(row)

    base = contract or {}
    policy_window = window_seconds if window_seconds is not None else base["window_seconds"]
    steps = escalation_steps
    if steps is None:
        steps = base.get("escalation_steps") or [dict(s) for s in DEFAULT_LADDER]
    thresholds = warning_thresholds
    if thresholds is None:
        thresholds = list(base.get("warning_thresholds") or ())
    snapshot = None
    if contract is not None:
        snapshot = {
            "contract_id": contract_id,
            "version": contract["version"],
            "name": contract["name"],
            "window_seconds": policy_window,
            "calendar_id": calendar_id,
            "calendar": calendar,
            "warning_thresholds": thresholds,
            "escalation_steps": steps,
            "pause_on": list(contract["pause_on"]),
            "resume_on": list(contract["resume_on"]),
        }
    return Policy(
        window_seconds=policy_window,
        escalation_steps=steps,
        warning_thresholds=thresholds,
        calendar=calendar,
        contract_version=None if contract is None else contract["version"],
        snapshot=snapshot,
    )
