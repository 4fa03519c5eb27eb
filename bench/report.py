"""Render the latest results into docs/performance.md (between the results markers).

``python -m bench.report [quick|full]`` — the runner calls it after each run.
"""

from __future__ import annotations

import json
import sys

from .common import RESULTS, ROOT

DOC = ROOT / "docs" / "performance.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(profile: str) -> str:
    data = json.loads((RESULTS / f"{profile}.json").read_text())
    m = data["machine"]
    lines = [
        f"Profile `{profile}`, run {m['date']} on {m['cores']} cores, {m['memory_gb']} GB, "
        f"{m['platform']}; Python {m['python']}, PostgreSQL {m['postgresql']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + ". Every figure and the one beside it come from this same run.",
        "",
        "| | figure | value | unit | beside it | value | ratio | target | met |",
        "|---|---|---:|---|---|---:|---:|---|---|",
    ]
    for name, result in data["scenarios"].items():
        if "error" in result:
            lines.append(f"| {name} | failed: see bench/results/{profile}.json | | | | | | | |")
        for row in result.get("rows", []):
            met = {True: "yes", False: "**no**", None: ""}[row.get("met")]
            lines.append(
                f"| {name} | {row['figure']} | {_fmt(row['value'])} | {row.get('unit', '')} | "
                f"{row.get('beside') or ''} | {_fmt(row.get('beside_value'))} | "
                f"{_fmt(row.get('ratio'))} | {row.get('target', '')} | {met} |"
            )
    plots = [p for r in data["scenarios"].values() for p in r.get("plots", [])]
    if plots:
        lines.append("")
        lines += [f"![{p}](../bench/results/{profile}/{p})" for p in plots]
    return "\n".join(lines)


def update(profile: str) -> None:
    text = DOC.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{START}\n{render(profile)}\n{END}{tail}")


if __name__ == "__main__":
    update(sys.argv[1] if len(sys.argv) > 1 else "quick")
