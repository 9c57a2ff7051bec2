#!/usr/bin/env python
"""Detection power of the speed gate (issue 7, item 4), on the embedded model.

In a scratch project: record fp32's metrics once, then 10 clean re-runs and 10 re-runs with
an injected 10% per-step slowdown, alternating, each a pytest session of its own checked
against the recorded metrics with `max_its_drop`. A failed clean run is a false alarm (target
0/10); a failed slowed run is a detection (target >= 9/10).

The slowdown is injected by a conftest.py: after each scheduler step the process works (a busy
loop) for 10% of that step's own time, from the UNet's start to the scheduler's end, so it is a
10% slowdown in whatever state the machine is in.

    .venv/bin/python benchmarks/speed_gate.py [--runs 10] [--settle 120] [--max-its-drop 7%]

Why settling (speed.py): on the 2-core CI machine the speed moves up to 30% between states
that last from 30 s to minutes, so one reading of a 10% slowdown cannot be told from a slow
state. With `--sdopt-settle 120` the recording keeps the best run of 240 s, and a check that
looks slow re-measures for up to 120 s (60 s let 2 of 20 clean checks fail: slow states outlasted
it); a slow state passes, a real slowdown stays slow. The
fastest state is reproducible to about 1%, so a 10% slowdown reads as 9% or more against
it, and the limit sits at 7%. `--no-settle` shows the plain gate (best of 3 runs) instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from findings import PYTHON, Finding, add_findings_option, finish, timed_child

TEST = '''
def test_speed(sdopt):
    sdopt.check(sdopt.run("fp32"), min_ssim=None, max_memory_growth=None)
'''
# Loaded by pytest from the scratch project; active only when SDOPT_SLOWDOWN is set.
CONFTEST = '''
import os
import time

FACTOR = float(os.environ.get("SDOPT_SLOWDOWN") or 0)
if FACTOR:
    from diffusers import PNDMScheduler, UNet2DConditionModel  # the embedded model's UNet and scheduler

    started = []
    unet_forward, scheduler_step = UNet2DConditionModel.forward, PNDMScheduler.step

    def timed_forward(self, *args, **kwargs):
        started.append(time.perf_counter())
        return unet_forward(self, *args, **kwargs)

    def step_then_work(self, *args, **kwargs):
        out = scheduler_step(self, *args, **kwargs)
        if started:  # busy, not asleep: exactly FACTOR of the step, spent the way slower code spends it
            begun = started.pop()
            until = time.perf_counter() + (time.perf_counter() - begun) * FACTOR
            while time.perf_counter() < until:
                pass
        return out

    UNet2DConditionModel.forward = timed_forward
    PNDMScheduler.step = step_then_work
'''


def session(project: Path, options: list[str], slowdown: float = 0.0) -> dict:
    results = project / "results.json"
    results.unlink(missing_ok=True)
    _, output = timed_child([PYTHON, "-m", "pytest", "-p", "pytest_sdopt", "-q", "-p", "no:cacheprovider",
                             f"--sdopt-json={results}", *options], cwd=project,
                            env={"SDOPT_SLOWDOWN": str(slowdown)})
    run = json.loads(results.read_text())["runs"][0]
    gate = next((g for g in run["gates"] if g["gate"] == "max_its_drop"), None)
    return {"alarm": run["outcome"] == "failed", "gate": gate, "figures": run["figures"], "output": output}


def measure(runs: int = 10, settle: float = 120.0, limit: str = "7%", slowdown: float = 0.10,
            verbose: bool = True) -> tuple[list[Finding], list[str]]:
    settling = [f"--sdopt-settle={settle:g}"] if settle > 0 else []
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        (project / "test_speed.py").write_text(TEST)
        (project / "conftest.py").write_text(CONFTEST)
        recorded = session(project, ["--sdopt-update-baselines", *settling])
        lines = [f"recorded: best {recorded['figures']['best_its']:.2f} it/s over "
                 f"{len(recorded['figures']['call_s'])} runs"]
        check = [f"--sdopt-max-its-drop={limit}", *settling]
        alarms = {"clean": 0, "slowed": 0}
        drops: dict[str, list[float]] = {"clean": [], "slowed": []}
        for index in range(2 * runs):
            kind = "slowed" if index % 2 else "clean"
            outcome = session(project, check, slowdown if kind == "slowed" else 0.0)
            alarms[kind] += outcome["alarm"]
            gate = outcome["gate"] or {}
            if gate.get("value") is not None:
                drops[kind].append(gate["value"])
            line = (f"  {kind:<6} {'ALARM' if outcome['alarm'] else 'quiet':<5} {gate.get('measured', '?')}"
                    f"{' (re-measured ' + format(outcome['figures']['settled_s'], '.0f') + ' s)' if outcome['figures']['settled_s'] else ''}")
            lines.append(line)
            if verbose:
                print(line, flush=True)
    for kind, values in drops.items():
        if values:
            lines.insert(1 + list(drops).index(kind), f"{kind} checks read {-max(values):+.1%} to {-min(values):+.1%} "
                                                      f"against the stored best")
    how = f"settle {settle:g} s, max-its-drop {limit}" if settle > 0 else f"no settling, max-its-drop {limit}"
    command = f"benchmarks/speed_gate.py --settle {settle:g} --max-its-drop {limit}"
    findings = [
        Finding(f"speed gate false alarms ({how})", f"{alarms['clean']}/{runs}", "0", alarms["clean"] == 0, command),
        Finding(f"speed gate detections of {slowdown:.0%} ({how})", f"{alarms['slowed']}/{runs}",
                f">= {runs - runs // 10}/{runs}", alarms["slowed"] >= runs - runs // 10, command),
    ]
    return findings, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--settle", type=float, default=120.0)
    parser.add_argument("--no-settle", action="store_true")
    parser.add_argument("--max-its-drop", default="7%")
    add_findings_option(parser)
    args = parser.parse_args()
    findings, lines = measure(args.runs, 0.0 if args.no_settle else args.settle, args.max_its_drop)
    return finish(findings, lines[:3], args.findings_json)


if __name__ == "__main__":
    sys.exit(main())
