"""Schemathesis hooks for the slow-tier run (``test_schemathesis.py``).

The document states the rules JSON Schema cannot express in ``x-constraints``
lists beside the schemas they constrain (``web/schemas.py``): unique step
numbers, a non-decreasing ladder, a start within range, one timer per lead and
contract in a bulk start, a body field that must agree with the query, a cursor
only the API issues. Schemathesis does not read them, so a case it generates as
valid may break one and be refused (422), rightly: the
``positive_data_acceptance`` check would then blame the server. This hook makes
every case generated as valid keep the document's ``x-constraints``, wherever
they stand in the body or the query, so that check still holds the server to
everything the document says. Cases generated as invalid are left alone.

A rule this module does not know fails the run: teach it here when the
document gains one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import schemathesis

from web.cursors import encode_cursor, encode_feed_cursor
from web.webhooks import encode_delivery_cursor

A_VALID_START = "2025-01-02T03:04:05Z"
# The fuzzing app allows private networks (test_schemathesis.py): a URL that
# resolves without DNS and that nothing listens on (the discard port).
A_WEBHOOK_URL = "http://127.0.0.1:9/webhook"


def _resolve(document: dict[str, Any], schema: Any) -> Any:
    while isinstance(schema, dict) and "$ref" in schema:
        node: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def _int(value: Any) -> bool:
    # JSON has one number type: 60.0 is the integer 60, for the server too.
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _unique(rule: dict[str, Any], value: Any, case: Any, depth: int) -> Any:
    """Items that repeat another's keys get a fresh value for the first key."""
    if not isinstance(value, list) or not all(isinstance(i, dict) for i in value):
        return value
    keys, defaults = rule["keys"], rule.get("defaults", {})
    seen: set[tuple] = set()
    for n, item in enumerate(value):
        identity = tuple(item.get(k, defaults.get(k)) for k in keys)
        if identity in seen:
            first = item.get(keys[0])
            if _int(first):  # the smallest number no item uses
                used = {i.get(keys[0]) for i in value}
                item[keys[0]] = next(x for x in range(1, len(value) + 2) if x not in used)
            elif isinstance(first, str):
                item[keys[0]] = f"{first[:190]}~{n}"
            identity = tuple(item.get(k, defaults.get(k)) for k in keys)
        seen.add(identity)
    return value


def _non_decreasing(rule: dict[str, Any], value: Any, case: Any, depth: int) -> Any:
    """The same values of ``key``, handed out in ``order-by`` order."""
    key, order = rule["key"], rule["order-by"]
    if not isinstance(value, list) or not all(
        isinstance(i, dict) and _int(i.get(key)) and _int(i.get(order)) for i in value
    ):
        return value
    ordered = sorted(value, key=lambda i: i[order])
    for item, at in zip(ordered, sorted(i[key] for i in value), strict=True):
        item[key] = at
    return value


def _date_time_range(rule: dict[str, Any], value: Any, case: Any, depth: int) -> Any:
    if not isinstance(value, str):
        return value
    earliest = datetime.fromisoformat(rule["minimum"])
    latest = datetime.now(UTC) + timedelta(seconds=rule["maximum-ahead-seconds"] - 86400)
    try:
        at = datetime.fromisoformat(value.upper())
        ok = at.tzinfo is not None and earliest <= at.astimezone(UTC) <= latest
    except (ValueError, OverflowError):  # a leap second, or before year 1 in UTC
        ok = False
    return value if ok else A_VALID_START


def _equal_when_both_given(rule: dict[str, Any], value: Any, case: Any, depth: int) -> Any:
    where = {"query": case.query, "header": case.headers, "path": case.path_parameters}
    other = (where[rule["other"]["in"]] or {}).get(rule["other"]["name"])
    return other if isinstance(value, str) and isinstance(other, str) else value


def _issued_by_api(rule: dict[str, Any], value: Any, case: Any, depth: int) -> Any:
    # Any position is a cursor the listing (or the event feed) could have returned.
    if rule.get("source") == "EventPage.next_cursor":
        return encode_feed_cursor((1, 1))
    if rule.get("source") == "DeliveryPage.next_cursor":
        return encode_delivery_cursor(1)
    return encode_cursor(datetime(2025, 1, 1, tzinfo=UTC), UUID(int=1))


