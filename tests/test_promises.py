"""Promise gates: a stack's speed and memory as ratios to the reference, measured beside it in the
same session (interleaved calls for speed), against a set bound or the registry's promise."""

import math

import pytest

from pytest_sdopt.checks.gates import Status
from pytest_sdopt.checks.promises import MemoryRatio, PromiseBound, memory_outcome, speed_outcome
from pytest_sdopt.measure.interleaved import MIN_PAIRS, RatioFigure, interleave
from pytest_sdopt.stacks import REGISTRY, parse_stack
from pytest_sdopt.stacks.promises import MEMORY, SPEED, Promise, stack_promise

# A conftest registering two optimizations broken on purpose: one makes every denoising step
# twice as slow (the UNet's forward is followed by a busy wait as long as itself), one holds
# 256 MB more host memory during every UNet call. Each promises what fp32 does, or a bound set
# in the environment (a generous promise).
BROKEN = """
import os
import time

import torch

from pytest_sdopt.stacks import Effect, OptimizationSpec, Phase
from pytest_sdopt.stacks.promises import MEMORY, SPEED, Promise


def wrapped(pipe):
    return getattr(pipe.unet, "_broken", False)


def slow_steps(pipe, ctx):
    forward = pipe.unet.forward

    def slower(*args, **kwargs):
        start = time.perf_counter()
        out = forward(*args, **kwargs)
        spent = time.perf_counter() - start
        while time.perf_counter() - start < 2 * spent:
            pass
        return out

    pipe.unet.forward, pipe.unet._broken = slower, True


def bloat(pipe, ctx):
    forward = pipe.unet.forward

    def bloated(*args, **kwargs):
        held = torch.ones(64 * 2**20)  # 256 MB while the step runs
        out = forward(*args, **kwargs)
        del held
        return out

    pipe.unet.forward, pipe.unet._broken = bloated, True


SPEED_PROMISE = float(os.environ.get("SPEED_PROMISE", "0.9"))


def pytest_sdopt_register_optimizations(config):
    effect = Effect(wrapped, lambda before: "changed nothing")
    return [
        OptimizationSpec("slow_steps", Phase.ATTENTION, "every step twice as slow", 0.9, slow_steps, effect=effect,
                         promises=(Promise(SPEED, SPEED_PROMISE, ("cpu",), "this test"),)),
        OptimizationSpec("bloat", Phase.ATTENTION, "256 MB more per step", 0.9, bloat, effect=effect,
                         promises=(Promise(MEMORY, 1.0, ("cpu",), "this test"),)),
    ]
"""

ONLY_PROMISES = "min_ssim=None, min_self_ssim=None, max_memory_growth=None, max_its_drop=None"


@pytest.fixture
def broken(pytester):
    pytester.makeconftest(BROKEN)


def test_a_stack_that_breaks_its_speed_promise_fails_saying_so(run_sdopt, broken):
    result = run_sdopt(f"""
        def test_it(sdopt):
            sdopt.check(sdopt.run("slow_steps"), {ONLY_PROMISES}, promises=True)
    """, "--sdopt-settle", "5")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*FAIL  min_speedup         measured 0.* fp32's it/s (*, 95%, over * interleaved pairs*limit >= 0.90x fp32's it/s",
        "*promise broken: slow_steps ran at 0.* fp32's speed, promised >= 0.90x*",
    ])


def test_the_same_stack_keeps_a_generous_promise(run_sdopt, broken, monkeypatch):
    monkeypatch.setenv("SPEED_PROMISE", "0.2")
    result = run_sdopt(f"""
        def test_it(sdopt):
            checked = sdopt.check(sdopt.run("slow_steps"), {ONLY_PROMISES}, promises=True)
            speed = next(o for o in checked.outcomes if o.gate == "min_speedup")
            assert speed.status.value == "pass" and 0.3 < speed.value < 0.7, speed  # half the speed, measured
    """, "--sdopt-settle", "5")
    result.assert_outcomes(passed=1)


def test_a_stack_that_breaks_its_memory_promise_fails_saying_so(run_sdopt, broken):
    result = run_sdopt(f"""
        def test_it(sdopt):
            sdopt.check(sdopt.run("bloat"), {ONLY_PROMISES}, promises=True)
    """)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*promise broken: bloat used *x fp32's host memory, promised <= 1.00x*"])


def test_a_set_bound_is_checked_without_the_registry(run_sdopt, broken):
    result = run_sdopt(f"""
        def test_it(sdopt):
            sdopt.check(sdopt.run("slow_steps"), {ONLY_PROMISES}, min_speedup=0.9)
    """, "--sdopt-settle", "5")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FAIL  min_speedup         measured 0.*x fp32's it/s*",
                                 "*slow_steps ran at 0.*x fp32's speed, below 0.90x"])


