"""Gates as plain functions: (run, limit) -> pass, fail or not applicable, each with its own text."""

import statistics
import time
from types import SimpleNamespace

import pytest

from pytest_sdopt.checks import gates
from pytest_sdopt.checks.gates import ReferenceComparison, Status, StoredMetrics
from pytest_sdopt.measure.machine import REFERENCE_NAME
from pytest_sdopt.measure.figures import SpeedFigure, spread_of

GB = 10**9


def run(**fields):
    values = dict(stack="fp16", device="cuda:0", its=20.0, peak_vram_bytes=4 * GB, peak_host_bytes=3 * GB)
    values.update(fields)
    values.setdefault("best_its", values["its"])  # the figure max_its_drop compares
    values.setdefault("step_times_s", [[1 / values["best_its"]] * 2])
    values["speed"] = SpeedFigure.measured(values["step_times_s"], values.get("reference_s", []),
                                           values.get("cpu_threads"))
    return SimpleNamespace(**values)


@pytest.mark.parametrize("peak, status", [(5 * GB, Status.PASS), (5 * GB + 1, Status.FAIL), (1, Status.PASS)])
def test_max_vram_is_an_inclusive_ceiling(peak, status):
    outcome = gates.max_vram(run(peak_vram_bytes=peak), 5 * GB)
    assert outcome.status is status
    assert outcome.limit == "<= 5.00 GB"


def test_max_vram_on_a_cpu_run_is_not_applicable_and_says_why():
    outcome = gates.max_vram(run(device="cpu", peak_vram_bytes=None), 5 * GB)
    assert outcome.status is Status.NOT_APPLICABLE and not outcome.failed
    assert "no CUDA allocator on a cpu run" in outcome.lines()[0]


def test_max_host_memory_without_a_measurement_is_not_applicable():
    assert gates.max_host_memory(run(peak_host_bytes=None), GB).status is Status.NOT_APPLICABLE
    assert gates.max_host_memory(run(peak_host_bytes=2 * GB), GB).status is Status.FAIL
    assert gates.max_host_memory(run(peak_host_bytes=GB), GB).status is Status.PASS


def test_min_its_is_an_inclusive_floor_and_shows_both_figures():
    assert gates.min_its(run(its=19.0), 19.0).status is Status.PASS
    outcome = gates.min_its(run(its=18.99), 19.0)
    assert outcome.failed
    assert outcome.lines() == ["  FAIL  min_its             measured 18.99 it/s, limit >= 19 it/s"]


def test_min_ssim_fails_without_a_comparison_and_carries_the_advice():
    missing = ReferenceComparison("fp32", None, problem="no baseline image of 'fp32'.\nRecord it with:\n    pytest x")
    outcome = gates.min_ssim(missing, 0.95)
    assert outcome.failed
    assert outcome.lines()[1:] == ["        no baseline image of 'fp32'.", "        Record it with:",
                                   "            pytest x"]


def test_min_ssim_lists_artifacts_only_when_it_fails():
    artifacts = (("actual", "a.png"), ("baseline", "b.png"), ("diff", "d.png"))
    failed = gates.min_ssim(ReferenceComparison("fp32", 0.5, artifacts=artifacts), 0.95)
    assert failed.failed and failed.value == 0.5
    assert [line.split()[0] for line in failed.lines()[1:]] == ["actual:", "baseline:", "diff:"]
    passed = gates.min_ssim(ReferenceComparison("fp32", 0.99, artifacts=artifacts), 0.95)
    assert passed.status is Status.PASS and passed.artifacts == ()


def test_identical_images_pass_a_limit_of_one_despite_float_rounding():
    assert gates.min_ssim(ReferenceComparison("fp32", 0.9999999999), 1.0).status is Status.PASS


STORED = StoredMetrics("GPU | torch 2 | diffusers 0.42", {"its": 20.0, "peak_vram_bytes": 4 * GB,
                                                          "peak_host_bytes": 3 * GB})