def _integer_range(rule: dict[str, Any], value: Any, case: Any, depth: int) -> Any:
    """Every integer within, clamped to the range."""
    if isinstance(value, dict):
        return {k: _integer_range(rule, v, case, depth) for k, v in value.items()}
    if isinstance(value, list):
        return [_integer_range(rule, v, case, depth) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return min(max(value, rule["minimum"]), rule["maximum"])
    return value


def _max_depth(rule: dict[str, Any], value: Any, case: Any, depth: int) -> Any:
    """Containers nested deeper than the body allows become null."""
    if not isinstance(value, dict | list):
        return value
    if depth >= rule["levels"]:
        return None
    if isinstance(value, dict):
        return {k: _max_depth(rule, v, case, depth + 1) for k, v in value.items()}
    return [_max_depth(rule, v, case, depth + 1) for v in value]


def _webhook_destination(rule: dict[str, Any], value: Any, case: Any, depth: int) -> Any:
    # Whether a host resolves, and where to, is the network's say: any string
    # becomes the one URL the fuzzing app accepts.
    return A_WEBHOOK_URL if isinstance(value, str) else value


def _ordered_date_times(rule: dict[str, Any], value: Any, case: Any, depth: int) -> Any:
    """A later field not after an earlier one is dropped (they are optional)."""
    if not isinstance(value, dict):
        return value
    first, *later = rule["fields"]
    try:
        start = datetime.fromisoformat(str(value.get(first)).upper())
        for name in later:
            given = value.get(name)
            if isinstance(given, str) and datetime.fromisoformat(given.upper()) <= start:
                value.pop(name)
    except (ValueError, TypeError):  # not date-times: the field errors are the case's
        pass
    return value


def _known_contract(rule: dict[str, Any], value: Any, case: Any, depth: int) -> Any:
    # The run defines no contracts or calendars: a start keeps to "default"
    # with a window of its own.
    if isinstance(value, dict):
        value["sla_contract_id"] = "default"
        value.pop("calendar_id", None)
        if value.get("window_seconds") is None and value.get("window_minutes") is None:
            value.pop("window_minutes", None)
            value["window_seconds"] = 60
    return value


def _calendar(rule: dict[str, Any], value: Any, case: Any, depth: int) -> Any:
    if isinstance(value, dict):
        value.update(
            timezone="Europe/Berlin",
            weekly_hours={"mon": [["09:00", "17:00"]]},
            holidays=[],
            holiday_country=None,
            holiday_subdivision=None,
        )
    return value


def _disjoint(rule: dict[str, Any], value: Any, case: Any, depth: int) -> Any:
    first, second = rule["fields"]
    lists = isinstance(value, dict) and all(isinstance(value.get(f), list) for f in (first, second))
    if lists:
        value[second] = [v for v in value[second] if v not in value[first]]
    return value


def _known_calendar(rule: dict[str, Any], value: Any, case: Any, depth: int) -> Any:
    return None  # the run defines no calendars


RULES: dict[str, Callable[[dict[str, Any], Any, Any, int], Any]] = {
    "known-contract": _known_contract,
    "calendar": _calendar,
    "disjoint": _disjoint,
    "known-calendar": _known_calendar,
    "unique": _unique,
    "non-decreasing": _non_decreasing,
    "date-time-range": _date_time_range,
    "equal-when-both-given": _equal_when_both_given,
    "issued-by-api": _issued_by_api,
    "integer-range": _integer_range,
    "max-depth": _max_depth,
    "webhook-destination": _webhook_destination,
    "ordered-date-times": _ordered_date_times,
}


def keep(document: dict[str, Any], schema: Any, value: Any, case: Any, depth: int = 0) -> Any:
    """``value`` (``depth`` levels into its request part) changed where needed
    to keep every x-constraint of ``schema`` and of the schemas below it
    (children first, so a list's items are settled before the list's rules)."""
    schema = _resolve(document, schema)
    if not isinstance(schema, dict):
        return value
    for combined in ("allOf", "anyOf", "oneOf"):
        for branch in schema.get(combined, ()):
            value = keep(document, branch, value, case, depth)
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                value[name] = keep(document, child, value[name], case, depth + 1)
    elif isinstance(value, list) and "items" in schema:
        for n, item in enumerate(value):
            value[n] = keep(document, schema["items"], item, case, depth + 1)
    for rule in schema.get("x-constraints", ()):
        if rule["rule"] not in RULES:
            raise LookupError(f"x-constraints rule {rule['rule']!r} is unknown to {__name__}")
        value = RULES[rule["rule"]](rule, value, case, depth)
    return value


@schemathesis.hook
def map_case(context, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return case
    document = case.operation.schema.raw_schema
    operation = case.operation.definition.raw
    for parameter in operation.get("parameters", ()):
        parameter = _resolve(document, parameter)
        if parameter["in"] == "query" and case.query and parameter["name"] in case.query:
            name = parameter["name"]
            case.query[name] = keep(document, parameter["schema"], case.query[name], case)
    body = operation.get("requestBody", {}).get("content", {}).get("application/json")
    if body is not None and isinstance(case.body, dict | list):
        case.body = keep(document, body["schema"], case.body, case)
    return case
