"""Calendar and contract routes (docs/contracts.md): a tenant's business-hours
calendars and its versioned SLA contracts. The database side is
models/contracts.py; a calendar's meaning is checked by
models.calendars.Calendar.from_json, whose errors name the field.

Every query is scoped by the authenticated tenant, and another tenant's
calendar or contract answers 404 exactly like a missing one.
"""

from __future__ import annotations

from flask import Blueprint, Response, g

from models import contracts as contract_sql
from models.calendars import Calendar as BusinessCalendar
from models.calendars import CalendarError
from models.db import tenant_scope

from .operations import json_response, operation
from .parsing import text_problems
from .problems import not_found, validation_error
from .schemas import (
    Calendar,
    CalendarPage,
    CalendarPut,
    Contract,
    ContractPage,
    ContractPut,
    ContractQueryVersion,
    ListQuery,
    Problem,
    ladder_json,
)
from .services import services

bp = Blueprint("contracts", __name__)

CALENDAR_NOT_FOUND = ("No such calendar for this tenant", Problem)
CONTRACT_NOT_FOUND = ("No such contract (or version) for this tenant", Problem)


def _tenant():
    """A transaction that sees only the authenticated tenant's rows."""
    return tenant_scope(services().engine, g.tenant_id)


def _path_id(name: str, value: str) -> str:
    # The ids are the client's own names: what the database cannot store is a
    # 422, like the same text in a body.
    problems = text_problems({name: value})
    if not 1 <= len(value) <= 200:
        problems.append({"field": name, "reason": "must be 1 to 200 characters"})
    if problems:
        raise validation_error(problems)
    return value


# --------------------------------------------------------------------------- calendars


@bp.put("/v1/calendars/<calendar_id>")
@operation(
    "Create or replace a business-hours calendar",
    limited=True,
    tag="calendars",
    body=CalendarPut,
    responses={
        201: ("Created", Calendar),
        200: ("Replaced", Calendar),
    },
    description=(
        "Timers copy the calendar when they start, so replacing it changes only timers "
        "started later. A week without working time is a 422."
    ),
)
def put_calendar(calendar_id: str, body: CalendarPut):
    calendar_id = _path_id("calendar_id", calendar_id)
    try:
        calendar = BusinessCalendar.from_json(body.model_dump())
    except CalendarError as exc:
        raise validation_error([{"field": exc.field, "reason": exc.reason}]) from None
    with _tenant() as conn:
        row, created = contract_sql.put_calendar(conn, g.tenant_id, calendar_id, calendar)
    headers = {"Location": f"/v1/calendars/{calendar_id}"}
    return json_response(Calendar.model_validate(row), 201 if created else 200, headers)


@bp.get("/v1/calendars/<calendar_id>")
@operation(
    "Get a calendar",
    tag="calendars",
    responses={200: ("The calendar", Calendar), 404: CALENDAR_NOT_FOUND},
)
def get_calendar(calendar_id: str):
    calendar_id = _path_id("calendar_id", calendar_id)
    with _tenant() as conn:
        row = contract_sql.get_calendar(conn, g.tenant_id, calendar_id)
    if row is None:
        raise not_found("calendar")
    return json_response(Calendar.model_validate(row))


@bp.get("/v1/calendars")
@operation(
    "List calendars, by id",
    tag="calendars",
    query=ListQuery,
    responses={200: ("A page of calendars", CalendarPage)},
)
def list_calendars(query: ListQuery):
    with _tenant() as conn:
        rows, more = contract_sql.list_calendars(
            conn, g.tenant_id, after=query.after, limit=query.limit
        )
    items = [Calendar.model_validate(r) for r in rows]
    return json_response(
        CalendarPage(items=items, next_after=items[-1].calendar_id if more else None)
    )


