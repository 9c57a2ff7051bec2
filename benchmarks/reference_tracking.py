#!/usr/bin/env python
"""How well a reference workload tracks the embedded model across fresh processes (how
machine.py's reference was chosen; no target, so benchmarks/run.py does not run it).

The speed gate compares a check in one process with a figure recorded in another, minutes
apart, so what matters is how much "model step time / reference time" moves between
processes, not within one. Each of `--processes` fresh interpreters loads the model, then
times `--calls` fp32 calls, each bracketed by the candidates (the fastest of 2 before and 2
after), one thread. Printed per candidate: the spread (standard deviation and range, as a
fraction of the median) of the per-process medians of step / reference; the raw step time's
spread for comparison.

    .venv/bin/python benchmarks/reference_tracking.py [--processes 14] [--calls 40]   # ~4 min

Candidates: `unet-like` (machine.py's ReferenceWorkload), and `convolutions`, the first
reference: a few bare convolutions, group norms and attention products (~1.5 ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from findings import PYTHON, timed_child

CHILD = '''
import json, statistics, time
import torch
import torch.nn.functional as F
torch.set_num_threads(1)
from pytest_sdopt.measure.devices import resolve_device
from pytest_sdopt.measure.environment import describe
from pytest_sdopt.measure.machine import ReferenceWorkload
from pytest_sdopt.models.sources import resolve_model
from pytest_sdopt.stacks import parse_stack
from pytest_sdopt.measure.runner import Runner
from pytest_sdopt.measure.figures import call_its

generator = torch.Generator().manual_seed(0)
weights = [torch.randn(*shape, generator=generator) * 0.05 for shape in ((32, 32, 3, 3), (64, 64, 3, 3))]
projections = [torch.randn(32, 32, generator=generator) * 0.05 for _ in range(3)]
fine_in, coarse_in = torch.randn(2, 32, 16, 16, generator=generator), torch.randn(2, 64, 8, 8, generator=generator)

@torch.no_grad()
def convolutions():
    fine, coarse = fine_in, coarse_in
    for _ in range(3):
        fine = F.silu(F.group_norm(F.conv2d(fine, weights[0], padding=1), 8))
        coarse = F.silu(F.group_norm(F.conv2d(coarse, weights[1], padding=1), 8))
    tokens = fine.flatten(2).transpose(1, 2)
    for _ in range(2):
        tokens = F.scaled_dot_product_attention(*(tokens @ p for p in projections))

def fastest(work):
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter(); work(); best = min(best, time.perf_counter() - start)
    return best

source, device = resolve_model("tiny"), resolve_device("cpu")
pipe = source.load()
parse_stack("fp32").apply(pipe, device)
runner = Runner(pipe, parse_stack("fp32"), source.scenario("cpu"), device, describe(device))
runner.call(measured=False)
candidates = {"unet-like": ReferenceWorkload().run, "convolutions": convolutions}
convolutions()
rows = []
for _ in range(CALLS):
    before = {name: fastest(work) for name, work in candidates.items()}
    runner.call(measured=True)
    after = {name: fastest(work) for name, work in candidates.items()}
    step = 1 / call_its(runner.step_times[-1])
    rows.append({"step": step, **{name: step / min(before[name], after[name]) for name in candidates}})
print("RESULT " + json.dumps({key: statistics.median(row[key] for row in rows) for key in rows[0]}))
'''


def spread(values: list[float]) -> str:
    middle = statistics.median(values)
    return (f"sd {statistics.pstdev(values) / middle:.1%}, range {min(values) / middle - 1:+.1%} "
            f"to {max(values) / middle - 1:+.1%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=14)
    parser.add_argument("--calls", type=int, default=40)
    args = parser.parse_args()
    medians: list[dict[str, float]] = []
    for index in range(args.processes):
        _, output = timed_child([PYTHON, "-c", f"CALLS = {args.calls}\n{CHILD}"])
        medians.append(json.loads(output.split("RESULT ", 1)[1].splitlines()[0]))
        print(f"process {index + 1:2d}: step {1000 * medians[-1]['step']:.3f} ms, "
              + ", ".join(f"step / {name} {value:.3f}" for name, value in medians[-1].items() if name != "step"),
              flush=True)
    print(f"across {args.processes} processes, per-process medians of {args.calls} calls, one thread:")
    print(f"  raw step time            {spread([m['step'] for m in medians])}")
    for name in medians[0]:
        if name != "step":
            print(f"  step / {name:<17} {spread([m[name] for m in medians])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
