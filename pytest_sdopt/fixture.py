"""The `sdopt` fixture's object: seeded pipelines, runs, checks and baselines for any stack.

Every public method turns sdopt's own errors into test outcomes a user can act on: bad input
fails the test with one paragraph and no traceback; a stack this machine cannot run skips
with the precise reason (or fails under --sdopt-strict); a check fails once, listing every
gate.
"""

from __future__ import annotations

import gc
import sys
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator

import pytest

from pytest_sdopt.baselines import Baseline, BaselineError, fingerprint
from pytest_sdopt.checking import CheckContext, CheckedRun, check_run, update_command
from pytest_sdopt.devices import cpu_threads_for, intra_op_threads, resolve_device, xdist_worker
from pytest_sdopt.errors import (OutOfMemoryWhile, RunOutOfMemory, SdoptUsageError, SdoptWarning, StackUnsupported,
                                 first_line, is_out_of_memory)
from pytest_sdopt.isolation import freeze_what_lives_on, rng_states_kept
from pytest_sdopt.memory import high_water_mark, resident_bytes, restart_high_water_marks, return_freed_memory_to_the_os
from pytest_sdopt.models import ModelSource
from pytest_sdopt.optimizations import Stack, StackApplyError, parse_stack
from pytest_sdopt.scenario import Measurement, Scenario
from pytest_sdopt.session import SdoptSession
from pytest_sdopt.settings import (GATE_KEYWORDS, SCENARIO_KEYS, keyword_overrides, marker_overrides, resolve_gates,
                                   resolve_run)
from pytest_sdopt.similarity import artifact_folder
from pytest_sdopt.speed import CHECK_SETTLE_S, SpeedFigure, Verdict, judge_speed, settle, settle_recording
from pytest_sdopt.summary import RunRecord


@dataclass(frozen=True)
class PlannedRun:
    """Everything a run needs, resolved and checked before any model is loaded."""

    stack: Stack
    scenario: Scenario
    measurement: Measurement
    source: ModelSource
    device: Any