@pytest.mark.parametrize("its, status", [(40.0, Status.PASS), (18.0, Status.INCONCLUSIVE)])
def test_one_run_against_one_stored_run_decides_only_what_is_far_from_the_limit(its, status):
    """One run each side: no interval of their own, so each counts as 10% uncertain (measure/figures.py): twice
    as fast passes, 10% slower against a 10% limit cannot be told."""
    outcome = gates.max_its_drop(run(its=its), 0.10, STORED)
    assert outcome.status is status
    assert "stored" in outcome.measured
    if status is Status.INCONCLUSIVE:
        assert not outcome.failed and outcome.inconclusive
        assert "inconclusive: this run's 1 run over 0.1 s of steps give no interval of their own" in outcome.detail
        assert "to settle it: --sdopt-settle 60" in outcome.detail
        assert outcome.lines()[0].startswith("  INCONCLUSIVE  max_its_drop")


def test_half_the_speed_fails_on_two_runs_but_one_run_on_either_side_cannot_fail():
    """A single run may be the moment the machine was taken from the process: however slow it reads,
    it is inconclusive, and says what settles it; two runs on each side fail it."""
    two = StoredMetrics(STORED.fingerprint, {**STORED.values, "repeats": 2})
    assert gates.max_its_drop(run(its=10.0, step_times_s=[[0.1] * 2] * 2), 0.10, two).status is Status.FAIL
    one_now = gates.max_its_drop(run(its=10.0), 0.10, two)
    assert one_now.status is Status.INCONCLUSIVE
    assert ("this run's figure rests on 1 run, and one run cannot tell a slower code from a moment the machine was "
            "taken from it; to settle it: --sdopt-repeats 3 or more") in one_now.detail
    one_stored = gates.max_its_drop(run(its=10.0, step_times_s=[[0.1] * 2] * 2), 0.10, STORED)
    assert one_stored.status is Status.INCONCLUSIVE and "the stored figure's figure" not in one_stored.detail
    assert "--sdopt-repeats 3 or more (and record again)" in one_stored.detail


def test_relative_gates_are_not_applicable_without_stored_metrics_or_right_after_recording():
    nothing = StoredMetrics("GPU | torch 2 | diffusers 0.42", None)
    outcome = gates.max_its_drop(run(), 0.1, nothing)
    assert outcome.status is Status.NOT_APPLICABLE and "--sdopt-update-baselines records it" in outcome.detail
    just_recorded = StoredMetrics("x", {"its": 1.0}, recorded_now=True)
    assert gates.max_its_drop(run(its=0.001), 0.1, just_recorded).status is Status.NOT_APPLICABLE
    assert [o.status for o in gates.max_memory_growth(run(), 0.1, nothing)] == [Status.NOT_APPLICABLE]


def test_memory_growth_is_checked_for_each_memory_measured_now_and_stored_before():
    outcomes = gates.max_memory_growth(run(peak_vram_bytes=int(4.5 * GB), peak_host_bytes=3 * GB), 0.10, STORED)
    assert [(o.measured.split()[0], o.status) for o in outcomes] == [("vram", Status.FAIL), ("host", Status.PASS)]
    cpu = gates.max_memory_growth(run(peak_vram_bytes=None, peak_host_bytes=int(3.2 * GB)), 0.10, STORED)
    assert [(o.measured.split()[0], o.status) for o in cpu] == [("host", Status.PASS)]


def test_the_failure_message_lists_failures_first_then_everything_else():
    outcomes = [gates.min_its(run(its=30.0), 19.0), gates.max_vram(run(device="cpu", peak_vram_bytes=None), GB),
                gates.max_host_memory(run(peak_host_bytes=3 * GB), GB)]
    message = gates.failure_message("fp16", "tiny, 64x64", outcomes)
    lines = message.splitlines()
    assert lines[0] == "sdopt: stack 'fp16' failed 1 of 3 gates (tiny, 64x64):"
    assert [line.split()[0] for line in lines[1:]] == ["FAIL", "n/a", "pass"]


