#!/usr/bin/env python
"""Seconds per image and it/s of every stack this machine can run, on the embedded model.

    python benchmarks/stack_times.py [--size 128x128] [--steps 10] [--repeats 3] [--warmup 1]

Uses the same loader, stack application and runner as the `sdopt` fixture. Figures are
medians over the measured runs and are only comparable within one run of this script.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_sdopt.measure.devices import resolve_device  # noqa: E402
from pytest_sdopt.measure.environment import describe  # noqa: E402
from pytest_sdopt.models.sources import resolve_model  # noqa: E402
from pytest_sdopt.stacks import REGISTRY, parse_stack  # noqa: E402
from pytest_sdopt.config.parsers import parse_image_size  # noqa: E402
from pytest_sdopt.measure.runner import run_pipeline  # noqa: E402
from pytest_sdopt.config.scenario import Measurement  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--stacks", default=",".join(REGISTRY))
    args = parser.parse_args()

    source = resolve_model(args.model)
    device = resolve_device(args.device)
    size = parse_image_size(args.size) if args.size else source.default_size
    scenario = replace(source.scenario(str(device)), size=size, steps=args.steps or source.default_steps)
    env = describe(device)
    print(f"model={args.model} device={device} ({env['device_name']}) size={scenario.size_text} "
          f"steps={scenario.steps} repeats={args.repeats} warmup={args.warmup} torch={env['torch']} "
          f"diffusers={env['diffusers']}")
    print(f"{'stack':<26}{'s/image':>9}{'it/s':>8}{'vs fp32':>9}")
    reference_s = None
    for text in args.stacks.split(","):
        stack = parse_stack(text)
        unmet = stack.unmet_requirement(device.type)
        if unmet is not None:
            print(f"{stack.name:<26}  skipped: {unmet}")
            continue
        pipe = source.load()
        stack.apply(pipe, device)
        result = run_pipeline(pipe, stack, scenario, Measurement(args.repeats, args.warmup), device, env)
        reference_s = reference_s or (result.total_s if stack.name == "fp32" else None)
        ratio = f"{result.total_s / reference_s:.2f}x" if reference_s else "-"
        print(f"{stack.name:<26}{result.total_s:>9.3f}{result.its:>8.1f}{ratio:>9}", flush=True)


if __name__ == "__main__":
    main()
