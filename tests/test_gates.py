"""Gates as plain functions: (run, limit) -> pass, fail or not applicable, each with its own text."""

from types import SimpleNamespace

import pytest

from pytest_sdopt import gates
from pytest_sdopt.gates import ReferenceComparison, Status, StoredMetrics

GB = 10**9


def run(**fields):
    values = dict(stack="fp16", device="cuda:0", its=20.0, peak_vram_bytes=4 * GB, peak_host_bytes=3 * GB)
    values.update(fields)
    values.setdefault("best_its", values["its"])  # the figure max_its_drop compares
    values.setdefault("step_times_s", [[1 / values["best_its"]] * 2])
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


@pytest.mark.parametrize("its, status", [(18.0, Status.PASS), (17.9, Status.FAIL), (40.0, Status.PASS)])
def test_its_may_drop_by_the_tolerance_and_no_more(its, status):
    outcome = gates.max_its_drop(run(its=its), 0.10, STORED)
    assert outcome.status is status
    assert "stored" in outcome.measured


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
