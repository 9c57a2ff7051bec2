#!/usr/bin/env python
"""Matrix floor (issue 7, item 2): `--sdopt-matrix` wall time vs the least any harness could take.

The floor is one interpreter start with torch and diffusers imported, one model load, and the
matrix's own image generations: every warm-up and measured call, as the run's JSON records them
(`figures.warmup_s` and `figures.call_s`). Everything above that is harness: pytest, building
each stack's pipeline, checks, baselines, reports. Target: wall <= 1.25 x floor.

    .venv/bin/python benchmarks/matrix_floor.py [--model tiny] [--rounds 3] [--matrix-runs 3]

One matrix session's wall moves a few percent with the machine (1.218 to 1.288 on the same code
the same evening), so run.py times three and reports the median session's ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from findings import PYTHON, REPO, Finding, add_findings_option, finish, timed_child

TARGET = 1.25
START = "import torch, diffusers"
# Without a results folder, sd15-random is built in memory and not saved: the floor's one load. With
# one (--results-dir), the floor loads what the matrix loads: the weights saved under DIR/models.
LOAD = "from pytest_sdopt.models.sources import resolve_model; resolve_model({model!r}, cache={cache!r}).load()"


def run_matrix(model: str, extra: list[str], results_dir: str | None, keep: str | None) -> tuple[float, list[dict]]:
    """One `--sdopt-matrix` session: its wall seconds and the runs its JSON records."""
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        results = work / "matrix.json"
        command = [PYTHON, "-m", "pytest", "-p", "pytest_sdopt", "--sdopt-matrix", f"--sdopt-model={model}",
                   f"--sdopt-json={results}", f"--sdopt-results-dir={results_dir or work / 'results'}", "-q",
                   "-p", "no:cacheprovider", *extra]
        wall, output = timed_child(command, cwd=REPO)
        if keep:  # the matrix's own table and JSON: per-stack it/s, peaks and SSIM (docs/performance.md's GPU figures)
            Path(keep).mkdir(parents=True, exist_ok=True)
            (Path(keep) / "matrix-output.txt").write_text(output)
            if results.is_file():
                shutil.copy(results, Path(keep) / "matrix.json")
        if not results.is_file():
            raise RuntimeError(f"the matrix wrote no results:\n{output[-3000:]}")
        return wall, json.loads(results.read_text())["runs"]


def measure(model: str = "tiny", rounds: int = 3, extra: list[str] | None = None, results_dir: str | None = None,
            keep: str | None = None, matrix_runs: int = 1) -> tuple[list[Finding], list[str]]:
    matrices = [run_matrix(model, extra or [], results_dir, keep) for _ in range(matrix_runs)]
    cache = str(Path(results_dir) / "models") if results_dir else None
    start = statistics.median(timed_child([PYTHON, "-c", START])[0] for _ in range(rounds))
    start_and_load = statistics.median(
        timed_child([PYTHON, "-c", f"{START}; {LOAD.format(model=model, cache=cache)}"], cwd=REPO)[0]
        for _ in range(rounds))
    measured = []  # (ratio, wall, generations, stacks ran, stacks skipped) per matrix session
    for wall, runs in matrices:
        calls = [sum(run["figures"]["warmup_s"]) + sum(run["figures"]["call_s"]) for run in runs if run["figures"]]
        generations = sum(calls)
        measured.append((wall / (start_and_load + generations), wall, generations, len(calls), len(runs) - len(calls)))
    # The median session (an odd count gives a real one): one session's wall moves with the machine.
    ratio, wall, generations, ran, skipped = sorted(measured)[len(measured) // 2]
    floor = start_and_load + generations
    of = f", the median of {matrix_runs} sessions ({', '.join(f'{m[0]:.3f}' for m in measured)})" if matrix_runs > 1 else ""
    breakdown = [
        f"matrix on {model}: {ran} stacks ran, {skipped} skipped{of}",
        f"  wall {wall:.1f} s = generations {generations:.1f} s + interpreter start {start:.1f} s "
        f"+ model load {start_and_load - start:.1f} s + harness {wall - floor:.1f} s",
    ]
    finding = Finding(f"matrix wall / floor ({model})", f"{ratio:.3f}", f"<= {TARGET}", ratio <= TARGET,
                      f"benchmarks/matrix_floor.py --model {model} --matrix-runs {matrix_runs}")
    return [finding], breakdown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--rounds", type=int, default=3, help="interpreter starts and loads timed (median)")
    parser.add_argument("--results-dir", default=None, metavar="DIR",
                        help="the matrix's --sdopt-results-dir (default: a temporary folder); sd15-random's "
                             "weights are saved under DIR/models, so a second run reads them from disk")
    parser.add_argument("--keep", default=None, metavar="DIR", help="keep the matrix's output and results JSON here")
    parser.add_argument("--matrix-runs", type=int, default=1,
                        help="matrix sessions timed; the median session's ratio is reported (use an odd count)")
    add_findings_option(parser)
    args, extra = parser.parse_known_args()  # the rest goes to pytest
    return finish(*measure(args.model, args.rounds, extra, args.results_dir, args.keep, args.matrix_runs),
                  args.findings_json)


if __name__ == "__main__":
    sys.exit(main())