class Sdopt:
    """What a test gets as `sdopt`. See the README's fixture reference."""

    def __init__(self, session: SdoptSession, node: pytest.Item, in_matrix: bool = False, request: Any = None):
        self._session = session
        self._node = node
        self._request = request  # the fixture request, to fetch pytest-benchmark's fixture under --sdopt-benchmark
        self._in_matrix = in_matrix
        self._order = _collection_index(node)
        self._runs_of: dict[str, int] = {}  # stack -> runs of it so far in this test (run identity)
        self._run_of_result: dict[int, int] = {}  # id(RunResult) -> its run number, for its artifacts
        self.results: list[Any] = []  # RunResults of this test, in order
        self._checked: list[Any] = []  # the RunResults sdopt.check() has seen
        self._handed_out: list[weakref.ref] = []  # what sdopt.pipeline() returned, to release at close

    # -- public API ---------------------------------------------------------------------

    def pipeline(self, stack: str = "fp32", **overrides: Any) -> Any:
        """A fresh pipeline with `stack` applied, on the run's device (keywords: model, device)."""
        with self._outcomes(stack):
            plan = self.plan(stack, overrides, "sdopt.pipeline")
            out_of_memory = None
            try:
                with rng_states_kept(plan.device):
                    pipe = self._build(plan)
            except OutOfMemoryWhile as exc:  # text only: what it held is freed below
                out_of_memory = exc.phase, exc.error
            if out_of_memory is not None:
                release_memory(full=True)
                raise RunOutOfMemory(out_of_memory_message(plan, {}, out_of_memory[1], out_of_memory[0]))
            self._handed_out += watch(pipe)
            return pipe

    def run(self, stack: str = "fp32", **overrides: Any) -> Any:
        """Warm-up then measured runs of `stack` on a fresh pipeline; returns a RunResult."""
        with self._outcomes(stack):
            result = self._run(self.plan(stack, overrides, "sdopt.run"))
        self.results.append(result)
        return result

    def check(self, result: Any, **gates: Any) -> CheckedRun:
        """Apply every gate that is set (keyword > marker > command line > ini > default) to `result`.

        Fails the test once, listing each gate with its measured value, its limit and the images
        a failed comparison left behind. Returns the CheckedRun when every gate held.
        """
        from pytest_sdopt.runner import RunResult

        with self._outcomes(getattr(result, "stack", "?")):
            if not isinstance(result, RunResult):
                raise SdoptUsageError(f"sdopt.check() takes the RunResult that sdopt.run() returned, not "
                                      f"{type(result).__name__}.")
            keywords = keyword_overrides(gates, "sdopt.check", GATE_KEYWORDS)
            marker = marker_overrides(self._node.iter_markers("sdopt"))
            stack = parse_stack(result.stack)
            limits = resolve_gates(self._session.settings, marker, keywords, stack.default_min_ssim,
                                   result.device.split(":")[0], stack.default_min_self_ssim)
            checked = check_run(result, limits, self._check_context(result))
        self._checked.append(result)
        self._session.record_check(checked)
        self._properties(result.stack, {
            "SSIM": None if checked.ssim is None else f"{checked.ssim:.4f}",
            "verdict": verdict_text(checked)})
        if checked.failed:
            pytest.fail(checked.failure_message(), pytrace=False)
        if checked.inconclusive:  # does not fail the test (--sdopt-strict makes it), but is never silent
            warnings.warn(SdoptWarning(checked.failure_message()), stacklevel=2)
        return checked

    def baseline(self, stack: str = "fp32", **overrides: Any) -> Baseline:
        """The stored image and metrics of `stack` in this test's scenario (None where nothing is stored)."""
        with self._outcomes(stack):
            plan = self.plan(stack, overrides, "sdopt.baseline", runnable_here=False)
            return self._session.store.baseline(plan.scenario, plan.stack.name, self._environment(plan))

    def plan(self, stack: str | Stack, overrides: dict[str, Any], where: str = "sdopt.run",
             runnable_here: bool = True) -> PlannedRun:
        """Parse and layer the settings (keyword > marker > command line > ini > default).

        Raises SdoptUsageError for bad input and StackUnsupported when the stack cannot run here
        (unless `runnable_here` is False: reading a baseline needs no GPU).
        """
        parsed = parse_stack(stack)
        marker = marker_overrides(self._node.iter_markers("sdopt"))
        scenario, measurement = resolve_run(self._session.settings, marker, keyword_overrides(overrides, where))
        source = self._session.model(scenario.model)
        device = resolve_device(scenario.device, xdist_worker(), self._session.settings["share-gpus"])
        scenario = source.complete(replace(scenario, device=str(device)))
        unmet = parsed.unmet_requirement(device.type)
        if unmet is not None and runnable_here:
            raise unmet
        return PlannedRun(parsed, scenario, measurement, source, device)

    def close(self) -> None:
        release_memory(self._handed_out)
        self._warn_of_unapplied_gates()

    def _warn_of_unapplied_gates(self) -> None:
        """Gates on a marker only act through sdopt.check(): a test that never calls it must hear so."""
        unchecked = [result.stack for result in self.results if all(result is not c for c in self._checked)]
        if not unchecked:
            return
        try:
            marker = marker_overrides(self._node.iter_markers("sdopt"))
        except SdoptUsageError:
            return  # already reported by the run itself
        gates = [name for name in GATE_KEYWORDS if name in marker]
        if gates:
            warnings.warn(SdoptWarning(
                f"@pytest.mark.sdopt sets {', '.join(gates)}, but the run(s) of {', '.join(unchecked)} were never "
                f"checked: call sdopt.check(result) to apply the gates."), stacklevel=2)

    # -- internals ----------------------------------------------------------------------

    def _environment(self, plan: PlannedRun) -> dict[str, Any]:
        """The versions and device the run is keyed by, and a CPU run's thread count (kept with every figure)."""
        env = self._session.environment(plan.device)
        if plan.device.type == "cpu":
            import torch

            env["cpu_threads"] = str(torch.get_num_threads())  # inside intra_op_threads: what the run uses
        return env

    def _run(self, plan: PlannedRun) -> Any:
        # The user's random states as they were: the run seeds the global generators for its own draws.
        with rng_states_kept(plan.device), intra_op_threads(plan.device, cpu_threads_for(plan.measurement.cpu_threads)):
            return self._measure(plan)

    def _measure(self, plan: PlannedRun) -> Any:
        from pytest_sdopt.runner import Runner, drive

        self._session.prime(plan.source, plan.device)  # one-time costs must not count as the first run's memory
        release_memory()  # what an earlier run left must not count in this one's peaks
        resident = resident_bytes()
        restart_high_water_marks(plan.device)
        pipe = runner = None
        watched: list[weakref.ref] = []
        out_of_memory = None  # (phase, torch's text): only text is kept, the exception's frames hold the tensors
        try:
            pipe = self._build(plan)
            watched = watch(pipe)
            runner = Runner(pipe, plan.stack, plan.scenario, plan.device, self._environment(plan), resident)
            benchmark = self._unused_benchmark()
            if benchmark is None:
                drive(runner, plan.measurement)
                self._settle(runner, plan)
                result = runner.result()
            else:
                result = feed_benchmark(benchmark, runner, plan)
        except OutOfMemoryWhile as exc:  # loading, placing or applying
            out_of_memory = exc.phase, exc.error
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            out_of_memory = "measuring", first_line(exc)
        finally:
            peaks = dict(runner.peaks) if runner is not None else {}
            del pipe, runner
            release_memory(watched, full=out_of_memory is not None)  # a failed load leaves no watched pipeline
        if out_of_memory is not None:
            phase, error = out_of_memory
            self._session.record(RunRecord(self._node.nodeid, self._node.name, plan.stack.name,
                                           in_matrix=self._in_matrix, order=self._order,
                                           error=f"out of memory while {phase} ({error})",
                                           run=self._next_run(plan.stack.name)))
            raise RunOutOfMemory(out_of_memory_message(plan, peaks, error, phase))
        run = self._next_run(result.stack)
        self._run_of_result[id(result)] = run
        self._session.record(RunRecord(self._node.nodeid, self._node.name, result.stack,
                                       reference=self._session.settings["reference"], result=result,
                                       in_matrix=self._in_matrix, order=self._order, run=run))
        self._properties(result.stack, {"it/s": f"{result.its:.3f}", "peak VRAM bytes": result.peak_vram_bytes,
                                        "peak host bytes": result.peak_host_bytes})
        return result

    def _settle(self, runner: Any, plan: PlannedRun) -> None:
        """Keep measuring while the speed figure is not yet trustworthy (see speed.py).

        A check, when this device has stored metrics and max_its_drop (as the marker, command line or
        ini set it) does not surely pass: re-measure until it does, or the budget ends (--sdopt-settle,
        by default CHECK_SETTLE_S). A recording (--sdopt-update-baselines): with --sdopt-settle given,
        for twice the budget; by default, where max_its_drop is on, until the figure has an interval
        of its own (speed.settle_recording).
        """
        budget = plan.measurement.settle_s
        if runner.measuring_since is None:
            return
        good_enough = None
        if self._session.settings["update-baselines"] and budget is None:
            if self._its_drop_limit(plan) is not None:
                runner.settled = settle_recording(lambda: runner.call(measured=True), runner.measuring_since,
                                                  lambda: runner.speed().has_interval)
            return
        if not self._session.settings["update-baselines"]:
            budget = CHECK_SETTLE_S if budget is None else budget
            good_enough = self._surely_within_its_drop(plan, runner) if budget > 0 else None
            if good_enough is None:
                return
        if not budget:
            return
        runner.settled = settle(lambda: runner.call(measured=True), budget, runner.measuring_since, good_enough)

    def _its_drop_limit(self, plan: PlannedRun) -> float | None:
        """max_its_drop as the marker, command line or ini set it (None: off, or a bad marker that
        sdopt.check() reports); a keyword given only to sdopt.check() is not known while the run measures."""
        try:
            marker = marker_overrides(self._node.iter_markers("sdopt"))
        except SdoptUsageError:
            return None
        return resolve_gates(self._session.settings, marker, {}, plan.stack.default_min_ssim,
                             plan.device.type).max_its_drop

    def _surely_within_its_drop(self, plan: PlannedRun, runner: Any) -> Any:
        """A test of whether max_its_drop surely passes on what `runner` has measured, against this
        device's stored figure (the comparison the gate makes); None when the gate cannot apply."""
        try:
            stored = self._session.store.read_metrics(plan.scenario, plan.stack.name).get(fingerprint(runner.env))
        except (SdoptUsageError, BaselineError):
            return None  # sdopt.check() reports these
        limit = self._its_drop_limit(plan)
        if limit is None or not stored:
            return None
        before = SpeedFigure.stored(stored)
        threads = runner.env.get("cpu_threads")
        if before.cpu_threads and threads and int(threads) != before.cpu_threads:
            return None  # the gate is not applicable: nothing to settle
        return lambda: judge_speed(runner.speed(), before, limit).verdict is Verdict.PASS

    def _properties(self, stack: str, values: dict[str, Any]) -> None:
        """junitxml <property> entries (record_property's storage), so CI systems show the figures."""
        for name, value in values.items():
            self._node.user_properties.append((f"sdopt {stack} {name}", "n/a" if value is None else str(value)))

    def _unused_benchmark(self) -> Any:
        """The test's pytest-benchmark fixture, if it requested one (or --sdopt-benchmark asks for it)
        and nothing has used it yet."""
        funcargs = getattr(self._node, "funcargs", {})
        benchmark = funcargs.get("benchmark")
        if benchmark is None and self._session.settings["benchmark"] and self._request is not None:
            try:
                benchmark = self._request.getfixturevalue("benchmark")
            except pytest.FixtureLookupError:
                raise SdoptUsageError("--sdopt-benchmark needs pytest-benchmark, which is not installed "
                                      "(pip install pytest-benchmark).") from None
        if benchmark is None or getattr(benchmark, "disabled", True) or getattr(benchmark, "_mode", None):
            return None
        return benchmark

    def _check_context(self, result: Any) -> CheckContext:
        config = self._node.config
        select = None if self._in_matrix else self._node.nodeid  # a matrix test has no selectable path
        return CheckContext(
            store=self._session.store,
            update=self._session.settings["update-baselines"],
            artifact_folder=artifact_folder(self._session.results_dir, self._node.nodeid, result.stack,
                                            self._run_of_result.get(id(result), 1)),
            update_command=update_command(config.invocation_params.args, config.args, select),
            record=self._record,
            record_reference=lambda reference, only_missing: self._record_reference(reference, result.scenario,
                                                                                    only_missing),
            strict=self._session.settings["strict"],
        )

    def _record_reference(self, reference: str, scenario: Scenario, only_missing: bool) -> None:
        """Under --sdopt-update-baselines: run the reference stack on the same scenario and record it,
        once per session, so a test of fp16 alone still leaves the baseline it is compared with.
        `only_missing`: write only what is absent (its image, or this device's metrics)."""
        if (reference, scenario) in self._session.references_recorded:
            return
        same_scenario = {name: getattr(scenario, name) for name in SCENARIO_KEYS}
        result = self._run(self.plan(reference, same_scenario, "the reference run"))
        self._session.records[-1].note = "recorded as the reference's baseline"
        store = self._session.store
        image = not only_missing or store.read_image(scenario, reference) is None
        metrics = not only_missing or fingerprint(result.env) not in store.read_metrics(scenario, reference)
        stack = parse_stack(reference)
        self._record(result, image=image, metrics=metrics, tolerance=stack.default_min_self_ssim or stack.default_min_ssim)

    def _next_run(self, stack: str) -> int:
        """The number of this run of `stack` in this test (1 for the first): two runs of one stack in
        one test (other seeds, sizes) keep their own images, artifacts and rows in `sdopt compare`."""
        self._runs_of[stack] = self._runs_of.get(stack, 0) + 1
        return self._runs_of[stack]

    def _record(self, result: Any, image: bool = True, metrics: bool = True, tolerance: float | None = None) -> None:
        if image or metrics:
            self._session.writes.extend(self._session.store.record(result, image, metrics, tolerance))
        self._session.references_recorded.add((result.stack, result.scenario))

    def _build(self, plan: PlannedRun) -> Any:
        """The loaded pipeline with the stack applied; OutOfMemoryWhile names the phase that ran out."""
        out_of_memory = None
        try:
            pipe = plan.source.load()  # on the CPU: the stack places it (offloads keep it there)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            out_of_memory = first_line(exc)
        if out_of_memory is not None:  # raised outside the handler: torch's exception, and what it holds, is gone
            raise OutOfMemoryWhile("loading the model", out_of_memory)
        plan.stack.apply(pipe, plan.device)
        return pipe

    @contextmanager
    def _outcomes(self, stack: object) -> Iterator[None]:
        # The failure is raised `from None`: it would otherwise carry the error as its context (even
        # after the except block, since a context manager's exit runs while the error is in flight),
        # and pytest would print it twice ("During handling of the above exception, ...").
        failure = skipped = None
        try:
            yield
        except (SdoptUsageError, StackApplyError, RunOutOfMemory) as exc:
            failure = f"sdopt: {exc}"
        except StackUnsupported as exc:
            skipped = f"sdopt: stack {str(stack)!r} cannot run here: {exc}"
            if self._session.settings["strict"]:
                failure = f"{skipped} (--sdopt-strict makes this a failure)"
            else:
                self._session.record(RunRecord(self._node.nodeid, self._node.name, str(stack), skipped=str(exc),
                                               in_matrix=self._in_matrix, order=self._order,
                                               run=self._next_run(str(stack))))
        if failure is not None:
            raise pytest.fail.Exception(failure, pytrace=False) from None
        if skipped is not None:
            skip_at_test(skipped)


