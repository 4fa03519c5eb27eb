"""Run the benchmark suite and write ``bench/results/<profile>.json`` and plots.

Each scenario module (``bench/p*.py``), or an object in one (``module:Name``,
a variant), has ``QUICK`` and ``FULL`` parameters and
``run(bench, params, out_dir) -> dict`` returning ``params``, ``figures`` and
``rows``: the lines of the summary table, each a figure beside its limit or
target, measured in this same run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import time
import traceback

from .common import RESULTS, Bench, machine, write_results

SCENARIOS = {
    "p1": "bench.p1_burst",
    "p2": "bench.p2_lateness",
    "p2h": "bench.p2_lateness:Horizon",
    "p3": "bench.p3_recovery",
    "p4": "bench.p4_creation",
    "p5": "bench.p5_memory",
    "p6": "bench.p6_webhooks",
    "p6l": "bench.p6_webhooks:Latency",
    "p6d": "bench.p6_webhooks:Dead",
    "p7": "bench.p7_stats",
    "p7s": "bench.p7_scale",
    "p8": "bench.p8_soak",
    "peers": "bench.peers",
}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
    return "" if value is None else str(value)


def print_table(results: dict) -> None:
    header = ("scenario", "figure", "value", "unit", "beside it", "value", "ratio", "target", "met")
    lines = [header]
    for name, result in results.items():
        for row in result.get("rows", []):
            lines.append(
                (
                    name,
                    row["figure"],
                    _fmt(row["value"]),
                    row.get("unit", ""),
                    row.get("beside", ""),
                    _fmt(row.get("beside_value")),
                    _fmt(row.get("ratio")),
                    row.get("target", ""),
                    {True: "yes", False: "NO", None: ""}[row.get("met")],
                )
            )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for i, line in enumerate(lines):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def _overrides(raw: list[str], params: dict) -> dict:
    """``NAME=VALUE`` pairs for the names this scenario has, typed like its defaults."""
    out = {}
    for pair in raw:
        name, _, value = pair.partition("=")
        if name in params:
            default = params[name]
            out[name] = type(default)(value) if isinstance(default, int | float) else value
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--profile", choices=("quick", "full"), default="quick")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="e.g. p1,p3")
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    parser.add_argument(
        "--no-doc", action="store_true", help="do not rewrite the table in docs/performance.md"
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a parameter of the scenarios run, e.g. --only p6 --param events=5000",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")

    bench = Bench.create()
    out_dir = RESULTS / args.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"profile": args.profile, "machine": machine(), "scenarios": {}}
    previous = RESULTS / f"{args.profile}.json"
    if args.only != ",".join(SCENARIOS) and previous.exists():
        # A partial run updates its scenarios and keeps the others' last figures.
        report["scenarios"] = json.loads(previous.read_text())["scenarios"]
    failed = False
    try:
        for name in args.only.split(","):
            module_name, _, variant = SCENARIOS[name].partition(":")
            module = importlib.import_module(module_name)
            if variant:
                module = getattr(module, variant)
            params = dict(module.FULL if args.profile == "full" else module.QUICK)
            params.update(_overrides(args.param, params))
            print(f"== {name}: {module.__doc__.strip().splitlines()[0]} {params}", flush=True)
            bench.reset()
            started = time.monotonic()
            try:
                result = module.run(bench, dict(params), out_dir)
            except Exception:
                failed = True
                traceback.print_exc()
                result = {"params": params, "error": traceback.format_exc()}
            result["seconds"] = round(time.monotonic() - started, 1)
            report["scenarios"][name] = result
            write_results(args.profile, report)
    finally:
        if not args.keep:
            bench.drop()
    print()
    print_table(report["scenarios"])
    print(f"\nwrote {write_results(args.profile, report)}")
    from .report import update

    if not args.no_doc:
        update(args.profile)  # the table in docs/performance.md
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
