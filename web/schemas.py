"""Request and response schemas: the single source of validation and of /openapi.json.

Request models are strict (``"5"`` and ``true`` are not ints) and forbid unknown
fields, so a typo is an error rather than a silently ignored option. A whole
number written as ``60.0`` is the integer 60, as JSON Schema's ``integer`` says. Response models
whitelist what leaves the service: internal columns (tenant, fingerprint,
claim token, lease) cannot leak because they are not declared.

A rule JSON Schema cannot express (unique step numbers, a body field that must
agree with a query parameter, a cursor only the API issues...) is stated in the
field's ``description`` and, for tools, in an ``x-constraints`` list of
``{"rule": ..., "description": ...}`` beside the schema it constrains (see
``constraints``). The document thus says everything the server enforces; the
schemathesis run applies these rules to the data it generates as valid.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from models.schema import EVENT_TYPES, PROCESSING_STATUSES, STEP_OUTCOMES, TIMER_STATUSES
from models.sla import DEFAULT_LADDER, ladder_problem, utcnow

from .limits import ID_MAX, TENANT_NAME
from .parsing import INT64, MAX_DEPTH

# A year and a day: keeps due_at and step times far from any integer or datetime limit.
MAX_WINDOW_SECONDS = 366 * 24 * 3600
MAX_STEPS = 50
MAX_BULK = 1000
MAX_STEP_REPEATS = 100
EARLIEST_START = datetime(1970, 1, 1, tzinfo=UTC)

TimerStatus = Literal[TIMER_STATUSES]  # type: ignore[valid-type]
ProcessingStatus = Literal[PROCESSING_STATUSES]  # type: ignore[valid-type]
StepOutcome = Literal[STEP_OUTCOMES]  # type: ignore[valid-type]

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?(?P<offset>[Zz]|[+-]\d{2}:\d{2})?"
)


def _rfc3339(value: Any) -> Any:
    """Only RFC 3339 strings with an offset: no Unix numbers, no naive local times."""
    if isinstance(value, datetime):  # already parsed (Python callers)
        return value
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise PydanticCustomError(
            "rfc3339", "must be an RFC 3339 date-time such as 2024-05-01T12:00:00Z"
        )
    if match["offset"] is None:
        raise PydanticCustomError("naive_datetime", "must include a timezone offset (Z or +hh:mm)")
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError:
        raise PydanticCustomError("rfc3339", "is not a valid date-time") from None


def _whole_number(value: Any) -> Any:
    # JSON has one number type: 60.0 is the integer the document's "integer" admits.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise PydanticCustomError("date_range", "is outside the range of dates") from None


Rfc3339 = Annotated[datetime, BeforeValidator(_rfc3339), AfterValidator(_to_utc)]
Whole = BeforeValidator(_whole_number)
WholeInt = Annotated[int, Whole]
# Output datetimes are always UTC, whatever the database session's time zone.
UtcDatetime = Annotated[datetime, AfterValidator(_to_utc)]
Id = Annotated[str, Field(min_length=1, max_length=ID_MAX)]


def constraints(*rules: dict[str, Any]) -> dict[str, Any]:
    """``json_schema_extra`` stating rules beyond JSON Schema, each a dict with a
    ``rule`` name, its parameters and a ``description``."""
    return {"x-constraints": list(rules)}


UNIQUE_STEPS = {
    "rule": "unique",
    "keys": ["step"],
    "description": "No two steps share a step number.",
}
ORDERED_STEPS = {
    "rule": "non-decreasing",
    "key": "after_seconds",
    "order-by": "step",
    "description": "A step's after_seconds is not less than that of a lower-numbered step.",
}
START_RANGE = {
    "rule": "date-time-range",
    "minimum": EARLIEST_START.isoformat().replace("+00:00", "Z"),
    "maximum-ahead-seconds": MAX_WINDOW_SECONDS,
    "description": "From 1970 to 366 days after the request; a leap second (:60) is refused.",
}
UNIQUE_PAIRS = {
    "rule": "unique",
    "keys": ["lead_id", "sla_contract_id"],
    "defaults": {"sla_contract_id": "default"},
    "description": "No two timers share a lead_id and sla_contract_id.",
}
AGREES_WITH_QUERY = {
    "rule": "equal-when-both-given",
    "other": {"in": "query", "name": "sla_contract_id"},
    "description": "When the query names sla_contract_id too, both must be equal.",
}
# JSON Schema could bound every integer in metadata, but it counts 1e20 as an
# integer, which the server reads as a float and stores: the document would
# refuse what the server accepts. A nesting limit has no JSON Schema keyword.
INT64_VALUES = {
    "rule": "integer-range",
    "minimum": INT64.start,
    "maximum": INT64.stop - 1,
    "description": "Integers written without a fraction or exponent fit in 64 bits.",
}
BODY_DEPTH = {
    "rule": "max-depth",
    "levels": MAX_DEPTH,
    "from": "request body",
    "description": f"The request body nests at most {MAX_DEPTH} levels deep.",
}
ISSUED_CURSOR = {
    "rule": "issued-by-api",
    "source": "TimerPage.next_cursor",
    "description": "Only a next_cursor this listing returned; its content is not specified.",
}


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ResponseModel(BaseModel):
    # Built from database rows: unknown columns are dropped, never echoed.
    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------- requests


class EscalationStep(RequestModel):
    step: WholeInt = Field(ge=1, le=10_000, description="Step number, unique within the ladder.")
    after_seconds: WholeInt = Field(
        ge=0,
        le=MAX_WINDOW_SECONDS,
        description="Seconds after due_at at which the step fires; not less than the "
        "after_seconds of a lower-numbered step.",
    )
    action: str = Field(min_length=1, max_length=100)
    target: str | None = Field(default=None, min_length=1, max_length=500)
    repeat_every_seconds: Annotated[int, Field(ge=1, le=MAX_WINDOW_SECONDS), Whole] | None = Field(
        default=None,
        description="Run the step again every so many seconds after its first run, until "
        "the timer completes or is cancelled, or max_repeats repeats have run.",
    )
    max_repeats: Annotated[int, Field(ge=1, le=MAX_STEP_REPEATS), Whole] | None = Field(
        default=None,
        description="How many repeats after the first run; needs repeat_every_seconds. "
        f"Without it a repeating step repeats at most {MAX_STEP_REPEATS} times.",
    )

    # The rule in JSON Schema: a max_repeats number needs a repeat_every_seconds number.
    model_config = ConfigDict(
        json_schema_extra={
            "if": {"properties": {"max_repeats": {"type": "integer"}}, "required": ["max_repeats"]},
            "then": {
                "properties": {"repeat_every_seconds": {"type": "integer"}},
                "required": ["repeat_every_seconds"],
            },
        }
    )

    @model_validator(mode="after")
    def _repeats_need_interval(self) -> EscalationStep:
        if self.max_repeats is not None and self.repeat_every_seconds is None:
            raise PydanticCustomError("repeats", "max_repeats needs repeat_every_seconds")
        return self


def _one_window_of(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON Schema alternatives for "exactly one window, given and not null": each
    branch repeats that window's bounds, so generators keep to them."""
    return [
        {
            "required": [name],
            "properties": {
                name: next(s for s in schema["properties"][name]["anyOf"] if s["type"] == "integer")
            },
        }
        for name in ("window_seconds", "window_minutes")
    ]