def verdict_text(checked: CheckedRun) -> str:
    """The check's verdict in one line, for junitxml properties: pass, FAIL: gates, or pass with the
    inconclusive gates named."""
    if checked.failed:
        return "FAIL: " + ", ".join(dict.fromkeys(o.gate for o in checked.failed))
    if checked.inconclusive:
        return "pass (inconclusive: " + ", ".join(dict.fromkeys(o.gate for o in checked.inconclusive)) + ")"
    return "pass"


def feed_benchmark(benchmark: Any, runner: Any, plan: PlannedRun) -> Any:
    """Let pytest-benchmark drive the same warm-ups and measured calls, so its stats, storage and
    --benchmark-compare-fail see what sdopt measured (one whole pipeline call per round)."""
    calls = iter(range(plan.measurement.warmup + plan.measurement.repeats))
    benchmark.group = benchmark.group or f"sdopt {plan.scenario.model} {plan.scenario.size_text}"
    benchmark.pedantic(lambda: runner.call(measured=next(calls) >= plan.measurement.warmup),
                       rounds=plan.measurement.repeats, warmup_rounds=plan.measurement.warmup, iterations=1)
    result = runner.result()
    benchmark.extra_info.update({"sdopt_stack": result.stack, "sdopt_its": result.its,
                                 "sdopt_peak_vram_bytes": result.peak_vram_bytes,
                                 "sdopt_peak_host_bytes": result.peak_host_bytes, "sdopt_device": result.device})
    return result


