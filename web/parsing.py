"""Turning request bodies, query strings and headers into validated models.

Anything a client can send ends as a 4xx problem here, never as a 500 further
down: PostgreSQL rejects NUL characters in text and jsonb, psycopg cannot
encode unpaired surrogates, jsonb has no NaN or Infinity, and the JSON encoder
on the way to the database takes no integer beyond 64 bits, so those are
refused up front.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote_to_bytes

from flask import request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from .limits import HEADERS
from .problems import ApiProblem, problem_type, validation_error

M = TypeVar("M", bound=BaseModel)

MAX_DEPTH = 32
MAX_ERRORS = 50  # bound the answer to a body of a million bad strings
INT64 = range(-(2**63), 2**63)
NO_BODY = object()


def _malformed(detail: str) -> ApiProblem:
    return ApiProblem(400, detail, type_=problem_type("malformed-body"), title="Malformed body")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate names make the body mean different things to different parsers.
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ValueError(f"duplicate object key {key[:100]!r}")
        found[key] = value
    return found


def _bad_text(value: str) -> str | None:
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must not contain unpaired surrogates"
    return None


def text_problems(value: Any, path: str = "") -> list[dict[str, str]]:
    """Strings and integers the database cannot store, and nesting too deep for
    it, by field path."""
    errors: list[dict[str, str]] = []
    stack = [(value, path, 0)]
    while stack and len(errors) <= MAX_ERRORS:
        item, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            errors.append({"field": where, "reason": f"nests deeper than {MAX_DEPTH} levels"})
        elif isinstance(item, str):
            if reason := _bad_text(item):
                errors.append({"field": where or "body", "reason": reason})
        elif isinstance(item, int) and item not in INT64:
            errors.append({"field": where or "body", "reason": "is beyond the 64-bit range"})
        elif isinstance(item, dict):
            # Reversed onto the stack, so errors come out in document order.
            for key, child in reversed(item.items()):
                child_path = f"{where}.{key}" if where else str(key)
                if reason := _bad_text(key):
                    errors.append({"field": child_path, "reason": f"key {reason}"})
                stack.append((child, child_path, depth + 1))
        elif isinstance(item, list):
            stack.extend((c, f"{where}.{i}", depth + 1) for i, c in reversed(list(enumerate(item))))
    return errors


# A JSON string token (the text has already parsed), what is not a bracket, and
# a number too long to be sure it fits in 64 bits.
_STRING_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_LONG_DIGITS = re.compile(r"\d{19}")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def plain_json(text: str) -> bool:
    """True if the value parsed from ``text`` cannot hold anything
    ``text_problems`` reports, so the walk over every string can be skipped.

    NUL characters and unpaired surrogates can only be written as ``\\u``
    escapes (json.loads refuses raw control characters, and UTF-8 cannot
    encode a surrogate), an integer beyond 64 bits needs 19 digits in a row
    outside string tokens, and nesting deeper than MAX_DEPTH needs as many
    brackets open at once outside them.
    """
    if "\\u" in text:
        return False
    outside_strings = _STRING_TOKEN.sub("", text)
    if _LONG_DIGITS.search(outside_strings):
        return False
    brackets = _NOT_BRACKET.sub("", outside_strings)
    if brackets.count("[") + brackets.count("{") <= MAX_DEPTH:
        return True
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets))) <= MAX_DEPTH


def read_json(*, required: bool) -> Any:
    """The parsed JSON body; NO_BODY when it is empty and optional."""
    return _read_json(required=required)[0]


def _read_json(*, required: bool) -> tuple[Any, bool]:
    """(parsed body or NO_BODY, whether it is ``plain_json``)."""
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH...
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(raw) >= limit:
        # ...but a chunked body (no Content-Length) is silently cut at the limit.
        raise RequestEntityTooLarge()
    if not raw and not required:
        return NO_BODY, True
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiProblem(
            415,
            "send the body as application/json",
            headers={"Accept": "application/json"},
        )
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise ApiProblem(415, "JSON bodies must be UTF-8")
    if not raw:
        raise _malformed("the request body is empty; a JSON object is required")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed(f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except RecursionError:
        raise _malformed("the JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, duplicate keys, huge numbers
        raise _malformed(f"the body is not valid JSON: {exc}") from None
    return value, plain_json(text)


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "reason": e["msg"]}
        for e in exc.errors(include_url=False)
    ]


def validate(model: type[M], data: Any, *, plain: bool = False) -> M:
    """``plain``: the data is known to hold nothing ``text_problems`` reports."""
    if not isinstance(data, dict):
        raise validation_error([{"field": "body", "reason": "must be a JSON object"}])
    errors = [] if plain else text_problems(data)
    cross = getattr(model, "cross_field_errors", None)
    if cross is not None:
        errors += cross(data)
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        errors = field_errors(exc) + errors
    if errors:
        detail = None
        if len(errors) > MAX_ERRORS:
            detail = f"the request is not valid; the first {MAX_ERRORS} errors are listed"
        raise validation_error(errors[:MAX_ERRORS], detail)
    return parsed


def parse_body(model: type[M], *, required: bool = True) -> tuple[M, dict[str, Any]]:
    """(validated model, raw JSON object); an absent optional body counts as ``{}``."""
    data, plain = _read_json(required=required)
    data = {} if data is NO_BODY else data
    return validate(model, data, plain=plain), data


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _raw_path() -> bytes:
    """The percent-decoded path as sent. Servers set RAW_URI or REQUEST_URI to
    the request line's target; PATH_INFO is already decoded by werkzeug's own."""
    environ = request.environ
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if target is None:
        return environ.get("PATH_INFO", "").encode("latin-1", "replace")  # WSGI: bytes
    return unquote_to_bytes(target.partition("?")[0].encode("latin-1", "replace"))


def url_problems() -> list[dict[str, str]]:
    """Path and query parameters that are not UTF-8 once percent-decoded, and
    query parameters given twice. Werkzeug turns bad bytes into U+FFFD, which
    could name another lead, and keeps the first of repeated parameters."""
    errors = []
    if not _utf8(_raw_path()):
        names = [k for k, v in (request.view_args or {}).items() if "\ufffd" in str(v)]
        errors += [{"field": n, "reason": "is not valid UTF-8"} for n in names or ["path"]]
    query = request.query_string.decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True, encoding="latin-1"):
        if not (_utf8(name.encode("latin-1")) and _utf8(value.encode("latin-1"))):
            field = name.encode("latin-1").decode("utf-8", "replace")
            errors.append({"field": field, "reason": "is not valid UTF-8"})
    errors += [
        {"field": name, "reason": "is given more than once"}
        for name, values in request.args.lists()
        if len(values) > 1
    ]
    return errors


def parse_query(model: type[M]) -> M:
    """The query string (and the path parameters beside it) as ``model``."""
    if errors := url_problems():
        raise validation_error(errors[:MAX_ERRORS])
    return validate(model, request.args.to_dict())


def header(name: str) -> str | None:
    """An optional header, within its limit (web/limits.py), that the database can store."""
    value = request.headers.get(name)
    if value is None:
        return None
    reason = _bad_text(value)
    limit = HEADERS[name]
    if not limit.accepts(value):
        reason = limit.reason
    if reason:
        raise validation_error([{"field": name, "reason": reason}])
    return value
