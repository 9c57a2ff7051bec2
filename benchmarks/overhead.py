#!/usr/bin/env python
"""Timing overhead (issue 7, item 1): the seconds per image sdopt reports vs a bare diffusers call.

For each stack this machine can run, one pipeline is built and then called in interleaved pairs:
a measured call through sdopt's Runner (the step clock, the forward hook, the memory trackers,
what `sdopt.run` does) and a bare `pipe(...)` with the same prompt, size, steps, guidance and
seeded generator, timed around the call. Each pair alternates which goes first, so a drift of the
machine hits both alike. The ratio is the median of the per-pair ratios; the target is <= 1.03.
21 pairs: with the trained model's 0.14 s calls, the median of 9 moved 0.975-1.035 between runs.

    .venv/bin/python benchmarks/overhead.py [--pairs 21] [--stacks fp32,tome]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from findings import (
    Finding,
    add_findings_option,
    add_model_cache_option,
    finish,
    on_path,
)

TARGET = 1.03


def measure(pairs: int = 21, stacks: str | None = None, model: str = "tiny",
            model_cache: str | None = None) -> list[Finding]:
    on_path()
    import torch

    from pytest_sdopt.measure.devices import resolve_device
    from pytest_sdopt.measure.environment import describe
    from pytest_sdopt.core.errors import StackUnsupported
    from pytest_sdopt.measure.cleanup import release_memory, watch
    from pytest_sdopt.models.sources import resolve_model
    from pytest_sdopt.stacks import REGISTRY, parse_stack
    from pytest_sdopt.measure.runner import Runner, call_kwargs

    source = resolve_model(model, cache=Path(model_cache) if model_cache else None)
    device = resolve_device("auto")
    scenario = source.scenario(str(device))
    env = describe(device)
    findings = []
    for name in (stacks.split(",") if stacks else list(REGISTRY)):
        stack = parse_stack(name)
        if stack.unmet_requirement(device.type) is not None:
            continue
        pipe = source.load()
        try:
            stack.apply(pipe, device)
        except StackUnsupported:  # it changed nothing on this model (sdpa where it is the default): no run
            continue
        runner = Runner(pipe, stack, scenario, device, env)
        kwargs = call_kwargs(scenario)

        def bare() -> float:
            torch.manual_seed(scenario.seed)
            stack.before_each_call(pipe)
            generator = torch.Generator("cpu").manual_seed(scenario.seed)
            start = time.perf_counter()
            pipe(**kwargs, generator=generator)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - start

        runner.call(measured=False)  # warm-ups (compilation, caches) for both ways of calling
        bare()
        ratios = []
        for index in range(pairs):
            if index % 2:
                runner.call(measured=True)
                bare_s = bare()
            else:
                bare_s = bare()
                runner.call(measured=True)
            ratios.append(runner.totals[-1] / bare_s)
        ratio = statistics.median(ratios)
        findings.append(Finding(f"overhead {stack.name}", f"{ratio:.3f}", f"<= {TARGET}", ratio <= TARGET,
                                f"benchmarks/overhead.py --stacks {stack.name}"))
        watched = watch(pipe)
        del pipe, runner
        release_memory(watched)
    return findings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=21)
    parser.add_argument("--stacks", default=None, help="comma-separated (default: every stack this machine runs)")
    parser.add_argument("--model", default="tiny")
    add_model_cache_option(parser)
    add_findings_option(parser)
    args = parser.parse_args()
    return finish(measure(args.pairs, args.stacks, args.model, args.model_cache), [], args.findings_json)


if __name__ == "__main__":
    sys.exit(main())