def out_of_memory_message(plan: PlannedRun, peaks: dict[str, Any], error: str, phase: str = "measuring") -> str:
    """What ran out, in which phase, how far it got and against which ceiling; memory is already freed.

    Where no measured call tracked a peak (a warm-up, or before any call), the figure is the
    high-water mark since the run began (memory.restart_high_water_marks)."""
    from pytest_sdopt.parsing import format_bytes

    device = plan.device
    if device.type == "cuda":
        import torch

        # a warm-up call is not tracked: then the allocator's own high-water mark is the figure
        peak = peaks.get("peak_vram_reserved_bytes") or torch.cuda.max_memory_reserved(device)
        ceiling = torch.cuda.get_device_properties(device).total_memory
        what = f"peak VRAM reserved {format_bytes(peak)} of {format_bytes(ceiling)} on {device}"
    else:
        import psutil

        peak = peaks.get("peak_host_bytes") or high_water_mark() or psutil.Process().memory_info().rss
        ceiling = psutil.virtual_memory().total
        what = f"peak host memory {format_bytes(peak)} of {format_bytes(ceiling)}"
    return (f"stack {plan.stack.name!r} ran out of memory while {phase} ({what}); torch said: {error}. Its memory was "
            f"freed and the next tests run normally. Try a smaller --sdopt-size, or a stack that saves memory "
            f"(fp16, vae_tiling, an offload).")


