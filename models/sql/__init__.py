"""The service's SQL, kept in named ``.sql`` files beside this module.

Each file holds statements in procrastinate's style::

    -- name: claim_due
    -- Mark due timers PROCESSING under a claim token.
    UPDATE ...

The first comment after the name is the statement's one-line description; the
comment lines that follow it explain why the statement is written so and are
kept as its ``notes`` (not sent to the server); comments inside the statement
are dropped from the text sent too. They explain the file; to the server they
are only length, and psycopg re-parses a statement over 4,096 characters on
every execution instead of caching its conversion.
Every file uses one placeholder style, ``:name`` (``::type`` casts, string
literals and comments are left alone), and the loader, which parses the files
once at import, derives the other forms a caller needs:

- ``Query.text``: a SQLAlchemy ``text()`` clause (``:name``, as written);
- ``Query.psycopg``: psycopg's ``%(name)s`` form, with literal ``%`` doubled,
  for statements run on the driver connection;
- ``Query.prepared()``: a ``PREPARE`` statement in ``$n`` form and the psycopg
  ``EXECUTE`` that runs it, for a statement prepared by hand.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from sqlalchemy import TextClause, text

# A string literal, a comment, or a placeholder: literals and comments are
# matched first so a colon inside them is never taken for a parameter, and a
# ``::`` cast is no placeholder (neither colon is preceded by a non-colon and
# followed by a name).
_TOKEN = re.compile(r"'(?:[^']|'')*'|--[^\n]*|(?<!:):([A-Za-z_]\w*)")
_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Prepared:
    """A statement prepared by hand: ``prepare`` (no parameters) creates it on a
    connection, ``execute`` (psycopg ``%(name)s`` form) runs it."""

    name: str
    prepare: str
    execute: str


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    sql: str = field(repr=False)
    notes: str = field(default="", repr=False)

    @cached_property
    def text(self) -> TextClause:
        return text(self.sql)

    @cached_property
    def params(self) -> tuple[str, ...]:
        """The parameters' names, in order of first appearance."""
        found: dict[str, None] = {}
        for m in _TOKEN.finditer(self.sql):
            if m.group(1):
                found.setdefault(m.group(1))
        return tuple(found)

    @cached_property
    def psycopg(self) -> str:
        return _rewrite(self.sql, lambda name: f"%({name})s", escape_percent=True)

    def prepared(self, statement: str, types: Sequence[tuple[str, str]]) -> Prepared:
        """``PREPARE statement (type, ...) AS ...`` with ``$n`` numbered in the
        order of ``types`` ((parameter, SQL type) pairs, one per parameter)."""
        order = {name: n for n, (name, _) in enumerate(types, 1)}
        if set(order) != set(self.params):
            raise ValueError(f"{self.name}: types {sorted(order)} != params {self.params}")
        body = _rewrite(self.sql, lambda name: f"${order[name]}", escape_percent=False)
        signature = ", ".join(t for _, t in types)
        arguments = ", ".join(f"%({name})s" for name, _ in types)
        return Prepared(
            statement,
            f"PREPARE {statement} ({signature}) AS {body}",
            f"EXECUTE {statement} ({arguments})",
        )


def _rewrite(sql: str, placeholder, *, escape_percent: bool) -> str:
    def one(m: re.Match) -> str:
        if m.group(1):
            return placeholder(m.group(1))
        return m.group(0).replace("%", "%%") if escape_percent else m.group(0)

    out, last = [], 0
    for m in _TOKEN.finditer(sql):
        plain = sql[last : m.start()]
        out.append(plain.replace("%", "%%") if escape_percent else plain)
        out.append(one(m))
        last = m.end()
    tail = sql[last:]
    out.append(tail.replace("%", "%%") if escape_percent else tail)
    return "".join(out)


def _without_comments(sql: str) -> str:
    """``sql`` less its ``--`` comments (not those inside string literals), and
    less the lines that held nothing else."""
    out, last = [], 0
    for m in _TOKEN.finditer(sql):
        if m.group(0).startswith("--"):
            out.append(sql[last : m.start()])
            last = m.end()
    out.append(sql[last:])
    return "\n".join(line.rstrip() for line in "".join(out).splitlines() if line.strip())


def parse(source: str, origin: str = "<sql>") -> dict[str, Query]:
    """The named statements of one file's text."""
    queries: dict[str, Query] = {}
    parts = _NAME.split(source)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = body.strip("\n").splitlines()
        if not lines or not lines[0].startswith("-- "):
            raise ValueError(f"{origin}: {name} has no one-line description after its name")
        start = 1
        while start < len(lines) and lines[start].startswith("--"):
            start += 1
        notes = "\n".join(line[3:] for line in lines[1:start])
        sql = _without_comments("\n".join(lines[start:])).strip()
        if not sql or name in queries:
            raise ValueError(f"{origin}: {name} is empty or named twice")
        queries[name] = Query(name, lines[0][3:].strip(), sql, notes)
    return queries


def load(filename: str) -> dict[str, Query]:
    path = Path(__file__).with_name(filename)
    return parse(path.read_text(encoding="utf-8"), path.name)


class Queries:
    """The statements of one file, as attributes (``queries.claim_due.text``)."""

    def __init__(self, filename: str) -> None:
        self._queries = load(filename)
        self.__dict__.update(self._queries)

    def __iter__(self):
        return iter(self._queries.values())