@bp.delete("/v1/calendars/<calendar_id>")
@operation(
    "Delete a calendar",
    limited=True,
    tag="calendars",
    responses={
        204: ("Deleted", None),
        404: CALENDAR_NOT_FOUND,
        409: ("The current version of a live contract names it (detail lists them)", Problem),
    },
    description=(
        "Running timers keep their own copy of the calendar. A calendar that the current "
        "version of a contract not retired names cannot be deleted: 409."
    ),
)
def delete_calendar(calendar_id: str):
    calendar_id = _path_id("calendar_id", calendar_id)
    with _tenant() as conn:
        deleted = contract_sql.delete_calendar(conn, g.tenant_id, calendar_id)
    if not deleted:
        raise not_found("calendar")
    return Response(status=204)


# --------------------------------------------------------------------------- contracts


def _contract(row: dict) -> Contract:
    return Contract.model_validate(row)


@bp.put("/v1/contracts/<contract_id>")
@operation(
    "Write a contract's next version",
    limited=True,
    tag="contracts",
    body=ContractPut,
    responses={201: ("The new version, now current", Contract)},
    description=(
        "Each PUT writes version N+1 (1 for a new contract) and makes it current; a retired "
        "contract is revived. Timers started before keep the version they took. "
        "calendar_id must name one of the tenant's calendars (else a 422)."
    ),
)
def put_contract(contract_id: str, body: ContractPut):
    contract_id = _path_id("contract_id", contract_id)
    spec = contract_sql.ContractSpec(
        name=body.name,
        window_seconds=body.window,
        calendar_id=body.calendar_id,
        warning_thresholds=body.warning_thresholds,
        escalation_steps=ladder_json(body.escalation_steps),
        pause_on=list(body.pause_on),
        resume_on=list(body.resume_on),
    )
    try:
        with _tenant() as conn:
            row = contract_sql.put_contract(conn, g.tenant_id, contract_id, spec)
    except contract_sql.Unresolvable as exc:
        raise validation_error([{"field": exc.field, "reason": exc.reason}]) from None
    headers = {"Location": f"/v1/contracts/{contract_id}?version={row['version']}"}
    return json_response(_contract(row), 201, headers)


@bp.get("/v1/contracts/<contract_id>")
@operation(
    "Get a contract: its current version, or ?version=N",
    tag="contracts",
    query=ContractQueryVersion,
    responses={200: ("The version", Contract), 404: CONTRACT_NOT_FOUND},
)
def get_contract(contract_id: str, query: ContractQueryVersion):
    contract_id = _path_id("contract_id", contract_id)
    with _tenant() as conn:
        row = contract_sql.get_contract(conn, g.tenant_id, contract_id, query.version)
    if row is None:
        raise not_found("contract" if query.version is None else "contract version")
    return json_response(_contract(row))


@bp.get("/v1/contracts")
@operation(
    "List contracts at their current version, by id",
    tag="contracts",
    query=ListQuery,
    responses={200: ("A page of contracts", ContractPage)},
)
def list_contracts(query: ListQuery):
    with _tenant() as conn:
        rows, more = contract_sql.list_contracts(
            conn, g.tenant_id, after=query.after, limit=query.limit
        )
    items = [_contract(r) for r in rows]
    return json_response(
        ContractPage(items=items, next_after=items[-1].contract_id if more else None)
    )


@bp.delete("/v1/contracts/<contract_id>")
@operation(
    "Retire a contract",
    limited=True,
    tag="contracts",
    responses={204: ("Retired (or already was)", None), 404: CONTRACT_NOT_FOUND},
    description=(
        "A retired contract starts no timers (a start naming it is a 422); running timers "
        "are unaffected. Idempotent. A PUT revives it with a new version."
    ),
)
def retire_contract(contract_id: str):
    contract_id = _path_id("contract_id", contract_id)
    with _tenant() as conn:
        retired = contract_sql.retire_contract(conn, g.tenant_id, contract_id)
    if retired is None:
        raise not_found("contract")
    return Response(status=204)
