"""One test's runs, end to end: plan -> load -> apply -> measured run (settled) -> baselines -> check.

`Orchestrator` is the orchestrator behind the `sdopt` fixture, with no pytest in it: the fixture
(fixture.py) hands it the test's node id, markers and command line, and turns what it raises
into test outcomes. Data flows one way: the settings are layered into a plan; the run measures
(settling on a policy given from here, so measuring never reads the checks); under
--sdopt-update-baselines the run, and the reference when a check needs it, are recorded
*before* checking; then checking is a function of the run, what was stored and the limits.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from pytest_sdopt.checks.baselines import Baseline, BaselineError, fingerprint, model_label
from pytest_sdopt.checks.checking import CheckedRun, CheckInputs, check_run
from pytest_sdopt.checks.promises import MemoryRatio, PromiseInputs, bound_for
from pytest_sdopt.checks.similarity import artifact_folder
from pytest_sdopt.checks.speed import Verdict, judge_speed
from pytest_sdopt.config.defaults import TEXT_TO_IMAGE
from pytest_sdopt.config.scenario import GateLimits, Measurement, Scenario
from pytest_sdopt.config.call_args import ImageArgument, freeze, merged, unaccepted
from pytest_sdopt.config.settings import (GATE_KEYWORDS, MARKER_KEYWORDS, RUN_KEYWORDS, SCENARIO_KEYS, keyword_overrides,
                                          marker_overrides, resolve_gates, resolve_run)
from pytest_sdopt.core.errors import (OutOfMemoryWhile, PipelineCallFailed, RunOutOfMemory, SdoptUsageError, first_line,
                                     is_out_of_memory, where_raised)
from pytest_sdopt.harness.session import SdoptSession
from pytest_sdopt.measure.cleanup import release_memory, watch
from pytest_sdopt.measure.devices import cpu_threads_for, intra_op_threads, resolve_device, xdist_worker
from pytest_sdopt.measure.figures import SpeedFigure
from pytest_sdopt.measure.interleaved import interleave
from pytest_sdopt.measure.isolation import rng_states_kept
from pytest_sdopt.measure.memory import high_water_mark, resident_bytes, restart_high_water_marks
from pytest_sdopt.measure.settling import CHECK_SETTLE_S, settle, settle_recording
from pytest_sdopt.models.sources import ModelSource
from pytest_sdopt.models.tasks import defaults_for, for_task, unsupported
from pytest_sdopt.results.summary import RunRecord
from pytest_sdopt.stacks import Stack, parse_stack
from pytest_sdopt.stacks.promises import MEMORY, METRICS, SPEED, StackPromise, stack_promise

# Without --sdopt-settle, a promise check measures interleaved pairs until its verdict is decided,
# for at most this long (and at least MIN_PAIRS pairs). On the shared 2-core machine with one core
# busy, adjacent calls of `tiny` disagreed by up to ±25% (pairs' robust spread ~20%), so telling a
# 20% slowdown (0.82x) from a 0.90x promise took ~30 pairs, ~35 s; at 20 s such checks stayed
# inconclusive (benchmarks/promises.py). A check that is decided early stops early.
PROMISE_SETTLE_S = 60.0
DEFAULT_TASK_SIZE = (512, 512)  # an init image's size for a model that names no default size


def stack_name(text: str) -> str:
    """A stack's canonical spelling, for the settings that name stacks (reference=...)."""
    return parse_stack(text).name


@dataclass(frozen=True)
class PlannedRun:
    """Everything a run needs, resolved and checked before any model is loaded."""

    stack: Stack
    scenario: Scenario
    measurement: Measurement
    source: ModelSource
    device: Any


@dataclass(frozen=True)
class NodeIdentity:
    """What the orchestrator knows of the test it runs for (the fixture gives it)."""

    nodeid: str
    name: str
    markers: Callable[[], Iterable[Any]]  # the test's @pytest.mark.sdopt markers, closest first
    update_command: str  # the command that records this test's missing baselines
    in_matrix: bool = False
    order: int = 0  # its place in the session's collection


