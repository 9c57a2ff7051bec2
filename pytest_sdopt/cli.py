"""`sdopt`: the command line outside pytest. `sdopt compare OLD NEW` is the upgrade gate.

Exit codes: 0 no regression (inconclusive comparisons are listed, and fail only with --strict),
1 a regression (each named with its stack and figure), 2 bad input (unreadable or foreign files, unknown schema version, different scenarios, bad --fail).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from pytest_sdopt.results.compare import DEFAULT_THRESHOLDS, ComparisonError, compare_results, comparison_rows
from pytest_sdopt.core.errors import SdoptUsageError
from pytest_sdopt.core.files import atomic_write_text
from pytest_sdopt.config.parsers import THRESHOLD_METRICS, parse_threshold
from pytest_sdopt.results.report import ResultsError, load_results

EXIT_OK, EXIT_REGRESSION, EXIT_BAD_INPUT = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdopt", description="pytest-sdopt tools outside pytest.")
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser(
        "compare", help="compare two result sets (--sdopt-json files, or folders holding one)",
        description="Compare two pytest-sdopt result sets stack by stack; exit 1 on any regression.",
        # argparse %-formats help strings, not the epilog: no %% here.
        epilog="Thresholds (--fail, repeatable; defaults its:5% vram:5% host:10% ssim:0.02): "
               + "; ".join(f"{name}: {text}" for name, text in THRESHOLD_METRICS.items()))
    compare.add_argument("old", help="the accepted results: a results JSON file or its folder")
    compare.add_argument("new", help="the candidate results, recorded the same way")
    compare.add_argument("--fail", action="append", default=[], metavar="METRIC:LIMIT",
                         help="a regression threshold, e.g. its:5%% or ssim:0.02 (replaces that metric's default)")
    compare.add_argument("--html", type=Path, metavar="PATH", help="also write the comparison as a self-contained page")
    compare.add_argument("--strict", action="store_true",
                         help="exit 1 also when a comparison is inconclusive (the noise cannot tell it from the limit)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        thresholds = dict(DEFAULT_THRESHOLDS)
        thresholds.update(parse_threshold(text) for text in args.fail)
        old, old_path = load_results(args.old)
        new, new_path = load_results(args.new)
        rows = compare_results(old, new, thresholds)
    except (ResultsError, ComparisonError, SdoptUsageError) as exc:
        print(f"sdopt compare: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    header, body = comparison_rows(rows)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    print(f"OLD: {old_path}  ({_env(old)})\nNEW: {new_path}  ({_env(new)})")
    for cells in [header, *body]:
        print("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip())
    regressed = [row for row in rows if row.regressions or (args.strict and row.inconclusive)]
    undecided = [row for row in rows if row.inconclusive]
    if args.html:
        from pytest_sdopt.results.html_report import comparison_page

        args.html.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.html, comparison_page(rows, header, body, str(old_path), str(new_path)))
        print(f"comparison page: {args.html}")
    if undecided:
        print(f"{len(undecided)} of {len(rows)} stacks inconclusive{' (--strict: a failure)' if args.strict else ''}: "
              + "; ".join(f"{row.name} ({row.nodeid}): {', '.join(row.inconclusive)}" for row in undecided))
    if regressed:
        print(f"{len(regressed)} of {len(rows)} stacks regressed: " + "; ".join(
            f"{row.name} ({row.nodeid}): {', '.join(row.regressions or row.inconclusive)}" for row in regressed))
        return EXIT_REGRESSION
    print(f"no regression in {len(rows)} stacks (thresholds: "
          + ", ".join(f"{k}:{v:.0%}" if k != "ssim" else f"{k}:{v:g}" for k, v in thresholds.items()) + ")")
    return EXIT_OK


def _env(document: dict) -> str:
    env = next((run["env"] for run in document["runs"] if run["env"]), {})
    return ", ".join(f"{name} {env[name]}" for name in ("diffusers", "torch", "device_name") if env.get(name)) or "no runs"


if __name__ == "__main__":  # python -m pytest_sdopt.cli
    sys.exit(main())