def _collection_index(node: Any) -> int:
    """The test's place in the session's collection: merged results keep the order tests ran in."""
    try:
        return node.session.items.index(node)
    except (AttributeError, ValueError):
        return len(getattr(node.session, "items", ()))


def skip_at_test(message: str) -> None:
    """Skip, reported at the test's own location (as a skip marker is), not inside this plugin."""
    try:
        raise pytest.skip.Exception(message, _use_item_location=True)
    except TypeError:  # a pytest without that keyword: the plain skip still carries the reason
        pytest.skip(message)


def watch(pipe: Any) -> list[weakref.ref]:
    """Weak references to a pipeline and its components, to tell whether releasing it worked."""
    parts = [pipe, *getattr(pipe, "components", {}).values()]
    refs = []
    for part in parts:
        try:
            refs.append(weakref.ref(part))
        except TypeError:  # None, strings: nothing to free
            pass
    return refs


def release_memory(watched: list[weakref.ref] | None = None, full: bool = False) -> None:
    """Drop what a finished run held, so the next test's figures start clean.

    A full gc.collect() walks every object torch and diffusers created (~0.2 s here, a third of
    a tiny matrix's harness time, benchmarks/matrix_floor.py), and reference counting alone frees
    most pipelines. So the full collection runs only when a watched pipeline is still alive
    (a reference cycle: group offload's hooks, layerwise casting), or when `full` asks (after an
    out-of-memory error, which may leave a half-built pipeline nobody watched); otherwise the
    young generations are enough for what the test itself left.
    """
    if full or any(ref() is not None for ref in watched or ()):
        gc.collect()
    else:
        gc.collect(1)
    freeze_what_lives_on(watched)
    torch = sys.modules.get("torch")  # never import torch just to clean up
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return_freed_memory_to_the_os()