class Orchestrator:
    """One test's runs and checks (the `sdopt` fixture's work without pytest)."""

    def __init__(self, session: SdoptSession, test: NodeIdentity):
        self.session = session
        self.test = test
        self.results: list[Any] = []  # RunResults of this test, in order
        self._runs_of: dict[str, int] = {}  # stack -> runs of it so far in this test (run identity)
        self._run_of_result: dict[int, int] = {}  # id(RunResult) -> its run number, for its artifacts

    # -- planning ------------------------------------------------------------------------

    def marker(self) -> dict[str, Any]:
        """The marker's sdopt settings (its pipeline call arguments are the plan's: see `plan`)."""
        return marker_overrides(self.test.markers(), stack_name, call_args={})

    def plan(self, stack: str | Stack, overrides: dict[str, Any], where: str = "sdopt.run",
             runnable_here: bool = True) -> PlannedRun:
        """Parse and layer the settings (keyword > marker > command line > ini > default).

        Raises SdoptUsageError for bad input and StackUnsupported when the stack cannot run here
        (unless `runnable_here` is False: reading a baseline needs no GPU).
        """
        parsed = parse_stack(stack)
        marker_calls: dict[str, Any] = {}
        marker = marker_overrides(self.test.markers(), stack_name, call_args=marker_calls)
        keyword_calls = {key: value for key, value in overrides.items() if key not in RUN_KEYWORDS}
        gates = sorted(set(keyword_calls) & set(GATE_KEYWORDS))
        if gates:
            raise SdoptUsageError(f"{where} got {', '.join(gates)}: gates are checked, not run; pass them to "
                                  f"sdopt.check(result, {gates[0]}=...).")
        settings = {key: value for key, value in overrides.items() if key in RUN_KEYWORDS}
        scenario, measurement = resolve_run(self.session.settings, marker,
                                            keyword_overrides(settings, where, stack_name=stack_name))
        source = self.session.model(scenario.model)
        refused = unsupported(scenario.task, source.family.name, model_label(scenario.model))
        if refused is not None:
            raise refused
        from_marker, from_keywords = freeze(marker_calls, "@pytest.mark.sdopt"), freeze(keyword_calls, where)
        if from_marker or from_keywords:
            pipeline, accepted = source.call_parameters(scenario.task)
            for given, said_in, settings in ((from_marker, "@pytest.mark.sdopt", MARKER_KEYWORDS),
                                             (from_keywords, where, RUN_KEYWORDS)):
                refused = unaccepted(given, accepted, pipeline, settings, said_in)
                if refused is not None:
                    raise refused
        call_args = merged(from_marker, from_keywords)
        device = resolve_device(scenario.device, xdist_worker(), self.session.settings.share_gpus)
        scenario = self._with_task(source.complete(replace(scenario, device=str(device), call_args=call_args)), source)
        unmet = parsed.unmet_requirement(device.type) or parsed.unmet_by_model(model_label(scenario.model), source.denoiser)
        if unmet is not None and runnable_here:
            raise unmet
        return PlannedRun(parsed, scenario, measurement, source, device)

    def _with_task(self, scenario: Scenario, source: ModelSource) -> Scenario:
        """An img2img or inpainting scenario with the init image and mask it needs (drawn where the run
        gave none) and the size it draws at: the init image's."""
        if scenario.task == TEXT_TO_IMAGE:
            return scenario
        given = dict(scenario.call_args)
        drawn = defaults_for(scenario.task, scenario.size or DEFAULT_TASK_SIZE, set(given))
        call_args = merged(scenario.call_args, freeze(drawn, "the task's defaults"))
        size = dict(call_args)["image"].size
        strength = dict(call_args).get("strength", source.call_default(scenario.task, "strength"))
        if isinstance(strength, (int, float)) and scenario.steps and int(scenario.steps * strength) < 1:
            raise SdoptUsageError(
                f"an {scenario.task} run of {scenario.steps} steps at strength {strength:g} denoises "
                f"int({scenario.steps} x {strength:g}) = 0 steps, so it would draw nothing; raise steps or strength.")
        return replace(scenario, call_args=call_args, size=size)

    def limits(self, result: Any, gate_keywords: dict[str, Any]) -> GateLimits:
        keywords = keyword_overrides(gate_keywords, "sdopt.check", GATE_KEYWORDS, stack_name=stack_name)
        stack = parse_stack(result.stack)
        return resolve_gates(self.session.settings, self.marker(), keywords, stack.default_min_ssim,
                             result.device.split(":")[0], stack.default_min_self_ssim)

    def environment(self, plan: PlannedRun) -> dict[str, Any]:
        """The versions and device the run is keyed by, and a CPU run's thread count (kept with every figure)."""
        env = self.session.environment(plan.device)
        if plan.device.type == "cpu":
            import torch

            env["cpu_threads"] = str(torch.get_num_threads())  # inside intra_op_threads: what the run uses
        return env

    # -- pipelines and runs --------------------------------------------------------------

    def pipeline(self, plan: PlannedRun) -> tuple[Any, list[weakref.ref]]:
        """A fresh pipeline with the stack applied, and weak references to release it by."""
        out_of_memory = None
        try:
            with rng_states_kept(plan.device):
                pipe = self.build(plan)
        except OutOfMemoryWhile as exc:  # text only: what it held is freed below
            out_of_memory = exc.phase, exc.error
        if out_of_memory is not None:
            release_memory(full=True)
            raise RunOutOfMemory(out_of_memory_message(plan, {}, out_of_memory[1], out_of_memory[0]))
        return pipe, watch(pipe)

    def run(self, plan: PlannedRun, benchmark: Any = None, note: str | None = None) -> Any:
        """Warm-up then measured runs of the plan's stack on a fresh pipeline; a RunResult.

        `benchmark`: pytest-benchmark's fixture, to drive the same calls; `note`: why a run was made
        that no test checks (the reference, recorded)."""
        result = self._run(plan, benchmark, note)
        if note is None:  # the test's own runs; a reference recorded for it is no run it must check
            self.results.append(result)
        return result

    def _run(self, plan: PlannedRun, benchmark: Any, note: str | None) -> Any:
        # The user's random states as they were: the run seeds the global generators for its own draws.
        with rng_states_kept(plan.device), intra_op_threads(plan.device, cpu_threads_for(plan.measurement.cpu_threads)):
            return self._measure(plan, benchmark, note)

    def _measure(self, plan: PlannedRun, benchmark: Any, note: str | None) -> Any:
        from pytest_sdopt.measure.runner import Runner, drive

        self.session.prime(plan.source, plan.device)  # one-time costs must not count as the first run's memory
        release_memory()  # what an earlier run left must not count in this one's peaks
        resident = resident_bytes()
        restart_high_water_marks(plan.device)
        pipe = runner = None
        watched: list[weakref.ref] = []
        out_of_memory = None  # (phase, torch's text): only text is kept, the exception's frames hold the tensors
        call_failed = None  # the same for any other error of the pipeline's own call
        try:
            pipe = self.build(plan)
            watched = watch(pipe)
            runner = Runner(pipe, plan.stack, plan.scenario, plan.device, self.environment(plan), resident)
            if benchmark is None:
                drive(runner, plan.measurement)
                self._settle(runner, plan)
                result = runner.result()
            else:
                result = feed_benchmark(benchmark, runner, plan)
        except OutOfMemoryWhile as exc:  # loading, placing or applying
            out_of_memory = exc.phase, exc.error
        except Exception as exc:
            if is_out_of_memory(exc):
                out_of_memory = "measuring", first_line(exc)
            elif runner is not None and not isinstance(exc, SdoptUsageError):  # the call itself raised
                call_failed = f"{type(exc).__name__}: {first_line(exc)}", where_raised(exc)
            else:
                raise
        finally:
            peaks = dict(runner.peaks) if runner is not None else {}
            del pipe, runner
            release_memory(watched, full=out_of_memory is not None or call_failed is not None)
        if call_failed is not None:
            error, where = call_failed
            self._record_failed(plan, f"the pipeline's call failed ({error})")
            raise PipelineCallFailed(call_failed_message(plan, error, where, self.environment(plan)))
        if out_of_memory is not None:
            phase, error = out_of_memory
            self._record_failed(plan, f"out of memory while {phase} ({error})")
            raise RunOutOfMemory(out_of_memory_message(plan, peaks, error, phase))
        run = self.next_run(result.stack)
        self._run_of_result[id(result)] = run
        self.session.record(RunRecord(self.test.nodeid, self.test.name, result.stack,
                                      reference=self.session.settings.reference, result=result,
                                      in_matrix=self.test.in_matrix, order=self.test.order, run=run, note=note))
        return result

    def _record_failed(self, plan: PlannedRun, error: str) -> None:
        """A run that ended in an error is a row of its own (table, JSON, HTML), with the error."""
        self.session.record(RunRecord(self.test.nodeid, self.test.name, plan.stack.name,
                                      in_matrix=self.test.in_matrix, order=self.test.order, error=error,
                                      run=self.next_run(plan.stack.name)))

    def _settle(self, runner: Any, plan: PlannedRun) -> None:
        """Keep measuring while the speed figure is not yet trustworthy (measure/settling.py).

        A check, when this device has stored metrics and max_its_drop (as the marker, command line or
        ini set it) does not surely pass: re-measure until it does, or the budget ends (--sdopt-settle,
        by default CHECK_SETTLE_S). A recording (--sdopt-update-baselines): with --sdopt-settle given,
        for twice the budget; by default, where max_its_drop is on, until the figure has an interval
        of its own (settle_recording).
        """
        budget = plan.measurement.settle_s
        if runner.measuring_since is None:
            return
        recording = self.session.settings.update_baselines
        good_enough = None
        if recording and budget is None:
            if self._its_drop_limit(plan) is not None:
                runner.settled = settle_recording(lambda: runner.call(measured=True), runner.measuring_since,
                                                  lambda: runner.speed().has_interval)
            return
        if not recording:
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
            marker = self.marker()
        except SdoptUsageError:
            return None
        return resolve_gates(self.session.settings, marker, {}, plan.stack.default_min_ssim,
                             plan.device.type).max_its_drop

    def _surely_within_its_drop(self, plan: PlannedRun, runner: Any) -> Callable[[], bool] | None:
        """A test of whether max_its_drop surely passes on what `runner` has measured, against this
        device's stored figure (the comparison the gate makes); None when the gate cannot apply."""
        try:
            stored = self.session.store.read_metrics(plan.scenario, plan.stack.name).get(fingerprint(runner.env))
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

    def build(self, plan: PlannedRun) -> Any:
        """The loaded pipeline with the stack applied; OutOfMemoryWhile names the phase that ran out."""
        out_of_memory = None
        try:
            # On the CPU (the stack places it; offloads keep it there), as the task's pipeline.
            pipe = for_task(plan.source.load(), plan.scenario.task, plan.source.family.name)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            out_of_memory = first_line(exc)
        if out_of_memory is not None:  # raised outside the handler: torch's exception, and what it holds, is gone
            raise OutOfMemoryWhile("loading the model", out_of_memory)
        plan.stack.apply(pipe, plan.device)
        return pipe

    def next_run(self, stack: str) -> int:
        """The number of this run of `stack` in this test (1 for the first): two runs of one stack in
        one test (other seeds, sizes) keep their own images, artifacts and rows in `sdopt compare`."""
        self._runs_of[stack] = self._runs_of.get(stack, 0) + 1
        return self._runs_of[stack]

    def record_skip(self, stack: str, reason: str) -> None:
        self.session.record(RunRecord(self.test.nodeid, self.test.name, stack, skipped=reason,
                                      in_matrix=self.test.in_matrix, order=self.test.order, run=self.next_run(stack)))

    # -- baselines and checks ------------------------------------------------------------

    def baseline(self, plan: PlannedRun) -> Baseline:
        return self.session.store.baseline(plan.scenario, plan.stack.name, self.environment(plan))

    def check(self, result: Any, gate_keywords: dict[str, Any]) -> CheckedRun:
        """Record what --sdopt-update-baselines asks for (the reference's run first, when this check
        compares with it and it must be recorded), then check the run against what is stored."""
        limits = self.limits(result, gate_keywords)
        inputs = self._record_baselines(result, limits)
        promised = self._promise_inputs(result, limits) if limits.checks_promises else None
        checked = check_run(result, limits, inputs, promised)
        self.session.record_check(checked)
        return checked

    def _record_baselines(self, result: Any, limits: GateLimits) -> CheckInputs:
        """What was stored before this check (what the gates compare with), after recording what the
        update mode asks: `checked` (the bare flag) records the checked stack and the reference only
        where it is missing, `all` re-records the reference too, `missing` writes only what is absent."""
        store, update = self.session.store, self.session.settings.update_baselines
        scenario, stack = result.scenario, result.stack
        stored_before = store.read_metrics(scenario, stack).get(fingerprint(result.env))
        own_image_before = store.read_image(scenario, stack)
        image_recorded = metrics_recorded = False
        if update:
            # `missing` writes only what is absent; the other modes replace this stack's baseline.
            image_recorded = update != "missing" or own_image_before is None
            metrics_recorded = update != "missing" or stored_before is None
            if image_recorded or metrics_recorded:
                self._record(result, image=image_recorded, metrics=metrics_recorded,
                             tolerance=limits.min_self_ssim or limits.min_ssim)
            if limits.min_ssim is not None and limits.reference != stack:
                # A narrowed update must not rewrite the reference every other stack is compared with:
                # only `all` re-records it; otherwise it is recorded where it is missing.
                if update == "all" or store.read_image(scenario, limits.reference) is None:
                    self._record_reference(limits.reference, scenario, only_missing=update == "missing")
        folder = artifact_folder(self.session.results_dir, self.test.nodeid, result.stack,
                                 self._run_of_result.get(id(result), 1))
        return CheckInputs(store=store, artifact_folder=folder, update_command=self.test.update_command,
                           stored_metrics=stored_before, own_image=own_image_before, image_recorded=image_recorded,
                           metrics_recorded=metrics_recorded, strict=self.session.settings.strict)

    def _record_reference(self, reference: str, scenario: Scenario, only_missing: bool) -> None:
        """Run the reference stack on the same scenario and record it, once per session, so a test of
        fp16 alone still leaves the baseline it is compared with. `only_missing`: write only what is
        absent (its image, or this device's metrics)."""
        if (reference, scenario) in self.session.references_recorded:
            return
        same_scenario = same_as(scenario)
        result = self.run(self.plan(reference, same_scenario, "the reference run"),
                          note="recorded as the reference's baseline")
        store = self.session.store
        image = not only_missing or store.read_image(scenario, reference) is None
        metrics = not only_missing or fingerprint(result.env) not in store.read_metrics(scenario, reference)
        stack = parse_stack(reference)
        self._record(result, image=image, metrics=metrics, tolerance=stack.default_min_self_ssim or stack.default_min_ssim)

    def _record(self, result: Any, image: bool = True, metrics: bool = True, tolerance: float | None = None) -> None:
        if image or metrics:
            self.session.writes.extend(self.session.store.record(result, image, metrics, tolerance))
        self.session.references_recorded.add((result.stack, result.scenario))


    # -- promises: the stack beside the reference, in this session ---------------------------

    def _promise_inputs(self, result: Any, limits: GateLimits) -> PromiseInputs:
        """The bounds the promise gates check (set limits, else the registry's promises under
        --sdopt-promises) and what they compare: the memory of the stack's run and of the
        reference's run of the same scenario (measured once per session, alone, as the stack's
        was), and their speed ratio from interleaved calls of the two pipelines."""
        reference = limits.reference
        if result.stack == reference:
            why = f"{reference} is the reference itself"
            return PromiseInputs(reference, bound_for(SPEED, None, True, StackPromise(SPEED, None, reason=why)),
                                 bound_for(MEMORY, None, True, StackPromise(MEMORY, None, reason=why)))
        same = same_as(result.scenario)
        plan = self.plan(result.stack, same, "the promise check")
        reference_plan = self.plan(reference, same, "the promise check's reference")
        wants_memory = limits.promises or limits.max_memory_ratio is not None
        reference_result = self._reference_result(reference_plan) if wants_memory else None
        with rng_states_kept(plan.device), intra_op_threads(plan.device, cpu_threads_for(plan.measurement.cpu_threads)):
            return self._interleave(result, limits, plan, reference_plan, reference_result)

    def _interleave(self, result: Any, limits: GateLimits, plan: PlannedRun, reference_plan: PlannedRun,
                    reference_result: Any) -> PromiseInputs:
        from pytest_sdopt.measure.runner import Runner

        device_type = plan.device.type
        pipe = reference_pipe = None
        watched: list[weakref.ref] = []
        try:
            pipe, reference_pipe = self.build(plan), self.build(reference_plan)
            watched = watch(pipe) + watch(reference_pipe)
            promises = {metric: stack_promise(plan.stack.optimizations, metric, device_type, plan.scenario, pipe)
                        for metric in METRICS} if limits.promises else {}
            speed = bound_for(SPEED, limits.min_speedup, limits.promises, promises.get(SPEED))
            memory = bound_for(MEMORY, limits.max_memory_ratio, limits.promises, promises.get(MEMORY))
            figure = None
            if speed.bound is not None:
                env = self.environment(plan)
                runner = Runner(pipe, plan.stack, plan.scenario, plan.device, env)
                reference_runner = Runner(reference_pipe, reference_plan.stack, reference_plan.scenario,
                                          reference_plan.device, env)
                for _ in range(max(1, plan.measurement.warmup)):  # first calls carry one-time costs
                    runner.timed_call()
                    reference_runner.timed_call()
                bound = speed.bound
                budget = plan.measurement.settle_s if plan.measurement.settle_s is not None else PROMISE_SETTLE_S
                figure = interleave(runner.timed_call, reference_runner.timed_call,
                                    lambda f: f.low >= bound or f.high < bound, budget)
                del runner, reference_runner
        finally:
            del pipe, reference_pipe
            release_memory(watched)
        ratio = None
        if memory.bound is not None and reference_result is not None:
            field = "peak_vram_bytes" if device_type == "cuda" else "run_host_bytes"
            ratio = MemoryRatio(getattr(result, field), getattr(reference_result, field), device_type)
        return PromiseInputs(limits.reference, speed, memory, figure, ratio)

    def _reference_result(self, plan: PlannedRun) -> Any:
        """The reference's run of this scenario in this session: one the session already made (a
        test or the matrix ran it), else run now, once, and shared by every stack's promise check."""
        key = (plan.stack.name, plan.scenario)
        cached = self.session.promise_references.get(key)
        if cached is not None:
            return cached
        for record in self.session.records:
            if record.result is not None and (record.result.stack, record.result.scenario) == key:
                self.session.promise_references[key] = record.result
                return record.result
        result = self._run(plan, None, note="measured as the reference of the promise gates")
        self.session.promise_references[key] = result
        return result


