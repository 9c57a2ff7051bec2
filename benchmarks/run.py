#!/usr/bin/env python
"""Every harness benchmark of issue 7 in one run: each ratio, its target and pass/FAIL.

    .venv/bin/python benchmarks/run.py [--only overhead,matrix,import,memory,speed,verdicts,promises,promise_ratios] [--quick]

Each part runs in a process of its own, so none inherits another's imports, caches or memory
(a child's peak RSS as the kernel reports it even includes its parent's at the fork). Without
`verdicts`, takes 15 to 25 minutes on the 2-core CI machine, most of it the speed gate's 21
sessions (the recording measures for 120 s, and a slowed check re-measures for its full 60 s
before it fails, as it should); `verdicts` adds 80 pytest sessions (--quick: 16), 1-2 minutes
each on that machine while it was shared. `--quick` runs fewer pairs, rounds and sessions for
a smoke test; its figures are not the published ones. Exit status 1 when any target is missed.
The docs' performance page (docs/performance.md) quotes this table.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from findings import PYTHON, Finding, load_findings, render

HERE = Path(__file__).resolve().parent
PARTS = {  # name: (script, arguments, --quick arguments)
    "overhead": ("overhead.py", ["--pairs", "21"], ["--pairs", "3"]),
    "matrix": ("matrix_floor.py", ["--rounds", "3", "--matrix-runs", "3"], ["--rounds", "1"]),
    "import": ("import_cost.py", ["--rounds", "15"], ["--rounds", "3"]),
    "memory": ("memory_accuracy.py", [], ["--stacks", "fp32"]),
    "speed": ("speed_gate.py", ["--runs", "10", "--settle", "60"], ["--runs", "2", "--settle", "10"]),
    "verdicts": ("verdicts.py", ["--sessions", "10"], ["--sessions", "2"]),
    "promises": ("promises.py", ["--sessions", "10"], ["--sessions", "2"]),
    "promise_ratios": ("promise_ratios.py", ["--seconds", "20"], ["--seconds", "3", "--stacks", "tome,vae_tiling"]),
}
TAKES_MODEL = ("overhead", "matrix", "memory")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="a smoke test: fewer repeats, figures not comparable")
    parser.add_argument("--model", default="tiny", help="for the overhead, matrix and memory figures (sd15-random on a GPU)")
    parser.add_argument("--results-dir", default=None, metavar="DIR",
                        help="the matrix's results folder; sd15-random is saved once under DIR/models and every "
                             "part loads it from there (default: each load builds it in memory)")
    args = parser.parse_args()
    parts = [part.strip() for part in args.only.split(",")]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    started = time.perf_counter()
    findings: list[Finding] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        for part in parts:
            script, full, quick = PARTS[part]
            out = Path(folder) / f"{part}.json"
            command = [PYTHON, str(HERE / script), *(quick if args.quick else full), "--findings-json", str(out)]
            if part in TAKES_MODEL:
                command += ["--model", args.model]
                if args.results_dir:
                    command += (["--results-dir", args.results_dir] if part == "matrix"
                                else ["--model-cache", str(Path(args.results_dir) / "models")])
            done = subprocess.run(command, capture_output=True, text=True)
            if not out.is_file():
                print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"benchmarks/{script} failed (exit {done.returncode})")
            found, lines = load_findings(out)
            findings += found
            notes += lines
            print(f"[{time.perf_counter() - started:6.0f} s] {part}: "
                  + ", ".join(f"{f.measured} {f.verdict}" for f in found), flush=True)
    print()
    print(f"pytest-sdopt harness benchmarks on {platform.processor() or platform.machine()}, "
          f"{time.perf_counter() - started:.0f} s{' (--quick: not the published figures)' if args.quick else ''}")
    print("\n".join(notes))
    print("\n".join(render(findings)))
    return 0 if all(f.passed for f in findings) else 1


if __name__ == "__main__":
    sys.exit(main())