# A CPU run timed beside the machine's reference workload (machine.py): 10 steps of 20 ms while the
# reference took 1.5 ms, so 0.075 steps per reference.
CPU_STORED = StoredMetrics("AMD EPYC | torch 2 | diffusers 0.42", {
    "its": 50.0, "best_its": 52.0, "machine_relative_its": 50.0 * 0.0015, "machine_reference": REFERENCE_NAME,
    "machine_reference_s": 0.0015})
# The same recorded over 50 runs, with the interval a steady recording gets.
CPU_STORED_MANY = StoredMetrics(CPU_STORED.fingerprint, {**CPU_STORED.values, "repeats": 50,
                                                         "machine_relative_spread": 0.01, "best_its_spread": 0.01})


def cpu_run(step_s: float, reference_s: float, runs: int = 3):
    return run(device="cpu", step_times_s=[[step_s] * 10] * runs, reference_s=[reference_s] * runs)


def test_on_cpu_a_machine_that_slowed_down_as_a_whole_is_not_a_slowdown_of_the_code():
    machine_slow = gates.max_its_drop(cpu_run(0.020 * 1.25, 0.0015 * 1.25, runs=50), 0.10, CPU_STORED_MANY)
    assert machine_slow.status is Status.PASS and machine_slow.value == pytest.approx(0.0)
    assert "relative to the machine's speed, " in machine_slow.measured
    assert "0.0% ± " in machine_slow.measured and "vs stored (median of 50 runs)" in machine_slow.measured
    assert "the machine ran 25.0% slower than when recorded" in machine_slow.detail


def test_on_cpu_code_that_slowed_down_on_an_unchanged_machine_fails():
    code_slow = gates.max_its_drop(cpu_run(0.020 * 1.10, 0.0015, runs=50), 0.05, CPU_STORED_MANY)  # 11 s of steps
    assert code_slow.failed and code_slow.value == pytest.approx(1 - 1 / 1.10)
    assert code_slow.measured.startswith("45.45 it/s (best of 50 runs); relative to the machine's speed, -9.1% ± 1.")
    # Too few runs, or runs over too short a time (8 runs, 1.8 s of steps), for an interval of their
    # own: the prior's 5% each side, and the same 9% slowdown cannot be told from a 5% limit.
    for runs in (3, 8):
        few = gates.max_its_drop(cpu_run(0.020 * 1.10, 0.0015, runs=runs), 0.05, CPU_STORED)
        assert few.inconclusive and "-9.1% ± 6.4%" in few.measured and f"(median of {runs} runs)" in few.measured
        assert f"this run's {runs} runs over {runs * 0.22:.1f} s of steps give no interval of their own" in few.detail
    # A machine that runs faster now does not hide a large slowdown of the code.
    faster_machine = cpu_run(0.020 * 1.5 * 0.8, 0.0015 * 0.8, runs=50)
    assert gates.max_its_drop(faster_machine, 0.05, CPU_STORED_MANY).failed


def test_figures_recorded_before_the_reference_existed_compare_the_best_run():
    old = StoredMetrics("AMD EPYC | torch 2 | diffusers 0.42", {"its": 50.0, "best_its": 50.0, "repeats": 3})
    outcome = gates.max_its_drop(cpu_run(0.020 * 1.25, 0.0015 * 1.25), 0.07, old)
    assert outcome.failed and outcome.measured.startswith("40.00 it/s (best of 3 runs) vs 50.00 stored (-20.0% ± ")
    untimed = run(device="cpu", step_times_s=[[0.02] * 10], reference_s=[])  # a run without the reference
    assert "vs 52.00 stored (-3.8% ± " in gates.max_its_drop(untimed, 0.07, CPU_STORED).measured
    # A figure relative to another reference workload (an older version's) is not comparable either.
    other = StoredMetrics(CPU_STORED.fingerprint, {**CPU_STORED.values, "machine_reference": "convolutions-0"})
    assert "vs 52.00 stored (-3.8% ± " in gates.max_its_drop(cpu_run(0.020, 0.0015), 0.07, other).measured


