#!/usr/bin/env python
"""Each stack's speed ratio to the reference, measured interleaved, beside what the registry promises.

    .venv/bin/python benchmarks/promise_ratios.py [--model tiny] [--seconds 20] [--stacks a,b]

For every stack this machine can run: a fresh pipeline of the stack and one of the reference
(fp32), their calls alternated for `--seconds` (measure/interleaved.py, the promise gate's own
measurement, with no early stop), and the median ratio with its 95% interval. Where the registry
promises a speed ratio on this device, the row's verdict says whether the whole interval keeps it:
a promise that a healthy setup does not keep here with room to spare is a false alarm waiting to
happen. This is where the registry's CPU figures ("this project's benchmarks/promise_ratios.py")
come from. On CPU, one intra-op thread, as the gates measure.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from findings import Finding, add_findings_option, finish  # noqa: E402

from pytest_sdopt.core.errors import StackUnsupported  # noqa: E402
from pytest_sdopt.measure.devices import cpu_threads_for, intra_op_threads, resolve_device  # noqa: E402
from pytest_sdopt.measure.environment import describe  # noqa: E402
from pytest_sdopt.measure.interleaved import interleave  # noqa: E402
from pytest_sdopt.measure.isolation import rng_states_kept  # noqa: E402
from pytest_sdopt.measure.runner import Runner  # noqa: E402
from pytest_sdopt.models.sources import resolve_model  # noqa: E402
from pytest_sdopt.stacks import REGISTRY, parse_stack  # noqa: E402
from pytest_sdopt.stacks.promises import SPEED, stack_promise  # noqa: E402

REFERENCE = "fp32"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=float, default=20.0, help="interleaved pairs per stack, in seconds")
    parser.add_argument("--stacks", default=",".join(name for name in REGISTRY if name != REFERENCE))
    add_findings_option(parser)
    args = parser.parse_args()

    source = resolve_model(args.model)
    device = resolve_device(args.device)
    scenario = source.scenario(str(device))
    env = describe(device)
    reference = parse_stack(REFERENCE)
    print(f"model={args.model} device={device} size={scenario.size_text} steps={scenario.steps} "
          f"{args.seconds:.0f} s of pairs a stack; torch={env['torch']} diffusers={env['diffusers']}", flush=True)
    load_before = os.getloadavg()[0]
    findings: list[Finding] = []
    rows = []
    with rng_states_kept(device), intra_op_threads(device, cpu_threads_for(None)):
        for text in args.stacks.split(","):
            stack = parse_stack(text)
            unmet = stack.unmet_requirement(device.type)
            if unmet is not None:
                print(f"  {stack.name:<24} skipped: {unmet}", flush=True)
                continue
            pipe = source.load()
            try:
                stack.apply(pipe, device)
            except StackUnsupported as exc:  # it changed nothing here
                print(f"  {stack.name:<24} skipped: {exc}", flush=True)
                continue
            reference_pipe = source.load()
            reference.apply(reference_pipe, device)
            promise = stack_promise(stack.optimizations, SPEED, device.type, scenario, pipe)
            runner = Runner(pipe, stack, scenario, device, env)
            reference_runner = Runner(reference_pipe, reference, scenario, device, env)
            runner.timed_call(), reference_runner.timed_call()  # first calls carry one-time costs
            figure = interleave(runner.timed_call, reference_runner.timed_call, lambda f: False, args.seconds)
            measured = f"{figure.ratio:.2f}x ({figure.low:.2f}x-{figure.high:.2f}x, {figure.pairs} pairs)"
            print(f"  {stack.name:<24} {measured}  promise: {promise.text(REFERENCE)}", flush=True)
            rows.append((stack.name, measured, promise.text(REFERENCE)))
            if promise.bound is not None:
                findings.append(Finding(f"{stack.name} speed vs {REFERENCE} on {device.type} (interleaved)", measured,
                                        f">= {promise.bound:.2f}x", figure.low >= promise.bound,
                                        f"benchmarks/promise_ratios.py --stacks {stack.name}"))
            del pipe, reference_pipe, runner, reference_runner
    notes = [f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs"]
    notes += [f"{name}: {measured}; {promise}" for name, measured, promise in rows if "no speed" in promise]
    return finish(findings, notes, args.findings_json)


if __name__ == "__main__":
    raise SystemExit(main())