def _usable_ladder(steps: list[EscalationStep]) -> list[EscalationStep]:
    # ladder_json, not model_dump: the same fields for the check, at a fraction of the cost.
    problem = ladder_problem(ladder_json(steps))
    if problem:
        raise PydanticCustomError("ladder", problem)
    return steps


def ladder_json(steps: list[EscalationStep]) -> list[dict[str, Any]]:
    """A ladder as stored: the repeat fields only on the steps that repeat.
    Built by hand: on a bulk start of 1,000 timers model_dump costs more than
    the rest of the item's preparation."""
    out = []
    for s in steps:
        step = {"step": s.step, "after_seconds": s.after_seconds, "action": s.action}
        step["target"] = s.target
        if s.repeat_every_seconds is not None:
            step["repeat_every_seconds"] = s.repeat_every_seconds
        if s.max_repeats is not None:
            step["max_repeats"] = s.max_repeats
        out.append(step)
    return out


def _ascending_thresholds(value: list[int] | None) -> list[int] | None:
    if value is not None:
        if len(set(value)) != len(value):
            raise PydanticCustomError("unique_thresholds", "must not name a threshold twice")
        return sorted(value)
    return value


Threshold = Annotated[int, Field(ge=1, le=99), Whole]
WarningThresholds = Annotated[
    list[Threshold],
    Field(max_length=99, json_schema_extra={"uniqueItems": True}),
    AfterValidator(_ascending_thresholds),
]
KNOWN_CONTRACT = {
    "rule": "known-contract",
    "description": "sla_contract_id is default or names one of the tenant's contracts that "
    "is not retired; calendar_id names one of the tenant's calendars; without a contract, "
    "exactly one of window_seconds and window_minutes is required.",
}


def _at_most_one_window(schema: dict[str, Any]) -> None:
    # Both windows at once is refused by JSON Schema too; "none" depends on
    # the contract, which only the server knows (x-constraints).
    schema["description"] = (
        "At most one of window_seconds and window_minutes; without either, the "
        "contract's window applies (a 422 when sla_contract_id names no contract)."
    )
    schema["not"] = {"required": ["window_seconds", "window_minutes"]}
    schema.update(constraints(KNOWN_CONTRACT))


def window_errors(data: dict[str, Any]) -> list[dict[str, str]]:
    """Both windows given: which one to take is ambiguous."""
    given = [k for k in ("window_seconds", "window_minutes") if data.get(k) is not None]
    if len(given) > 1:
        return [{"field": "window_seconds", "reason": ONE_WINDOW}]
    return []


ONE_WINDOW = "give exactly one of window_seconds or window_minutes"