def test_the_machine_relative_figure_is_the_median_over_calls_and_needs_a_reference_for_each():
    from pytest_sdopt.measure.figures import machine_relative_its

    assert machine_relative_its([[0.02] * 4, [0.04] * 4, [0.02] * 4], [0.001, 0.002, 0.003]) == pytest.approx(0.05)
    assert machine_relative_its([[0.02] * 4], []) is None
    assert machine_relative_its([[0.02] * 4, [0.02] * 4], [0.001]) is None  # not timed beside every call


def test_the_reference_workload_is_fixed_and_fast():
    import torch
    from diffusers import UNet2DConditionModel

    from pytest_sdopt.measure.machine import ReferenceWorkload
    from pytest_sdopt.models.sources import TINY_DIR

    first = ReferenceWorkload()
    torch.manual_seed(1234)
    torch.randn(64)  # whatever ran before draws from the global generator
    state = torch.random.get_rng_state()
    second = ReferenceWorkload()
    assert torch.equal(torch.random.get_rng_state(), state)  # building one leaves the caller's RNG alone
    assert first.run().equal(second.run())  # the same work every time, whatever was measured before
    assert not first.run().equal(ReferenceWorkload(seed=1).run())  # so equal outputs mean the same seed, not a constant

    # It is timed twice beside every measured call, so it must cost less than one step of the
    # model it stands for: the embedded UNet with guidance (batch 2, 16x16 latents, 77 tokens).
    # Side by side in this process, fastest of interleaved rounds; measured at 0.25-0.5 of a step.
    unet = UNet2DConditionModel.from_pretrained(TINY_DIR / "unet").eval()
    latents, context, timestep = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 32), torch.tensor(10)

    def unet_step_s() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            unet(latents, timestep, encoder_hidden_states=context)
        return time.perf_counter() - start

    unet_step_s()  # the first call allocates
    reference, step = zip(*((first.seconds(), unet_step_s()) for _ in range(5)))
    assert min(reference) < min(step), f"reference {min(reference):.4f} s vs a UNet step {min(step):.4f} s"


def test_settling_stops_only_once_a_machine_relative_reading_is_surely_within_the_limit():
    from pytest_sdopt.measure.figures import MIN_INTERVAL_SPAN_S, SpeedFigure
    from pytest_sdopt.checks.speed import Verdict, judge_speed

    stored = SpeedFigure.stored({"machine_relative_its": 1.0, "machine_reference": REFERENCE_NAME, "its": 1.0,
                                 "repeats": 50, "machine_relative_spread": 0.005})

    def verdict(samples, span_s=60.0, limit=0.07):  # 60 s of measured steps: enough for an interval
        figure = SpeedFigure(best_its=1.0, best_spread=0.1, runs=len(samples), relative_its=statistics.median(samples),
                             relative_spread=spread_of(samples, span_s, True), reference=REFERENCE_NAME)
        return judge_speed(figure, stored, limit).verdict

    assert verdict([0.96, 0.93, 0.95]) is Verdict.INCONCLUSIVE  # -5%, within 7%, but 3 runs are no interval
    assert verdict([0.995, 1.0, 1.005, 0.99, 1.01] * 4) is Verdict.PASS
    assert verdict([0.90, 0.895, 0.905, 0.90] * 5) is Verdict.FAIL
    disturbed = [0.2, 0.25, 1.0, 0.99, 1.01, 1.0, 1.0, 0.995, 1.005]  # two runs hit by a burst
    assert verdict(disturbed) is Verdict.PASS  # a robust spread: the burst does not widen the interval
    # Three runs that agree by luck are not yet an interval: the check keeps measuring.
    assert verdict([0.946, 0.945, 0.947]) is Verdict.INCONCLUSIVE
    # Nor are many runs taken within a moment: they share that moment's drift (measure/figures.py).
    brief = [0.962, 0.96, 0.961, 0.963] * 4
    assert verdict(brief, MIN_INTERVAL_SPAN_S - 0.5, 0.06) is Verdict.INCONCLUSIVE
    assert verdict(brief, MIN_INTERVAL_SPAN_S, 0.06) is Verdict.PASS
