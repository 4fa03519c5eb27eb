"""Every module of the service imports on its own: whatever module a process
(or a test) imports first, no half-initialised module is met on the way. The
static check that imports form no cycle is tests/unit/test_structure.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def project_modules() -> list[str]:
    """Every module of the service's packages, by dotted name."""
    names = []
    for path in sorted(ROOT.glob("[mtw]*/**/*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[0] in ("models", "tasks", "web"):
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


# In a fresh interpreter, for each module: forget every module of the service,
# then import that one first.
_SCRIPT = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("models", "tasks", "web")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\\n" + traceback.format_exc(limit=3))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_each_module_imports_on_its_own_in_a_fresh_interpreter():
    names = project_modules()
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
