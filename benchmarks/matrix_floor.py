#!/usr/bin/env python
"""Matrix floor (issue 7, item 2): `--sdopt-matrix` wall time vs the least any harness could take.

The floor is one interpreter start with torch and diffusers imported, one model load, and the
matrix's own image generations: every warm-up and measured call, as the run's JSON records them
(`figures.warmup_s` and `figures.call_s`). Everything above that is harness: pytest, building
each stack's pipeline, checks, baselines, reports. Target: wall <= 1.25 x floor.

    .venv/bin/python benchmarks/matrix_floor.py [--model tiny] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from findings import PYTHON, REPO, Finding, add_findings_option, finish, timed_child

TARGET = 1.25
START = "import torch, diffusers"
# Without a cache folder, sd15-random is built in memory and not saved: the floor's one load.
LOAD = "from pytest_sdopt.models import resolve_model; resolve_model({model!r}).load()"


def measure(model: str = "tiny", rounds: int = 3, extra: list[str] | None = None) -> tuple[list[Finding], list[str]]:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        results = work / "matrix.json"
        command = [PYTHON, "-m", "pytest", "-p", "pytest_sdopt", "--sdopt-matrix", f"--sdopt-model={model}",
                   f"--sdopt-json={results}", f"--sdopt-results-dir={work / 'results'}", "-q", "-p", "no:cacheprovider",
                   *(extra or [])]
        wall, output = timed_child(command, cwd=REPO)
        if not results.is_file():
            raise RuntimeError(f"the matrix wrote no results:\n{output[-3000:]}")
        runs = json.loads(results.read_text())["runs"]
        start = statistics.median(timed_child([PYTHON, "-c", START])[0] for _ in range(rounds))
        start_and_load = statistics.median(
            timed_child([PYTHON, "-c", f"{START}; {LOAD.format(model=model)}"], cwd=REPO)[0]
            for _ in range(rounds))
    calls = [sum(run["figures"]["warmup_s"]) + sum(run["figures"]["call_s"]) for run in runs if run["figures"]]
    generations = sum(calls)
    floor = start_and_load + generations
    ratio = wall / floor
    breakdown = [
        f"matrix on {model}: {len(calls)} stacks ran, {len(runs) - len(calls)} skipped",
        f"  wall {wall:.1f} s = generations {generations:.1f} s + interpreter start {start:.1f} s "
        f"+ model load {start_and_load - start:.1f} s + harness {wall - floor:.1f} s",
    ]
    finding = Finding(f"matrix wall / floor ({model})", f"{ratio:.3f}", f"<= {TARGET}", ratio <= TARGET,
                      f"benchmarks/matrix_floor.py --model {model}")
    return [finding], breakdown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--rounds", type=int, default=3, help="interpreter starts and loads timed (median)")
    add_findings_option(parser)
    args, extra = parser.parse_known_args()  # the rest goes to pytest
    return finish(*measure(args.model, args.rounds, extra), args.findings_json)


if __name__ == "__main__":
    sys.exit(main())
