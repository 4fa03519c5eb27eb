"""Every test the documents name exists: a guarantee in docs/design.md that
names a test ("Kept by") cannot outlive a rename or a deletion of that test.

A reference is ``tests/<path>.py::<test>`` (or ``::<Class>::<test>``) anywhere in
README.md or docs/*.md; the test files are read with ``ast``, not imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = re.compile(r"\b(tests/[\w/]+\.py)((?:::\w+)+)")


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def references() -> list[tuple[str, str, str]]:
    """(document, test file, ``Class::test`` or ``test``) for each reference."""
    found = []
    for doc in documents():
        for match in REFERENCE.finditer(doc.read_text(encoding="utf-8")):
            found.append((doc.name, match.group(1), match.group(2).removeprefix("::")))
    return found


def defined_tests(path: Path) -> set[str]:
    """The names a node id may use: top-level functions and ``Class::method``."""
    names = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}::{item.name}")
    return names


def test_the_design_names_its_tests():
    assert sum(doc == "design.md" for doc, _, _ in references()) >= 30


def test_every_test_named_in_the_documents_exists():
    missing = []
    parsed: dict[str, set[str]] = {}
    for doc, file, name in references():
        path = ROOT / file
        if not path.is_file():
            missing.append(f"{doc}: {file} (no such file)")
            continue
        if file not in parsed:
            parsed[file] = defined_tests(path)
        if not name.split("::")[-1].startswith("test") or name not in parsed[file]:
            missing.append(f"{doc}: {file}::{name}")
    assert not missing, "the documents name tests that do not exist:\n" + "\n".join(missing)
