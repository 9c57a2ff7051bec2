#!/usr/bin/env python
"""False alarms and detection power of the promise gate `min_speedup` (interleaved with the reference).

A promise check measures the stack and the reference in the same process, alternating their calls,
so the machine's state cancels in each pair's ratio (measure/interleaved.py). Here a CPU-bound
process occupies one core throughout, and each session is one fresh pytest session on the
embedded model with `promises=True` and every other gate off:

  (a) healthy: `paced`, a registered optimization that wraps the UNet's forward and, here, adds
      nothing (its promise: >= 0.90x fp32's speed, true ratio ~1.0), and the registry's own
      `vae_tiling` (CPU promise >= 0.80x, true ratio ~1.0): a FAIL is a false alarm (target 0);
  (b) broken: `paced` with every UNet call followed by busy work of 20% of its own time, so each
      step is ~20% slower (ratio ~0.83x) against the same 0.90x promise: a FAIL is a detection
      (target >= 9 in 10); inconclusive counts as missed.

A session whose results hold no min_speedup verdict for a stack (it skipped, say) stops the
benchmark with pytest's output: a missing verdict is not a pass.

    .venv/bin/python benchmarks/promises.py [--sessions 10] [--only a,b]

Each session takes ~30-90 s on the 2-core machine (the stack's own run, the reference's, and
interleaved pairs until the verdict is decided or 60 s pass).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

from findings import PYTHON, Finding, add_findings_option, finish, timed_child
from verdicts import cpu_load

SLOWDOWN = 0.2
CONFTEST = '''
import os
import time

from pytest_sdopt.stacks import Effect, OptimizationSpec, Phase
from pytest_sdopt.stacks.promises import SPEED, Promise

FACTOR = float(os.environ.get("SDOPT_SLOWDOWN") or 0)


def paced(pipe, ctx):
    forward = pipe.unet.forward

    def paced_forward(*args, **kwargs):
        start = time.perf_counter()
        out = forward(*args, **kwargs)
        until = time.perf_counter() + (time.perf_counter() - start) * FACTOR
        while time.perf_counter() < until:  # busy, as slower code is
            pass
        return out

    pipe.unet.forward = paced_forward


def pytest_sdopt_register_optimizations(config):
    return [OptimizationSpec("paced", Phase.COMPILE, "every UNet call followed by busy work of SDOPT_SLOWDOWN of its time",
                             0.99, paced, effect=Effect(lambda pipe: pipe.unet.forward, lambda _: "left the UNet as it was"),
                             promises=(Promise(SPEED, 0.9, ("cpu",), "the benchmark's own"),))]
'''
TEST = '''
import pytest


@pytest.mark.parametrize("stack", [{stacks}])
def test_promise(sdopt, stack):
    sdopt.check(sdopt.run(stack), min_ssim=None, min_self_ssim=None, max_memory_growth=None, max_its_drop=None,
                promises=True)
'''
SCENARIOS = {"a": ("healthy, a core busy", ("paced", "vae_tiling"), 0.0),
             "b": (f"{SLOWDOWN:.0%} per-step slowdown of the stack, a core busy", ("paced",), SLOWDOWN)}


def one_session(key: str) -> list[dict]:
    _, stacks, slowdown = SCENARIOS[key]
    with tempfile.TemporaryDirectory() as folder:
        project = Path(folder)
        (project / "conftest.py").write_text(CONFTEST)
        (project / "test_promise.py").write_text(TEST.format(stacks=", ".join(map(repr, stacks))))
        results = project / "results.json"
        with cpu_load(True):
            _, output = timed_child([PYTHON, "-m", "pytest", "-p", "pytest_sdopt", "-q", "-p", "no:cacheprovider",
                                     f"--sdopt-json={results}"], cwd=project, env={"SDOPT_SLOWDOWN": str(slowdown)})
        if not results.is_file():
            raise RuntimeError(f"no results JSON:\n{output[-3000:]}")
        verdicts = []
        for run in json.loads(results.read_text())["runs"]:
            gate = next((g for g in run["gates"] if g["gate"] == "min_speedup"), None)
            if gate is not None:
                verdicts.append({"stack": run["stack"], "status": gate["status"], "measured": gate["measured"],
                                 "detail": gate["detail"]})
        missing = set(stacks) - {verdict["stack"] for verdict in verdicts}
        if missing:
            raise RuntimeError(f"no min_speedup verdict for {', '.join(sorted(missing))}:\n{output[-3000:]}")
        return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--only", default="a,b")
    add_findings_option(parser)
    args = parser.parse_args()
    keys = args.only.split(",")
    load_before = os.getloadavg()[0]
    counts = {key: Counter() for key in keys}
    for index in range(args.sessions):
        for key in keys:
            for verdict in one_session(key):
                counts[key][verdict["status"]] += 1
                print(f"  ({key}) session {index + 1} {verdict['stack']:<10} {verdict['status']:<12} {verdict['measured']}"
                      f"{'; ' + verdict['detail'] if verdict['detail'] else ''}", flush=True)
    notes = [f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs"]
    findings = []
    for key in keys:
        title, _, slowdown = SCENARIOS[key]
        counted = counts[key]
        total = sum(counted.values())
        measured = f"{counted['FAIL']}/{total} ({counted['pass']} pass, {counted['inconclusive']} inconclusive)"
        command = f"benchmarks/promises.py --only {key} --sessions {args.sessions}"
        if slowdown:
            needed = total - total // 10
            findings.append(Finding(f"promise gate detections ({key}) {title}", measured, f">= {needed}/{total}",
                                    total > 0 and counted["FAIL"] >= needed, command))
        else:
            findings.append(Finding(f"promise gate false alarms ({key}) {title}", measured, "0",
                                    total > 0 and counted["FAIL"] == 0, command))
    return finish(findings, notes, args.findings_json)


if __name__ == "__main__":
    raise SystemExit(main())
