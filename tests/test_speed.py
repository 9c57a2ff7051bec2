"""The speed figure max_its_drop compares, and --sdopt-settle: re-measure before a speed verdict counts."""

from __future__ import annotations

import gc
import json

import pytest

from pytest_sdopt.measure.cleanup import release_memory, watch
from pytest_sdopt.measure.machine import REFERENCE_NAME
from pytest_sdopt.measure.figures import (MIN_INTERVAL_SAMPLES, MIN_INTERVAL_SPAN_S, best_its, call_its, drop, stored_best_its)
from pytest_sdopt.measure.settling import RECORDING_FACTOR, Settled, settle


def test_a_calls_speed_is_its_median_step_so_one_stray_step_does_not_move_it():
    assert call_its([0.1, 0.1, 0.1, 5.0, 0.1]) == pytest.approx(10.0)
    assert best_its([[0.2, 0.2, 0.2], [0.1, 0.1, 0.1], [0.5, 0.5, 0.5]]) == pytest.approx(10.0)
    assert call_its([]) == 0.0 and best_its([]) == 0.0


def test_drop_and_the_stored_figure_fall_back_to_its_for_older_records():
    assert drop(90.0, 100.0) == pytest.approx(0.10)
    assert drop(110.0, 100.0) == pytest.approx(-0.10)
    assert stored_best_its({"its": 40.0}) == 40.0
    assert stored_best_its({"its": 40.0, "best_its": 44.0}) == 44.0


class FakeClock:
    """Each measured call takes one second of a clock the test controls."""

    def __init__(self, speeds):
        self.now, self.calls, self.speeds, self.best = 0.0, 0, list(speeds), 0.0

    def __call__(self) -> float:
        return self.now

    def measure_once(self) -> None:
        self.now += 1.0
        self.best = max(self.best, self.speeds[self.calls % len(self.speeds)])
        self.calls += 1


def test_a_recording_searches_longer_than_any_check_will():
    budget_s = 5.0
    recording = FakeClock([10.0])
    recorded = settle(recording.measure_once, budget_s, measuring_since=0.0, good_enough=None, clock=recording)
    # A check whose reading never holds is the longest a check can measure: its whole budget.
    checking = FakeClock([10.0])
    checked = settle(checking.measure_once, budget_s, measuring_since=0.0, good_enough=lambda: False, clock=checking)
    # Each fake call takes 1 s, so calls are seconds: the recording measured RECORDING_FACTOR x the
    # budget, the check exactly the budget and no more.
    assert recorded == Settled(int(RECORDING_FACTOR * budget_s), RECORDING_FACTOR * budget_s, "recording")
    assert checked == Settled(int(budget_s), budget_s, "checking")
    assert recorded.seconds > checked.seconds


def test_a_check_that_already_holds_measures_nothing_more():
    clock = FakeClock([10.0])
    settled = settle(clock.measure_once, 60.0, 0.0, good_enough=lambda: True, clock=clock)
    assert settled == Settled() and clock.calls == 0


def test_a_slow_reading_is_remeasured_until_a_run_comes_within_the_limit():
    clock = FakeClock([5.0, 5.0, 9.5, 5.0])  # a slow phase, then the machine's real speed
    settled = settle(clock.measure_once, 60.0, 0.0, good_enough=lambda: clock.best >= 9.0, clock=clock)
    assert settled == Settled(3, 3.0, "checking")


def test_a_real_slowdown_uses_the_budget_counted_from_the_first_measured_run_and_stays_slow():
    clock = FakeClock([5.0])
    clock.now = 2.0  # the first measured runs already took 2 s of the 10
    settled = settle(clock.measure_once, 10.0, 0.0, good_enough=lambda: clock.best >= 9.0, clock=clock)
    assert settled.calls == 8 and clock.best == 5.0


def test_settling_is_off_by_default():
    clock = FakeClock([1.0])
    assert settle(clock.measure_once, 0.0, 0.0, good_enough=None, clock=clock) == Settled()