class TimerCreate(RequestModel):
    lead_id: Id
    sla_contract_id: Id = "default"
    # The bounds go on the int itself, before the validator: given after it,
    # pydantic's JSON Schema would say "gt" and "le", which no validator knows.
    window_seconds: Annotated[int, Field(gt=0, le=MAX_WINDOW_SECONDS), Whole] | None = None
    window_minutes: Annotated[int, Field(gt=0, le=MAX_WINDOW_SECONDS // 60), Whole] | None = None
    started_at: Rfc3339 | None = Field(
        default=None,
        description="RFC 3339 with an offset; defaults to the time the server stores the "
        "start. From 1970 to 366 days ahead; a leap second (:60) is refused "
        "(x-constraints: JSON Schema has no bounds for a date-time).",
        json_schema_extra=constraints(START_RANGE),
    )
    escalation_steps: list[EscalationStep] = Field(
        default_factory=lambda: [EscalationStep(**s) for s in DEFAULT_LADDER],
        min_length=1,
        max_length=MAX_STEPS,
        description="Defaults to the contract's ladder, else to a single step: notify at "
        "due_at. Step numbers are unique, "
        "and after_seconds does not decrease as step numbers increase, so step order is "
        "firing order; a ladder that breaks either rule is a 422 (x-constraints: JSON "
        "Schema cannot compare the items of an array by one property).",
        json_schema_extra=constraints(UNIQUE_STEPS, ORDERED_STEPS),
    )
    correlation_id: Id | None = Field(
        default=None, description="Defaults to the X-Correlation-ID header, else a new UUID."
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="Any JSON object, stored and returned as given: integers within 64 "
        f"bits, the whole body at most {MAX_DEPTH} levels deep, no NUL characters "
        "(x-constraints: no JSON Schema keyword says either as the server means it).",
        json_schema_extra=constraints(INT64_VALUES, BODY_DEPTH),
    )

    warning_thresholds: WarningThresholds | None = Field(
        default=None,
        description="Warnings before breach (sla.timer.warning), as percentages of the "
        "window, 1 to 99, each at most once; overrides the contract's. Stored ascending.",
    )
    calendar_id: Id | None = Field(
        default=None,
        description="A business-hours calendar of the tenant (PUT /v1/calendars/{id}) to "
        "count the window in; overrides the contract's. Unknown: 422.",
    )

    model_config = ConfigDict(json_schema_extra=_at_most_one_window)

    @field_validator("started_at")
    @classmethod
    def _plausible_start(cls, value: datetime | None) -> datetime | None:
        if value is not None and not (
            EARLIEST_START <= value <= utcnow() + timedelta(seconds=MAX_WINDOW_SECONDS)
        ):
            raise PydanticCustomError(
                "start_range", "must be after 1970 and at most 366 days in the future"
            )
        return value

    _usable_ladder = field_validator("escalation_steps")(_usable_ladder)

    @staticmethod
    def cross_field_errors(data: dict[str, Any]) -> list[dict[str, str]]:
        """Checks across fields, run on the raw body so they report alongside field
        errors. A missing window is checked once the contract is known."""
        return window_errors(data)

    @property
    def window(self) -> int | None:
        return self.window_seconds or (self.window_minutes or 0) * 60 or None

    @property
    def steps_given(self) -> bool:
        return "escalation_steps" in self.model_fields_set


class TimerBulkCreate(RequestModel):
    timers: list[TimerCreate] = Field(
        min_length=1,
        max_length=MAX_BULK,
        description=f"1 to {MAX_BULK} timers, at most one per lead_id and sla_contract_id "
        "(x-constraints: JSON Schema's uniqueItems compares whole items).",
        json_schema_extra=constraints(UNIQUE_PAIRS),
    )

    @staticmethod
    def cross_field_errors(data: dict[str, Any]) -> list[dict[str, str]]:
        """Each item's own cross-field checks, and repeated (lead, contract) pairs."""
        items = data.get("timers")
        if not isinstance(items, list) or len(items) > MAX_BULK:
            return []  # the field error says it all
        errors: list[dict[str, str]] = []
        first: dict[tuple[str, str], int] = {}
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            errors += [
                {**e, "field": f"timers.{i}.{e['field']}"}
                for e in TimerCreate.cross_field_errors(item)
            ]
            pair = (item.get("lead_id"), item.get("sla_contract_id", "default"))
            if isinstance(pair[0], str) and isinstance(pair[1], str):
                seen = first.setdefault(pair, i)  # type: ignore[arg-type]
                if seen != i:
                    errors.append(
                        {
                            "field": f"timers.{i}.lead_id",
                            "reason": f"repeats the lead_id and sla_contract_id of timers.{seen}"
                            "; a request starts one timer per lead and contract",
                        }
                    )
        return errors


class CancelRequest(RequestModel):
    reason: str | None = Field(default=None, min_length=1, max_length=1000)


class CompleteRequest(RequestModel):
    pass


def _body_contract() -> Any:
    return Field(
        default=None,
        description="Only this contract's timers (also accepted as the query parameter "
        "sla_contract_id; given in both, they must be equal, else a 422. x-constraints: a "
        "schema cannot refer to another parameter).",
        json_schema_extra=constraints(AGREES_WITH_QUERY),
    )


class LeadCancelRequest(CancelRequest):
    sla_contract_id: Id | None = _body_contract()


class LeadCompleteRequest(RequestModel):
    sla_contract_id: Id | None = _body_contract()


class ContractQuery(RequestModel):
    model_config = ConfigDict(strict=False)  # query strings are all text

    sla_contract_id: Id | None = Field(
        default=None,
        description="Only this contract's timers. If the body names sla_contract_id too, "
        "both must be equal.",
    )


class TimerListQuery(RequestModel):
    model_config = ConfigDict(strict=False)

    lead_id: Id | None = None
    status: TimerStatus | None = None
    processing_status: ProcessingStatus | None = Field(
        default=None, description="FAILED: the dead-lettered timers, which POST .../retry re-arms."
    )
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = Field(
        default=None,
        max_length=500,
        description="The next_cursor of a page of this listing, as returned; any other "
        "string is a 422 (x-constraints: an opaque value has no schema).",
        json_schema_extra=constraints(ISSUED_CURSOR),
    )


class TenantCreate(RequestModel):
    name: str = Field(min_length=1, max_length=TENANT_NAME.max_length)


# --------------------------------------------------------------------------- responses


class Escalation(ResponseModel):
    step: int
    repeat: int = Field(0, description="0 for the step's first run, then 1, 2... for repeats.")
    executed_at: UtcDatetime
    outcome: StepOutcome
    error: str | None


class TimerWarning(ResponseModel):
    threshold: int = Field(description="Percentage of the window.")
    outcome: Literal["SENT", "SKIPPED"] = Field(
        description="SENT: sla.timer.warning was written. SKIPPED: already past when the "
        "timer started, overtaken by due, or the timer closed first."
    )
    scheduled_at: UtcDatetime = Field(description="The instant the warning was for.")
    recorded_at: UtcDatetime


class StepOut(ResponseModel):
    step: int
    after_seconds: int
    action: str
    target: str | None = None
    repeat_every_seconds: int | None = Field(None, description="Only on a step that repeats.")
    max_repeats: int | None = Field(None, description="Only on a step that repeats.")

    @model_serializer(mode="wrap")
    def _repeats_only_when_set(self, handler: Any) -> dict[str, Any]:
        # As the ladder is stored (ladder_json): a step that does not repeat
        # reads as it did before steps could.
        out = handler(self)
        for key in ("repeat_every_seconds", "max_repeats"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


class Timer(ResponseModel):
    id: UUID
    lead_id: str
    sla_contract_id: str
    status: TimerStatus
    processing_status: ProcessingStatus
    started_at: UtcDatetime
    due_at: UtcDatetime
    window_seconds: int
    escalation_steps: list[StepOut]
    correlation_id: str
    idempotency_key: str | None
    attempts: int
    last_error: str | None
    next_attempt_at: UtcDatetime | None
    metadata: dict[str, Any]
    cancel_reason: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime
    completed_at: UtcDatetime | None
    cancelled_at: UtcDatetime | None
    breached: bool | None = Field(description="Set when completed: true if after due_at.")
    escalations: list[Escalation] = Field(description="Steps recorded so far, in step order.")
    contract_version: int | None = Field(
        None, description="The contract version the timer follows; null without a contract."
    )
    contract_snapshot: dict[str, Any] | None = Field(
        None,
        description="The resolved policy the timer started under (contract id and version, "
        "window, calendar, warning thresholds, steps), for audit.",
    )
    warning_thresholds: list[int] = Field(
        default_factory=list, description="Warnings before breach, as percentages of the window."
    )
    paused_at: UtcDatetime | None = Field(None, description="Set while PAUSED.")
    pause_reason: str | None = None
    paused_seconds: float = Field(0, description="Wall time spent paused, in total.")
    warnings: list[TimerWarning] = Field(
        default_factory=list, description="Warnings recorded so far, in threshold order."
    )

    @classmethod
    def from_row(
        cls,
        row: dict[str, Any],
        escalations: list[dict[str, Any]],
        warnings: list[dict[str, Any]] | None = None,
    ) -> Timer:
        steps = [
            {
                "step": e["escalation_step"],
                "repeat": e.get("repeat", 0),
                "executed_at": e["executed_at"],
                "outcome": e["outcome"],
                "error": e["error_message"],
            }
            for e in escalations
        ]
        return cls.model_validate({**row, "escalations": steps, "warnings": warnings or []})


class TimerPage(ResponseModel):
    items: list[Timer]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end.")


class TimerBatch(ResponseModel):
    items: list[Timer] = Field(description="The timers, in the order of the request.")


class TimerItems(ResponseModel):
    items: list[Timer] = Field(description="The timers this request closed.")


class TenantCreated(ResponseModel):
    tenant_id: UUID
    name: str
    api_key: str = Field(description="Shown once; only its hash is stored.")


class ApiKey(ResponseModel):
    prefix: str = Field(description="Names the key in logs and admin routes; not a secret.")
    created_at: UtcDatetime
    revoked_at: UtcDatetime | None


class ApiKeyCreated(ApiKey):
    api_key: str = Field(description="Shown once; only its hash is stored.")


class ApiKeyList(ResponseModel):
    items: list[ApiKey]


class Liveness(ResponseModel):
    status: Literal["ok"]


class Readiness(ResponseModel):
    """Ready: ``database`` ok and ``migrations`` ok or ahead; Redis only degrades service."""

    database: Literal["ok", "down", "isolation-off"] = Field(
        description="isolation-off: the web role would see every tenant (named in detail)."
    )
    migrations: Literal["ok", "ahead", "behind", "unknown"] = Field(
        description=(
            "The database's alembic revision against this code's head. behind (or not "
            "migrated): not ready. ahead (a revision this code does not know, as during a "
            "rolling deploy; migrations add without removing): ready. unknown: the "
            "database is down."
        )
    )
    revision: str | None = Field(description="The database's alembic revision.")
    redis: Literal["ok", "degraded"] = Field(
        description=(
            "degraded: Redis is unreachable. Starts still succeed (201); wake-ups, the "
            "rate limit and the broadcast of key revocations wait for it "
            "(docs/reliability.md)."
        )
    )


class FieldError(ResponseModel):
    field: str = Field(description='Dotted path, e.g. "escalation_steps.0.after_seconds".')
    reason: str


class Problem(ResponseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: list[FieldError] | None = Field(default=None, description="Only on 422.")


# --------------------------------------------------------------------------- the event feed
# GET /v1/events (web/events.py): the pull feed of a tenant's outbox events.

FEED_LIMIT = 1000
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
LATEST = "latest"
_ONE_TYPE = "|".join(re.escape(t) for t in EVENT_TYPES)
ISSUED_FEED_CURSOR = {
    "rule": "issued-by-api",
    "source": "EventPage.next_cursor",
    "description": "Only a next_cursor this feed returned (or latest); its content is not "
    "specified.",
}


class EventListQuery(RequestModel):
    model_config = ConfigDict(strict=False)  # query strings are all text

    after: str | None = Field(
        default=None,
        max_length=100,
        description="The next_cursor of an earlier answer, as returned: the feed goes on "
        "after it. Absent: from the tenant's first event. latest: from the current end "
        "(no items, and a next_cursor after which only events not yet served follow). "
        "Any other string is a 422 (x-constraints: an opaque value has no schema).",
        json_schema_extra=constraints(ISSUED_FEED_CURSOR),
    )
    limit: int = Field(default=100, ge=1, le=FEED_LIMIT)
    type: str | None = Field(
        default=None,
        max_length=1000,
        description="Only events of these types, comma-separated (e.g. "
        "sla.timer.due,sla.escalation.triggered); an unknown type is a 422 that lists "
        "the accepted ones. The cursor still moves past the events left out.",
        json_schema_extra={"pattern": f"^({_ONE_TYPE})(,({_ONE_TYPE}))*$"},
    )

    @field_validator("type")
    @classmethod
    def _known_types(cls, value: str | None) -> str | None:
        if value is not None:
            unknown = [t for t in value.split(",") if t not in EVENT_TYPES]
            if unknown:
                raise PydanticCustomError(
                    "event_type",
                    "unknown event type {unknown}; accepted (comma-separated): {accepted}",
                    {"unknown": repr(unknown[0][:100]), "accepted": ", ".join(EVENT_TYPES)},
                )
        return value

    @property
    def types(self) -> list[str] | None:
        return None if self.type is None else list(dict.fromkeys(self.type.split(",")))


class Event(ResponseModel):
    """An outbox event, in the envelope webhooks deliver too."""

    id: str = Field(
        description="The event's stable id (evt_...), the webhook-id of its deliveries: "
        "deduplicate by it."
    )
    type: EventType
    timestamp: str = Field(
        description="When the event happened, RFC 3339 UTC.",
        json_schema_extra={"format": "date-time"},
    )
    data: dict[str, Any] = Field(
        description="The payload, with tenant_id; for timer events timer_id, lead_id, "
        "sla_contract_id and correlation_id, for steps escalation_step, action and target."
    )


class EventPage(ResponseModel):
    items: list[Event] = Field(description="Oldest first, in the feed's order.")
    next_cursor: str = Field(
        description="Always present: store it and pass it as after to read on. It comes "
        "back unchanged when there was nothing new to read: wait before polling again. "
        "It moves past the events a type filter leaves out, so a page can be empty with "
        "a new cursor: read on at once."
    )


# --------------------------------------------------------------------------- webhooks
# Subscriptions, deliveries, retry and replay (web/webhooks.py). Kept together
# here so the section reads on its own; it uses only the helpers above.

from models.envelope import event_id as _event_id  # noqa: E402
from models.schema import DELIVERY_STATUSES, EVENT_TYPES  # noqa: E402

WEBHOOK_URL_MAX = 2048
WEBHOOK_DESCRIPTION_MAX = 1000
MAX_GRACE_SECONDS = 30 * 24 * 3600
MAX_REPLAY_EVENTS = 100_000
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
DeliveryStatus = Literal[DELIVERY_STATUSES]  # type: ignore[valid-type]

# What a URL must look like before its host is resolved. JSON Schema's pattern
# keyword says the same (ECMA-262): http or https, lowercase, no whitespace.
WEBHOOK_URL_PATTERN = r"^https?://\S+$"
_WEBHOOK_URL = re.compile(r"https?://\S+")

WEBHOOK_DESTINATION = {
    "rule": "webhook-destination",
    "description": "The URL's host resolves, and unless the server allows private networks "
    "(SLA_WEBHOOK_ALLOW_PRIVATE_NETWORKS=1) only to public addresses: not loopback, "
    "private, link-local (cloud metadata), carrier-grade NAT, multicast or reserved. "
    "The URL carries no user name or password.",
}
SINCE_RANGE = {
    "rule": "date-time-range",
    "minimum": EARLIEST_START.isoformat().replace("+00:00", "Z"),
    "maximum-ahead-seconds": 0,
    "description": "From 1970 to the time of the request: not in the future.",
}
UNTIL_AFTER_SINCE = {
    "rule": "ordered-date-times",
    "fields": ["since", "until"],
    "description": "until, when given, is later than since.",
}
ISSUED_WEBHOOK_CURSOR = {**ISSUED_CURSOR, "source": "WebhookPage.next_cursor"}
ISSUED_DELIVERY_CURSOR = {**ISSUED_CURSOR, "source": "DeliveryPage.next_cursor"}


def _webhook_url(value: str) -> str:
    if not _WEBHOOK_URL.fullmatch(value):
        raise PydanticCustomError(
            "webhook_url", "must start with http:// or https:// and contain no whitespace"
        )
    return value


def _unique_types(value: list[str] | None) -> list[str] | None:
    if value is not None and len(set(value)) != len(value):
        raise PydanticCustomError("unique_types", "must not name an event type twice")
    return value


WebhookUrl = Annotated[
    str,
    Field(
        min_length=1,
        max_length=WEBHOOK_URL_MAX,
        description="Where events are POSTed: an http or https URL of at most "
        f"{WEBHOOK_URL_MAX} characters whose host resolves, by default only to public "
        "addresses (x-constraints: checked by resolving the host).",
        json_schema_extra={"pattern": WEBHOOK_URL_PATTERN, **constraints(WEBHOOK_DESTINATION)},
    ),
    AfterValidator(_webhook_url),
]
EventTypes = Annotated[
    list[EventType],
    Field(min_length=1, max_length=len(EVENT_TYPES), json_schema_extra={"uniqueItems": True}),
    AfterValidator(_unique_types),
]
WebhookDescription = Annotated[str, Field(min_length=1, max_length=WEBHOOK_DESCRIPTION_MAX)]


def _no_null_default(schema: dict[str, Any]) -> None:
    # An optional PATCH field that may not be null: absent means "unchanged",
    # so the document states no default for it.
    for prop in schema.get("properties", {}).values():
        if prop.get("default", 0) is None and "anyOf" not in prop:
            del prop["default"]


class WebhookCreate(RequestModel):
    url: WebhookUrl
    event_types: EventTypes | None = Field(
        default=None,
        description="The event types to send, each at most once; absent or null: every "
        "type, including types added later.",
    )
    description: WebhookDescription | None = None


class WebhookUpdate(RequestModel):
    """JSON merge semantics: a field left out is unchanged."""

    model_config = ConfigDict(json_schema_extra=_no_null_default)

    url: WebhookUrl = None  # type: ignore[assignment]
    event_types: EventTypes | None = Field(
        default=None, description="null: every type, including types added later."
    )
    description: WebhookDescription | None = Field(default=None, description="null clears it.")
    enabled: bool = Field(
        default=None,  # type: ignore[arg-type]
        description="false stops deliveries; true after a disable (by request or after "
        "failing for SLA_WEBHOOK_DISABLE_AFTER_SECONDS) starts the subscription afresh: "
        "disabled_at, disabled_reason and failing_since are cleared.",
    )


class RotateSecretRequest(RequestModel):
    grace_seconds: Annotated[int, Field(ge=0, le=MAX_GRACE_SECONDS), Whole] | None = Field(
        default=None,
        description="How long the current secret keeps signing beside the new one; "
        "defaults to SLA_WEBHOOK_SECRET_GRACE_SECONDS (24 h). 0 revokes it at once.",
    )


class ReplayRequest(RequestModel):
    """The window of events to send again: [since, until)."""

    model_config = ConfigDict(json_schema_extra=constraints(UNTIL_AFTER_SINCE))

    since: Rfc3339 = Field(
        description="RFC 3339 with an offset: events created at or after this instant are "
        "sent again. Not in the future (x-constraints).",
        json_schema_extra=constraints(SINCE_RANGE),
    )
    until: Rfc3339 | None = Field(
        default=None,
        description="Only events created before this instant; later than since "
        "(x-constraints: JSON Schema cannot compare two fields).",
    )
    event_types: EventTypes | None = Field(
        default=None,
        description="Only these types (and only those the subscription takes); absent: all.",
    )

    @field_validator("since")
    @classmethod
    def _not_in_the_future(cls, value: datetime) -> datetime:
        if not EARLIEST_START <= value <= utcnow():
            raise PydanticCustomError("since_range", "must be after 1970 and not in the future")
        return value

    @staticmethod
    def cross_field_errors(data: dict[str, Any]) -> list[dict[str, str]]:
        try:
            since, until = (
                None if data.get(k) is None else _to_utc(_rfc3339(data[k]))
                for k in ("since", "until")
            )
        except Exception:  # the field errors say it
            return []
        if since is not None and until is not None and until <= since:
            return [{"field": "until", "reason": "must be later than since"}]
        return []


def _list_query(cursor_rule: dict[str, Any], source: str) -> Any:
    return Field(
        default=None,
        max_length=500,
        description=f"The next_cursor of a {source}, as returned; any other string is a 422 "
        "(x-constraints: an opaque value has no schema).",
        json_schema_extra=constraints(cursor_rule),
    )


class WebhookListQuery(RequestModel):
    model_config = ConfigDict(strict=False)

    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = _list_query(ISSUED_WEBHOOK_CURSOR, "page of this listing")


class DeliveryListQuery(RequestModel):
    model_config = ConfigDict(strict=False)

    status: DeliveryStatus | None = None
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = _list_query(ISSUED_DELIVERY_CURSOR, "page of this listing")


class SecretRotation(ResponseModel):
    previous_secret_expires_at: UtcDatetime = Field(
        description="Until then the previous secret signs beside the current one."
    )


class Webhook(ResponseModel):
    id: UUID
    url: str
    event_types: list[str] | None = Field(description="null: every event type.")
    description: str | None
    enabled: bool
    created_at: UtcDatetime
    updated_at: UtcDatetime
    disabled_at: UtcDatetime | None
    disabled_reason: str | None
    failing_since: UtcDatetime | None = Field(
        description="The first failed attempt since the last success; null while healthy."
    )
    last_success_at: UtcDatetime | None
    secret_rotation: SecretRotation | None = Field(
        description="While a rotation's grace period runs; null otherwise."
    )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Webhook:
        ends = row.get("rotation_ends_at")
        rotation = None if ends is None else {"previous_secret_expires_at": ends}
        return cls.model_validate({**row, "secret_rotation": rotation})


class WebhookCreated(Webhook):
    secret: str = Field(
        description="The signing secret (whsec_...). Shown only here and by rotate-secret."
    )


class WebhookPage(ResponseModel):
    items: list[Webhook]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end.")


class SecretRotated(ResponseModel):
    secret: str = Field(description="The new signing secret (whsec_...). Shown only here.")
    previous_secret_expires_at: UtcDatetime | None = Field(
        description="Until then the previous secret signs too; null if it was revoked at once."
    )


class DeliveryAttempt(ResponseModel):
    attempt: int
    attempted_at: UtcDatetime
    status_code: int | None = Field(description="null: no response (timeout, connection error).")
    duration_ms: int
    error: str | None


class Delivery(ResponseModel):
    id: int
    webhook_id: UUID = Field(description="The subscription it goes to.")
    event_id: str = Field(description='The event\'s id ("evt_..."), its webhook-id header.')
    event_type: str
    status: DeliveryStatus
    attempts: int = Field(description="Attempts of the current retry schedule.")
    next_attempt_at: UtcDatetime | None = Field(description="null unless PENDING.")
    last_attempt_at: UtcDatetime | None
    last_status_code: int | None
    last_duration_ms: int | None
    last_error: str | None
    delivered_at: UtcDatetime | None
    created_at: UtcDatetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Delivery:
        return cls.model_validate(
            {
                **row,
                "webhook_id": row["subscription_id"],
                "event_id": _event_id(row["event_id"]),
                "next_attempt_at": row["next_attempt_at"] if row["status"] == "PENDING" else None,
            }
        )


class DeliveryDetail(Delivery):
    attempt_history: list[DeliveryAttempt] = Field(
        description="Every attempt, oldest first, across retries and replays."
    )

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> DeliveryDetail:
        base = Delivery.from_row(row).model_dump()
        return cls.model_validate({**base, "attempt_history": row["attempts_log"]})


class DeliveryPage(ResponseModel):
    items: list[Delivery]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null at end.")


class ReplayResult(ResponseModel):
    replayed: int = Field(description="Deliveries armed: new ones and ones sent again.")


# --------------------------------------------------------------------------- lead events
# POST /v1/lead-events and /v1/lead-events/bulk (web/lead_events.py): a service's
# own lead events start, complete or cancel the lead's timer (docs/lead-events.md).
# Kept together here so the section reads on its own; it uses only the helpers above.

from models.lead_rules import START_TYPES as LEAD_START_TYPES  # noqa: E402
from models.lead_rules import TYPES as LEAD_EVENT_TYPES  # noqa: E402
from models.schema import LEAD_EVENT_OUTCOMES  # noqa: E402

# A sender's clock may run a little ahead of ours; an event further in the
# future is a mistake, and would date a timer that has not started yet.
LEAD_EVENT_MAX_AHEAD_SECONDS = 300
LeadEventOutcome = Literal[LEAD_EVENT_OUTCOMES]  # type: ignore[valid-type]

OCCURRED_RANGE = {
    "rule": "date-time-range",
    "minimum": EARLIEST_START.isoformat().replace("+00:00", "Z"),
    "maximum-ahead-seconds": LEAD_EVENT_MAX_AHEAD_SECONDS,
    "description": "From 1970 to 5 minutes after the request; a leap second (:60) is refused.",
}


LEAD_KNOWN_CONTRACT = {
    "rule": "known-contract",
    "description": "For lead.qualified and lead.created: sla_contract_id is default or "
    "names one of the tenant's contracts that is not retired; without a contract, exactly "
    "one of window_seconds and window_minutes is required.",
}


def _accepted_type(value: str) -> str:
    if value not in LEAD_EVENT_TYPES:
        raise PydanticCustomError(
            "lead_event_type",
            "is not an accepted type; accepted types: {accepted}",
            {"accepted": ", ".join(LEAD_EVENT_TYPES)},
        )
    return value


class LeadEventCreate(RequestModel):
    event_id: Id = Field(
        description="The sender's id of the event, unique per tenant: the same id and event "
        "again is a replay (no second effect), with another event a 409."
    )
    type: Annotated[str, AfterValidator(_accepted_type)] = Field(
        description="lead.qualified and lead.created start the lead's timer for the contract "
        "(superseding an open one), lead.contacted completes it, lead.disqualified, "
        "lead.closed and lead.deleted cancel it. lead.waiting_on_customer, "
        "lead.customer_replied, lead.on_hold and lead.off_hold pause or resume it when "
        "the timer's contract names them in pause_on or resume_on. Any other type is a 422.",
        json_schema_extra={"enum": list(LEAD_EVENT_TYPES)},
    )
    lead_id: Id
    sla_contract_id: Id = "default"
    occurred_at: Rfc3339 | None = Field(
        default=None,
        description="When it happened, RFC 3339 with an offset; defaults to when the server "
        "decides the event. A start's SLA runs from it (due_at = occurred_at + window), a "
        "contact is breached if it is after due_at, and events are ordered by it. From 1970 "
        "to 5 minutes ahead; a leap second (:60) is refused (x-constraints: JSON Schema has "
        "no bounds for a date-time).",
        json_schema_extra=constraints(OCCURRED_RANGE),
    )
    correlation_id: Id | None = Field(
        default=None,
        description="The started timer's; defaults to the X-Correlation-ID header, else a "
        "new UUID.",
    )
    window_seconds: Annotated[int, Field(gt=0, le=MAX_WINDOW_SECONDS), Whole] | None = None
    window_minutes: Annotated[int, Field(gt=0, le=MAX_WINDOW_SECONDS // 60), Whole] | None = None
    escalation_steps: list[EscalationStep] = Field(
        default_factory=lambda: [EscalationStep(**s) for s in DEFAULT_LADDER],
        min_length=1,
        max_length=MAX_STEPS,
        description="The started timer's ladder, as POST /v1/timers takes it; defaults to "
        "the contract's, else one step: notify at due_at (x-constraints: "
        "JSON Schema cannot compare the items of an array by one property).",
        json_schema_extra=constraints(UNIQUE_STEPS, ORDERED_STEPS),
    )
    data: dict[str, Any] = Field(
        default_factory=dict,
        description="Any JSON object: the started timer's metadata. Integers within 64 bits, "
        f"the whole body at most {MAX_DEPTH} levels deep, no NUL characters (x-constraints).",
        json_schema_extra=constraints(INT64_VALUES, BODY_DEPTH),
    )

    @staticmethod
    def _window_for_starts(schema: dict[str, Any]) -> None:
        # A start type takes at most one window (none: the contract's); the
        # other types ignore both.
        schema["description"] = (
            "lead.qualified and lead.created take at most one of window_seconds and "
            "window_minutes; without either, the contract's window applies (a 422 when "
            "sla_contract_id names no contract). The other types ignore them."
        )
        schema["allOf"] = [
            {
                "if": {
                    "properties": {"type": {"enum": list(LEAD_START_TYPES)}},
                    "required": ["type"],
                },
                "then": {"not": {"required": ["window_seconds", "window_minutes"]}},
            }
        ]
        schema.update(constraints(LEAD_KNOWN_CONTRACT))

    model_config = ConfigDict(json_schema_extra=_window_for_starts)

    @field_validator("occurred_at")
    @classmethod
    def _plausible_instant(cls, value: datetime | None) -> datetime | None:
        if value is not None and not (
            EARLIEST_START <= value <= utcnow() + timedelta(seconds=LEAD_EVENT_MAX_AHEAD_SECONDS)
        ):
            raise PydanticCustomError(
                "occurred_range", "must be after 1970 and at most 5 minutes in the future"
            )
        return value

    _usable_ladder = field_validator("escalation_steps")(_usable_ladder)

    @staticmethod
    def cross_field_errors(data: dict[str, Any]) -> list[dict[str, str]]:
        if data.get("type") in LEAD_START_TYPES:
            return window_errors(data)
        return []

    @property
    def window(self) -> int | None:
        return self.window_seconds or (self.window_minutes or 0) * 60 or None

    @property
    def steps_given(self) -> bool:
        return "escalation_steps" in self.model_fields_set

    def canonical(self) -> dict[str, Any]:
        """The event as its fingerprint sees it: defaults filled in, the instant
        in UTC and the window in seconds, so equal events are equal here."""
        body = self.model_dump(mode="json", exclude={"window_minutes"})
        # Steps as stored: a ladder without repeats fingerprints as it did
        # before steps could repeat, so replays of older events still match.
        steps = ladder_json(self.escalation_steps)
        return {**body, "window_seconds": self.window, "escalation_steps": steps}


class LeadEventBulkCreate(RequestModel):
    events: list[LeadEventCreate] = Field(
        min_length=1,
        max_length=MAX_BULK,
        description=f"1 to {MAX_BULK} events, taken in order, each as POST /v1/lead-events "
        "takes it. An event_id given twice is, the second time, a replay of the first (or a "
        "409 result, with another event).",
    )

    @staticmethod
    def cross_field_errors(data: dict[str, Any]) -> list[dict[str, str]]:
        items = data.get("events")
        if not isinstance(items, list) or len(items) > MAX_BULK:
            return []  # the field error says it all
        return [
            {**e, "field": f"events.{i}.{e['field']}"}
            for i, item in enumerate(items)
            if isinstance(item, dict)
            for e in LeadEventCreate.cross_field_errors(item)
        ]


class LeadEventResult(ResponseModel):
    event_id: str
    outcome: LeadEventOutcome = Field(
        description="What the event did to the lead's timer: started, completed, cancelled, "
        "paused, resumed, or ignored (see reason). A replay answers the first outcome."
    )
    timer_id: UUID | None = Field(
        description="The timer started, completed or cancelled; null when ignored."
    )
    reason: str | None = Field(description="Why the event was ignored; null otherwise.")


class LeadEventBulkItem(ResponseModel):
    event_id: str
    status: Literal[200, 201, 409] = Field(
        description="What POST /v1/lead-events would answer for this event alone: 201 it "
        "started a timer, 200 any other outcome or a replay, 409 its event_id is recorded "
        "with another event (nothing done; reason says so)."
    )
    replayed: bool = Field(description="True: recorded before; outcome is the first one.")
    outcome: LeadEventOutcome | None = Field(description="null only with status 409.")
    timer_id: UUID | None
    reason: str | None = Field(description="Why ignored, or the conflict (409).")


class LeadEventResults(ResponseModel):
    results: list[LeadEventBulkItem] = Field(description="One per event, in request order.")


# --------------------------------------------------------------------------- calendars, contracts
# PUT/GET/DELETE /v1/calendars/{calendar_id} and /v1/contracts/{contract_id}
# (web/contracts.py, docs/contracts.md). The calendar's meaning (zone names,
# intervals, holidays) is checked by models.calendars.Calendar.from_json; the
# models here give its shape, for validation and the document.

from models.lead_rules import HOLD_TYPES as LEAD_HOLD_TYPES  # noqa: E402

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_INTERVALS_PER_DAY = 24
MAX_HOLIDAYS = 1000
CLOCK_PATTERN = r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$"
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
Clock = Annotated[str, Field(pattern=CLOCK_PATTERN)]
Interval = Annotated[
    list[Clock],
    Field(
        min_length=2,
        max_length=2,
        description='["HH:MM", "HH:MM"], opening and closing; a closing time before the '
        'opening one spans midnight (["22:00", "06:00"]).',
    ),
]
HoldType = Literal[LEAD_HOLD_TYPES]  # type: ignore[valid-type]
WEEKDAY_HOURS = {
    "rule": "calendar",
    "description": "The zone is an IANA name, the country and subdivision are known to the "
    "holidays package, holiday dates exist, a day's intervals do not overlap, and the week "
    "holds some working time.",
}
DISJOINT_HOLDS = {
    "rule": "disjoint",
    "fields": ["pause_on", "resume_on"],
    "description": "No lead event type is in both pause_on and resume_on.",
}
KNOWN_CALENDAR = {
    "rule": "known-calendar",
    "description": "calendar_id names one of the tenant's calendars.",
}


class CalendarPut(RequestModel):
    """A business-hours calendar: when the window's time counts (docs/calendars.md)."""

    model_config = ConfigDict(
        json_schema_extra={
            **constraints(WEEKDAY_HOURS),
            "examples": [
                {
                    "timezone": "Europe/Berlin",
                    "weekly_hours": {d: [["09:00", "17:00"]] for d in DAYS[:5]},
                    "holidays": ["2026-12-24"],
                    "holiday_country": "DE",
                    "holiday_subdivision": "BY",
                }
            ],
        }
    )

    timezone: str = Field(
        min_length=1, max_length=100, description="An IANA time zone, e.g. Europe/Berlin."
    )
    weekly_hours: dict[
        Literal[DAYS], Annotated[list[Interval], Field(max_length=MAX_INTERVALS_PER_DAY)]
    ] = Field(  # type: ignore[valid-type]
        description='Working intervals per weekday ("mon" to "sun"); a day left out or '
        "empty is closed. The week must hold some working time."
    )
    holidays: list[Annotated[str, Field(pattern=DATE_PATTERN)]] = Field(
        default_factory=list,
        max_length=MAX_HOLIDAYS,
        description="Closed dates (YYYY-MM-DD, in the calendar's zone), added to the "
        "country's holidays.",
    )
    holiday_country: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z]{2,3}$",
        description="A country code the holidays package knows (DE, US, also its "
        "three-letter aliases; any case): its public holidays are closed.",
    )
    holiday_subdivision: str | None = Field(
        default=None,
        min_length=1,
        max_length=10,
        description="The country's subdivision (e.g. BY for Bavaria); needs holiday_country.",
    )


class Calendar(ResponseModel):
    calendar_id: str
    timezone: str
    weekly_hours: dict[str, list[list[str]]]
    holidays: list[str]
    holiday_country: str | None
    holiday_subdivision: str | None
    created_at: UtcDatetime
    updated_at: UtcDatetime


class CalendarPage(ResponseModel):
    items: list[Calendar]
    next_after: str | None = Field(
        description="Pass as after for the next page (the last calendar_id); null at end."
    )


CONTRACT_EXAMPLE = {
    "name": "Gold: first contact within 2 business hours",
    "window_minutes": 120,
    "warning_thresholds": [50, 75, 90],
    "escalation_steps": [
        {"step": 1, "after_seconds": 0, "action": "notify", "target": "owner"},
        {
            "step": 2,
            "after_seconds": 600,
            "action": "page",
            "target": "team-lead",
            "repeat_every_seconds": 900,
            "max_repeats": 3,
        },
    ],
    "pause_on": ["lead.waiting_on_customer"],
    "resume_on": ["lead.customer_replied"],
}


class ContractPut(RequestModel):
    """A contract's next version: the policy timers started under it follow."""

    model_config = ConfigDict(
        json_schema_extra=lambda schema: schema.update(
            description="Exactly one of window_seconds and window_minutes is required.",
            oneOf=_one_window_of(schema),
            examples=[CONTRACT_EXAMPLE],
            **constraints(DISJOINT_HOLDS),
        )
    )

    name: str = Field(min_length=1, max_length=ID_MAX, description="A label for people.")
    window_seconds: Annotated[int, Field(gt=0, le=MAX_WINDOW_SECONDS), Whole] | None = None
    window_minutes: Annotated[int, Field(gt=0, le=MAX_WINDOW_SECONDS // 60), Whole] | None = None
    calendar_id: Id | None = Field(
        default=None,
        description="A calendar of the tenant to count the window in (business hours); "
        "null: every hour counts. Unknown: 422 (x-constraints).",
        json_schema_extra=constraints(KNOWN_CALENDAR),
    )
    warning_thresholds: WarningThresholds = Field(
        default_factory=list,
        description="Warnings before breach, as percentages of the window (1 to 99), each at "
        "most once. Stored ascending.",
    )
    escalation_steps: list[EscalationStep] = Field(
        min_length=1,
        max_length=MAX_STEPS,
        description="The ladder, as POST /v1/timers takes it (x-constraints: JSON Schema "
        "cannot compare the items of an array by one property).",
        json_schema_extra=constraints(UNIQUE_STEPS, ORDERED_STEPS),
    )
    pause_on: list[HoldType] = Field(
        default_factory=list,
        max_length=len(LEAD_HOLD_TYPES),
        description="Lead event types that pause the lead's open timer of this contract.",
        json_schema_extra={"uniqueItems": True},
    )
    resume_on: list[HoldType] = Field(
        default_factory=list,
        max_length=len(LEAD_HOLD_TYPES),
        description="Lead event types that resume it; none also in pause_on (x-constraints).",
        json_schema_extra={"uniqueItems": True},
    )

    _usable_ladder = field_validator("escalation_steps")(_usable_ladder)
    _unique_holds = field_validator("pause_on", "resume_on")(_unique_types)

    @staticmethod
    def cross_field_errors(data: dict[str, Any]) -> list[dict[str, str]]:
        given = [k for k in ("window_seconds", "window_minutes") if data.get(k) is not None]
        errors = [] if len(given) == 1 else [{"field": "window_seconds", "reason": ONE_WINDOW}]
        pause, resume = data.get("pause_on"), data.get("resume_on")
        if isinstance(pause, list) and isinstance(resume, list):
            both = [t for t in resume if isinstance(t, str) and t in pause]
            if both:
                errors.append({"field": "resume_on", "reason": f"{both[0]} is in pause_on too"})
        return errors

    @property
    def window(self) -> int:
        return self.window_seconds or (self.window_minutes or 0) * 60


class ContractQueryVersion(RequestModel):
    model_config = ConfigDict(strict=False)  # query strings are all text

    version: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="A version; absent: the current one."
    )


class ListQuery(RequestModel):
    model_config = ConfigDict(strict=False)

    limit: int = Field(default=50, ge=1, le=200)
    after: Id | None = Field(default=None, description="List the ids after this one.")


class Contract(ResponseModel):
    contract_id: str
    version: int
    current_version: int = Field(description="The version new timers take.")
    name: str
    window_seconds: int
    calendar_id: str | None
    warning_thresholds: list[int]
    escalation_steps: list[StepOut]
    pause_on: list[str]
    resume_on: list[str]
    retired_at: UtcDatetime | None = Field(
        description="Set once retired (DELETE): it starts no timers; a PUT revives it."
    )
    created_at: UtcDatetime = Field(description="When this version was written.")


class ContractPage(ResponseModel):
    items: list[Contract] = Field(description="Current versions, retired ones too, by id.")
    next_after: str | None = Field(
        description="Pass as after for the next page (the last contract_id); null at end."
    )
