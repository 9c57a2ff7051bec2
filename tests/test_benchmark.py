"""A test that also requests pytest-benchmark's `benchmark` feeds it sdopt's own warm-ups and measured
calls: its stats, storage and --benchmark-compare-fail see what sdopt measured, nothing is run twice."""

import json

import pytest


@pytest.fixture(autouse=True)
def _not_an_xdist_worker(monkeypatch):
    """The inner sessions are not parallel, but pytest-benchmark switches itself off when it sees this
    variable, which an outer `pytest -n` run sets."""
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)

SOURCE = """
    import time
    import pytest
    from pytest_sdopt.measure.runner import StepClock

    @pytest.fixture
    def slow(request, monkeypatch):
        if request.config.getoption("--benchmark-compare", default=None):
            original = StepClock.on_step_end
            def slower(self, *args):
                time.sleep(1.0)
                return original(self, *args)
            monkeypatch.setattr(StepClock, "on_step_end", slower)

    def test_speed(sdopt, benchmark, slow):
        result = sdopt.run("fp32", repeats=3, warmup=1)
        assert len(result.step_times_s) == 3
"""


def test_benchmark_stats_come_from_sdopts_measured_calls(run_sdopt, pytester):
    result = run_sdopt(SOURCE, "--benchmark-json", "bench.json")
    result.assert_outcomes(passed=1)
    benchmark, = json.loads((pytester.path / "bench.json").read_text())["benchmarks"]
    assert benchmark["stats"]["rounds"] == 3  # the measured repeats; the warm-up is not a round
    assert benchmark["group"] == "sdopt tiny 64x64"
    assert benchmark["extra_info"]["sdopt_stack"] == "fp32" and benchmark["extra_info"]["sdopt_its"] > 0


def test_benchmark_compare_fail_catches_an_injected_slowdown(run_sdopt):
    run_sdopt(SOURCE, "--benchmark-autosave").assert_outcomes(passed=1)
    # The median, not the mean: one stalled round on a loaded CI machine (5.6 s among 40 ms ones)
    # once lifted the recorded mean so far that a 60x slower run stayed under mean:100%.
    result = run_sdopt(SOURCE, "--benchmark-compare", "--benchmark-compare-fail=median:100%")
    assert result.ret != 0
    output = result.stdout.str() + result.stderr.str()
    assert "test_speed (0001_unversi) - Field 'median' has failed PercentageRegressionCheck" in output


def test_the_flag_feeds_tests_that_did_not_ask_for_benchmark(run_sdopt, pytester):
    result = run_sdopt("""
        def test_plain(sdopt):
            sdopt.run("fp32", repeats=2, warmup=0)
    """, "--sdopt-benchmark", "--benchmark-json", "bench.json")
    result.assert_outcomes(passed=1)
    benchmark, = json.loads((pytester.path / "bench.json").read_text())["benchmarks"]
    assert benchmark["name"] == "test_plain" and benchmark["stats"]["rounds"] == 2