class Cycle:
    def __init__(self):
        self.me = self


def test_a_full_collection_runs_only_when_a_watched_object_outlived_its_release(monkeypatch):
    from pytest_sdopt.measure import isolation

    monkeypatch.setattr(isolation, "_FROZEN", [True])  # the one-off freeze is the next test's
    calls = []
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *generation: calls.append(generation) or real_collect(*generation))
    plain = type("Plain", (), {})()
    watched = watch(plain)
    del plain
    release_memory(watched)  # freed by reference counting: the young generations suffice
    assert calls == [(1,)]
    calls.clear()
    cyclic = Cycle()
    watched = watch(cyclic)
    del cyclic
    release_memory(watched)
    assert calls == [()] and watched[0]() is None  # the cycle needed, and got, a full collection


def test_once_the_first_pipeline_is_gone_what_lives_on_is_frozen_and_later_cycles_are_still_collected(monkeypatch):
    from pytest_sdopt.measure import isolation

    monkeypatch.setattr(isolation, "_FROZEN", [])
    monkeypatch.setattr(gc, "get_freeze_count", lambda: 0)  # whatever this suite's process froze itself
    events = []
    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *generation: events.append(("collect", generation)) or real_collect(*generation))
    monkeypatch.setattr(gc, "freeze", lambda: events.append(("freeze",)))  # this suite's process stays as it is
    held = Cycle()
    release_memory(watch(held))  # a pipeline still alive: nothing may be frozen with it
    assert ("freeze",) not in events
    del held
    events.clear()
    release_memory(watch(type("Plain", (), {})()))
    assert events == [("collect", (1,)), ("collect", ()), ("freeze",)]  # no garbage is frozen
    events.clear()
    later = Cycle()
    watched = watch(later)
    del later
    release_memory(watched)
    assert ("freeze",) not in events and watched[0]() is None  # once only; later cycles are still collected


SETTLED = """
def test_speed(sdopt):
    sdopt.check(sdopt.run("fp32"), min_ssim=None, min_self_ssim=None)
"""


def test_settling_passes_a_slow_first_reading_and_confirms_a_lasting_slowdown(run_sdopt, pytester, fake_timing):
    """The steps' and the machine's timings are faked (tests/conftest.py FAKE_TIMING), so what settling
    does depends on the injected readings alone, not on the machine's load: a transient slow start is
    re-measured until the interval exists and passes; a lasting slowdown is confirmed over the budget."""
    # One thread: the timings are fake, and a 2-thread run on a machine with a core taken runs ~50x slower.
    settle_options = ("--sdopt-repeats", "2", "--sdopt-warmup", "1", "--sdopt-max-its-drop", "10%",
                      "--sdopt-cpu-threads", "1")
    fake_timing(0.5, 0.004)  # 1 s of (fake) steps per call: an interval's 10 s of steps after 10 calls
    run_sdopt(SETTLED, "--sdopt-update-baselines", "--sdopt-settle", "4", *settle_options).assert_outcomes(passed=1)
    recorded = json.loads(next(pytester.path.glob("baselines/tiny/*/fp32.json")).read_text())
    entry = next(iter(recorded["metrics"].values()))
    assert entry["repeats"] > 2  # a recording measures for twice the budget (8 s), not only its 2 runs
    assert entry["machine_relative_spread"] <= 0.05  # identical readings: the prior at most

    fake_timing([5.0, 5.0, 0.5], 0.004)  # the first two measured calls ten times slower, then as recorded
    result = run_sdopt(SETTLED, "--sdopt-settle", "60", "--sdopt-json", "out.json", *settle_options)
    result.assert_outcomes(passed=1)
    run = json.loads((pytester.path / "out.json").read_text())["runs"][0]
    assert len(run["figures"]["warmup_s"]) == 1
    # 2 measured + 6 more: the first interval (8 runs; 26 s of fake steps) has a median and a MAD of the
    # recorded speed, and passes.
    assert len(run["figures"]["call_s"]) == 8
    drop = next(g for g in run["gates"] if g["gate"] == "max_its_drop")
    assert drop["status"] == "pass" and "a first reading near the limit was re-measured: 6 more runs" in drop["detail"]

    fake_timing(5.0, 0.004)  # lasting
    result = run_sdopt(SETTLED, "--sdopt-settle", "3", *settle_options)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FAIL  max_its_drop        measured 0.20 it/s (best of * runs); relative to the machine's "
                                 "speed, -90.0% ± *% vs stored (median of * runs)*",
                                 "*confirmed: * more runs over * s (--sdopt-settle)*"])