def test_an_unmet_condition_is_not_applicable_with_its_reason(run_sdopt):
    result = run_sdopt(f"""
        def test_it(sdopt):
            checked = sdopt.check(sdopt.run("vae_tiling"), {ONLY_PROMISES}, promises=True)
            memory = next(o for o in checked.outcomes if o.gate == "max_memory_ratio")
            assert memory.status.value == "n/a", memory
            print("DETAIL", memory.detail)
    """, "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*DETAIL vae_tiling promises no memory ratio here: vae_tiling's promise needs an image "
                                 "larger than the VAE's 64-px tile; this scenario is 64x64, which it decodes whole"])


# --- the verdict logic, deterministically ---------------------------------------------------

def _figure(ratios, its=10.0):
    return RatioFigure.of([[1 / (its * r)] for r in ratios], [[1 / its]] * len(ratios))


def test_the_ratio_is_the_median_of_the_pairs_with_an_interval_only_from_enough_pairs():
    few = _figure([0.5] * (MIN_PAIRS - 1))
    assert few.ratio == pytest.approx(0.5) and math.isinf(few.spread)
    enough = _figure([0.5, 0.51, 0.49, 0.5, 0.52, 0.48, 0.5, 0.5])
    assert enough.ratio == pytest.approx(0.5) and 0 < enough.spread < 0.05


@pytest.mark.parametrize("ratios, bound, status", [
    ([1.0] * 8, 0.9, Status.PASS),
    ([0.5] * 8, 0.9, Status.FAIL),
    ([0.5] * 7, 0.9, Status.INCONCLUSIVE),  # too few pairs to fail
    ([0.8, 1.0, 0.85, 0.95, 0.9, 0.88, 0.92, 1.02], 0.9, Status.INCONCLUSIVE),  # straddles the bound
])
def test_the_speed_verdict_has_three_outcomes(ratios, bound, status):
    outcome = speed_outcome("x", "fp32", PromiseBound(SPEED, bound, promised=True), _figure(ratios))
    assert outcome.status is status, outcome


@pytest.mark.parametrize("stack_mb, reference_mb, device, status", [
    (600, 1000, "cuda", Status.PASS),
    (1160, 1000, "cuda", Status.FAIL),  # attention_slicing on the H200: more than fp32
    (300, 25, "cpu", Status.FAIL),  # far past host memory's noise
    (40, 25, "cpu", Status.INCONCLUSIVE),  # within it
])
def test_the_memory_verdict_counts_host_memory_noise(stack_mb, reference_mb, device, status):
    ratio = MemoryRatio(stack_mb * 2**20, reference_mb * 2**20, device)
    outcome = memory_outcome("x", "fp32", PromiseBound(MEMORY, 1.0, promised=True), ratio)
    assert outcome.status is status, outcome


def test_interleaving_alternates_which_pipeline_goes_first_and_stops_once_decided():
    calls = []

    def call(name):
        def run():
            calls.append(name)
            return [0.1]
        return run

    figure = interleave(call("stack"), call("reference"), decided=lambda f: True, budget_s=60)
    assert figure.pairs == MIN_PAIRS
    assert calls[:4] == ["stack", "reference", "reference", "stack"]


# --- the registry's promises ----------------------------------------------------------------

def test_a_stack_combines_its_optimizations_promises():
    def promise(stack, metric, device="cuda", size=(512, 512)):
        scenario = type("Scenario", (), {"size": size})()
        return stack_promise(parse_stack(stack).optimizations, metric, device, scenario, pipe=None)

    assert promise("fp16", MEMORY).bound == pytest.approx(0.65)
    assert promise("fp16+sequential_cpu_offload", MEMORY).bound == pytest.approx(0.35)  # the deepest cut
    assert promise("fp16+sequential_cpu_offload", SPEED).bound == pytest.approx(0.02)  # gain times cost
    assert promise("fp16", SPEED, device="cpu").bound is None
    assert "fp16 is not for CPU" in promise("fp16", SPEED, device="cpu").reason


def test_every_promise_names_its_source_and_every_optimization_speaks_for_each_device():
    for spec in REGISTRY.values():
        for device in ("cpu", "cuda"):
            promised = [p for p in spec.promises if device in p.devices]
            assert all(p.source for p in promised), spec.name
            # Either a promise on this device, or nothing at all said (the gate then names that), but
            # never both.
            assert not (promised and device in dict(spec.promises_nothing)), (spec.name, device)
    assert Promise(SPEED, 1.0, ("cuda",), "x").unmet_condition(None, None) is None
