"""The environment-variable table of docs/deploy.md, generated from the code.

    python -m devtools.envdoc          # rewrite the table in docs/deploy.md
    python -m devtools.envdoc --check  # exit 1 if the table is out of date

Every variable ``Settings.from_env`` reads (models/config.py) is found in its
source: each keyword of the ``cls(...)`` call names a field, and the first
upper-case string in its expression is the variable; the default is what
``Settings.from_env({})`` gives (or the literal after ``or``, for the URLs). The
variables read elsewhere (the Procfile, the settings' .env switch, the embedded
services of `make up`) are listed in ``OTHER``, and ``read_elsewhere`` finds them
in the source, so a new one cannot go undocumented (tests/unit/test_deploy_doc.py).

Descriptions live in the table itself and are kept as they are; a new variable
gets an empty description, which the test refuses until someone writes one.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "models" / "config.py"
DOC = ROOT / "docs" / "deploy.md"
START = "<!-- env-table:start (python -m devtools.envdoc) -->"
END = "<!-- env-table:end -->"
HEADER = "| Variable | Default | What it does |\n|---|---|---|"

# Read outside Settings: (default, where it is read). Their descriptions are in the table.
OTHER = {
    "PORT": ("8000", "Procfile web"),
    "WEB_CONCURRENCY": ("2", "Procfile web"),
    "WEB_THREADS": ("4", "Procfile web"),
    "WORKER_PROCESSES": ("2", "Procfile worker"),
    "WORKER_THREADS": ("8", "Procfile worker"),
    "SLA_ENV_FILE": ("the project's .env", "models/config.py"),
    "SLA_EMBEDDED_PG_PORT": ("54329", "devtools/services.py"),
    "SLA_EMBEDDED_REDIS_PORT": ("63799", "devtools/services.py"),
    "SLA_EMBEDDED_DIR": ("/var/tmp/sla-timers-<id>", "devtools/services.py"),
}
_VARIABLE = re.compile(r"^[A-Z][A-Z0-9_]{2,}$")


def _from_env_call() -> ast.Call:
    tree = ast.parse(CONFIG.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "from_env":
            for inner in ast.walk(node):
                if (
                    isinstance(inner, ast.Call)
                    and isinstance(inner.func, ast.Name)
                    and inner.func.id == "cls"
                ):
                    return inner
    raise RuntimeError("no cls(...) call in Settings.from_env")


def _variable_of(expr: ast.expr) -> str | None:
    for node in ast.walk(expr):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _VARIABLE.match(node.value)
        ):
            return node.value
    return None


def _literal_default(expr: ast.expr) -> str | None:
    """``env.get("X") or "literal"``, possibly wrapped in a call: the literal."""
    for node in ast.walk(expr):
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or):
            last = node.values[-1]
            if isinstance(last, ast.Constant) and isinstance(last.value, str):
                return last.value
    return None


def _shown(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def settings_variables() -> dict[str, tuple[str, str]]:
    """VARIABLE -> (default as shown, Settings field) for every variable Settings reads."""
    from models.config import Settings

    defaults = Settings.from_env({})
    known = {f.name for f in fields(Settings)}
    found = {}
    for keyword in _from_env_call().keywords:
        variable = _variable_of(keyword.value)
        if variable is None or keyword.arg not in known:
            continue
        literal = _literal_default(keyword.value)
        default = literal if literal is not None else _shown(getattr(defaults, keyword.arg))
        found[variable] = (default, keyword.arg)
    return found


def read_elsewhere() -> set[str]:
    """Variables the Procfile and the Python source read directly from the environment."""
    found = set(re.findall(r"\$\{(\w+)", (ROOT / "Procfile").read_text()))
    # os.environ / os.getenv only: a WSGI environ's keys are no variables.
    pattern = re.compile(
        r"""os\.(?:environ(?:\.get)?\s*[\(\[]|getenv\()\s*["']([A-Z][A-Z0-9_]+)["']"""
    )
    for package in ("models", "tasks", "web", "devtools"):
        for path in (ROOT / package).rglob("*.py"):
            found.update(pattern.findall(path.read_text()))
    return found


def rows() -> dict[str, str]:
    """VARIABLE -> default as shown, for every variable of the table."""
    out = {name: default for name, (default, _) in settings_variables().items()}
    out |= {name: default for name, (default, _) in OTHER.items()}
    return out


def _descriptions(block: str) -> dict[str, str]:
    found = {}
    for line in block.splitlines():
        match = re.match(r"^\| `(\w+)` \| .*? \| (.*) \|$", line)
        if match:
            found[match[1]] = match[2].strip()
    return found


def _block(text: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"{DOC} lacks the {START} ... {END} markers")
    return text.split(START, 1)[1].split(END, 1)[0]


def table(descriptions: dict[str, str]) -> str:
    lines = [HEADER]
    for name, default in rows().items():
        shown = default if default == "unset" or " " in default else f"`{default}`"
        lines.append(f"| `{name}` | {shown} | {descriptions.get(name, '')} |")
    return "\n".join(lines)


def current() -> tuple[str, str]:
    """(the table as docs/deploy.md has it, the table as the code says it)."""
    text = DOC.read_text()
    block = _block(text).strip()
    return block, table(_descriptions(block))


def main(argv: list[str]) -> int:
    written, generated = current()
    if "--check" in argv:
        if written != generated:
            print(f"{DOC}: the environment table is out of date: python -m devtools.envdoc")
            return 1
        return 0
    text = DOC.read_text()
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    DOC.write_text(f"{before}{START}\n{generated}\n{END}{after}")
    missing = [n for n, d in _descriptions(generated).items() if not d]
    if missing:
        print(f"describe in {DOC}: {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