def test_by_default_a_recording_measures_until_its_interval_and_a_check_settles(run_sdopt, pytester, fake_timing):
    """Without --sdopt-settle: a recording that max_its_drop will read measures until its figure has an
    interval of its own (8 runs over 10 s of steps), one the gate is off for keeps its runs; a check
    whose first readings do not surely pass re-measures (up to CHECK_SETTLE_S) until they do."""
    options = ("--sdopt-repeats", "2", "--sdopt-warmup", "1", "--sdopt-max-its-drop", "10%")

    def stored_entry():
        return next(iter(json.loads(next(pytester.path.glob("baselines/tiny/*/fp32.json")).read_text())["metrics"].values()))

    fake_timing(0.5, 0.004)  # 1 s of (fake) steps per call: 10 s of steps after 10 calls
    run_sdopt(SETTLED, "--sdopt-update-baselines", *options, "--sdopt-max-its-drop", "off").assert_outcomes(passed=1)
    assert stored_entry()["repeats"] == 2  # no speed gate to read it: not extended
    run_sdopt(SETTLED, "--sdopt-update-baselines", *options).assert_outcomes(passed=1)
    entry = stored_entry()
    # Until its interval existed (8 runs; by then over 10 s of fake steps), and no longer.
    assert entry["repeats"] == MIN_INTERVAL_SAMPLES and entry["measured_span_s"] >= MIN_INTERVAL_SPAN_S
    assert entry["machine_relative_spread"] == pytest.approx(0.015)  # identical readings: the session floor

    fake_timing([5.0, 5.0, 0.5], 0.004)  # the first two measured calls ten times slower, then as recorded
    result = run_sdopt(SETTLED, "--sdopt-json", "out.json", *options)
    result.assert_outcomes(passed=1)
    run = json.loads((pytester.path / "out.json").read_text())["runs"][0]
    assert len(run["figures"]["call_s"]) == 8  # re-measured until an interval (8 runs over 10 s of steps) passed
    drop = next(g for g in run["gates"] if g["gate"] == "max_its_drop")
    assert drop["status"] == "pass" and "re-measured: 6 more runs" in drop["detail"]

    # A first reading that surely passes is not re-measured at all.
    fake_timing(0.5, 0.004)
    run_sdopt(SETTLED, "--sdopt-json", "out.json", *options).assert_outcomes(passed=1)
    assert len(json.loads((pytester.path / "out.json").read_text())["runs"][0]["figures"]["call_s"]) == 2


def test_cpu_threads_are_set_for_a_cpu_run_and_restored_after_it():
    import torch

    from pytest_sdopt.measure.devices import intra_op_threads

    before = torch.get_num_threads()
    with intra_op_threads(torch.device("cpu"), 1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with intra_op_threads(torch.device("cuda", 0), 1):  # a GPU run's speed is not the CPU threads'
        assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), intra_op_threads(torch.device("cpu"), 1):
        raise RuntimeError("a failed run")
    assert torch.get_num_threads() == before


