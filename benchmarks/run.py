#!/usr/bin/env python
"""Every harness benchmark of issue 7 in one run: each ratio, its target and pass/FAIL.

    .venv/bin/python benchmarks/run.py [--only overhead,matrix,import,memory,speed] [--quick]

Takes about 25 minutes on the 2-core CI machine, most of it the speed gate's 21 sessions
(the recording settles for 120 s, and each slowed check re-measures for its full 60 s before it
fails, as it should). `--quick` runs
fewer pairs, rounds and sessions for a smoke test; its figures are not the published ones.
Exit status 1 when any target is missed. The README's Performance section quotes this table.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import import_cost
import matrix_floor
import memory_accuracy
import overhead
import speed_gate
from findings import Finding, render

PARTS = ("overhead", "matrix", "import", "memory", "speed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="a smoke test: fewer repeats, figures not comparable")
    parser.add_argument("--model", default="tiny", help="for the overhead and matrix figures (sd15-random on a GPU)")
    args = parser.parse_args()
    parts = [part.strip() for part in args.only.split(",")]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    quick = args.quick
    started = time.perf_counter()
    findings: list[Finding] = []
    notes: list[str] = []

    def report(name: str, got: list[Finding], lines: list[str] = ()) -> None:
        findings.extend(got)
        notes.extend(lines)
        print(f"[{time.perf_counter() - started:6.0f} s] {name}: " + ", ".join(f"{f.measured} {f.verdict}" for f in got),
              flush=True)

    if "overhead" in parts:
        report("overhead", overhead.measure(pairs=3 if quick else 9, model=args.model))
    if "matrix" in parts:
        report("matrix floor", *matrix_floor.measure(args.model, rounds=1 if quick else 3))
    if "import" in parts:
        report("import cost", *import_cost.measure(rounds=3 if quick else 15))
    if "memory" in parts:
        report("memory accuracy", *memory_accuracy.measure(model=args.model))
    if "speed" in parts:
        found, lines = speed_gate.measure(runs=2 if quick else 10, settle=10 if quick else 60, verbose=False)
        report("speed gate", found, lines[:1])

    print()
    print(f"pytest-sdopt harness benchmarks, {platform.processor() or platform.machine()}, "
          f"{time.perf_counter() - started:.0f} s{' (--quick: not the published figures)' if quick else ''}")
    print("\n".join(notes))
    print("\n".join(render(findings)))
    return 0 if all(f.passed for f in findings) else 1


if __name__ == "__main__":
    sys.exit(main())