def same_as(scenario: Scenario) -> dict[str, Any]:
    """The keywords that plan another stack's run of `scenario`: its settings and its call arguments."""
    return {**{name: getattr(scenario, name) for name in SCENARIO_KEYS}, **scenario.call_arguments}


def call_failed_message(plan: PlannedRun, error: str, where: str, env: dict[str, Any]) -> str:
    """One paragraph for a pipeline call that raised: what, where, with which passed-through
    arguments, and the versions (a diffusers / transformers mismatch is the usual cause)."""
    scenario = plan.scenario
    passed = ", ".join(f"{name}={value.text() if isinstance(value, ImageArgument) else repr(value)}"
                       for name, value in scenario.call_args)
    arguments = f" The call passed {passed} through to the pipeline." if passed else ""
    versions = ", ".join(f"{name} {env[name]}" for name in ("torch", "diffusers", "transformers") if env.get(name))
    return (f"stack {plan.stack.name!r}: the pipeline's call failed on model {model_label(scenario.model)!r} "
            f"({scenario.size_text}, {scenario.steps} steps): {error} (raised at {where}).{arguments} "
            f"With {versions}; an error inside diffusers or transformers is most often a version mismatch "
            f"between them.")


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
    from pytest_sdopt.config.parsers import format_bytes

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