def test_the_thread_count_is_kept_with_the_figure_not_in_the_fingerprint():
    from pytest_sdopt.checks.baselines import fingerprint

    env = {"device_name": "AMD EPYC", "torch": "2.13.0+cpu", "diffusers": "0.42.1"}
    assert fingerprint(env) == "AMD EPYC | torch 2.13.0+cpu | diffusers 0.42.1"  # unchanged for existing records
    assert fingerprint({**env, "cpu_threads": "1"}) == fingerprint(env)  # memory is not split by threads


def test_a_cpu_run_uses_one_thread_unless_told_otherwise():
    from pytest_sdopt.measure import devices

    assert devices.cpu_threads_for(None) == devices.DEFAULT_CPU_THREADS == 1
    assert devices.cpu_threads_for(2) == 2  # --sdopt-cpu-threads wins


THREADS = """
import torch

def test_threads(sdopt):
    default = torch.get_num_threads()
    seen = []
    original = torch.nn.Conv2d.forward
    torch.nn.Conv2d.forward = lambda self, x: seen.append(torch.get_num_threads()) or original(self, x)
    try:
        result = sdopt.run("fp32")
    finally:
        torch.nn.Conv2d.forward = original
    assert set(seen) == {1}
    assert torch.get_num_threads() == default
    assert result.env["cpu_threads"] == "1"
    assert len(result.reference_s) == len(result.step_times_s) > 0  # the machine timed beside each measured call
    sdopt.check(result, min_ssim=None, max_its_drop="10%")
"""


def test_cpu_threads_apply_to_the_whole_run_and_a_speed_stored_with_others_is_not_compared(run_sdopt, pytester):
    run_sdopt(THREADS, "--sdopt-cpu-threads", "1", "--sdopt-update-baselines").assert_outcomes(passed=1)
    stored = json.loads(next(pytester.path.glob("baselines/tiny/*/fp32.json")).read_text())["metrics"]
    assert len(stored) == 1 and "thread" not in next(iter(stored))  # one entry per device, whatever the threads
    entry = next(iter(stored.values()))
    assert entry["cpu_threads"] == 1 and entry["env"]["cpu_threads"] == "1"
    assert entry["machine_relative_its"] > 0 and entry["machine_reference_s"] > 0
    assert entry["machine_reference"] == REFERENCE_NAME
    # Checked with 2 threads: the speed stored for one is not compared, and says so; memory still is.
    two = THREADS.replace("== {1}", "== {2}").replace('["cpu_threads"] == "1"', '["cpu_threads"] == "2"')
    result = run_sdopt(two, "--sdopt-cpu-threads", "2", "--sdopt-max-memory-growth", "900%", "--sdopt-json", "out.json")
    result.assert_outcomes(passed=1)
    gates = json.loads((pytester.path / "out.json").read_text())["runs"][0]["gates"]
    its_drop = next(g for g in gates if g["gate"] == "max_its_drop")
    assert its_drop["status"] == "n/a"
    assert its_drop["detail"].startswith("stored with 1 thread, this run used 2 threads: speeds measured with other "
                                         "thread counts do not compare (record again with --sdopt-cpu-threads 2")
    assert [g["status"] for g in gates if g["gate"] == "max_memory_growth"] == ["pass"]


def test_a_default_recording_stops_once_its_figure_has_an_interval_or_at_its_budget():
    from pytest_sdopt.measure.settling import RECORDING_SETTLE_S, settle_recording

    clock = FakeClock([5.0])
    calls = []
    settled = settle_recording(lambda: calls.append(clock.measure_once()), 0.0, lambda: len(calls) >= 5, clock=clock)
    assert settled.calls == 5 and settled.reason == "recording"
    assert settle_recording(clock.measure_once, 0.0, lambda: True, clock=clock) == Settled()  # already has one
    clock.now = 0.0
    never = settle_recording(clock.measure_once, 0.0, lambda: False, clock=clock)
    assert never.calls == RECORDING_SETTLE_S and clock.now == RECORDING_SETTLE_S  # the budget (1 s a call), then it stops
