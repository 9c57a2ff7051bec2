"""Run one stack on one scenario: warm-ups, then measured runs with per-step timing.

Measurement rules (DESIGN §4): progress bars off; each denoising step is timed on the
pipeline's step-end callback (after synchronizing the device, or on CUDA by an event recorded on
the stream, which marks the same moment without stalling the queue; see clocks.py); warm-up
runs are dropped; it/s is the median over measured runs. Every call is seeded the same way, so
every run of a stack draws the same image.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterator

from pytest_sdopt.measure.clocks import Marks, marks_for
from pytest_sdopt.measure.machine import ReferenceWorkload
from pytest_sdopt.measure.memory import trackers_for
from pytest_sdopt.stacks import Stack
from pytest_sdopt.config.scenario import Measurement, Scenario
from pytest_sdopt.measure.settling import Settled
from pytest_sdopt.measure.figures import SpeedFigure

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


@dataclass
class RunResult:
    """What one run of a stack measured. Memory fields stay None where they cannot be measured
    (VRAM on a CPU run): a gate then reports "not applicable", never a silent pass."""

    stack: str
    scenario: Scenario
    images: list[Any]  # PIL images of the last measured run
    step_times_s: list[list[float]]  # per measured run, seconds per denoising step
    its: float  # median over measured runs of steps / seconds spent in steps
    total_s: float  # median seconds of one whole pipeline call (encode, denoise, decode)
    device: str
    env: dict[str, Any] = field(default_factory=dict)
    peak_vram_bytes: int | None = None  # CUDA allocator peak, max over measured runs
    peak_vram_reserved_bytes: int | None = None  # CUDA allocator reserved peak
    peak_device_bytes: int | None = None  # the process's device memory through NVML
    peak_host_bytes: int | None = None  # the process's peak RSS during a measured run
    # The host memory the run itself added: the peak above the process's resident size when the
    # run began (before its pipeline was loaded), so it does not depend on which tests ran before.
    run_host_bytes: int | None = None
    warmup_s: list[float] = field(default_factory=list)  # seconds of each unmeasured warm-up call
    call_s: list[float] = field(default_factory=list)  # seconds of each measured call
    settled: Settled = field(default_factory=Settled)  # extra measured calls made by --sdopt-settle
    reference_s: list[float] = field(default_factory=list)  # CPU: the machine's reference workload around each call
    cpu_threads: int | None = None  # torch's intra-op threads during a CPU run

    @cached_property
    def speed(self) -> SpeedFigure:
        """The speed figure every speed verdict reads (measure/figures.py), computed once."""
        return SpeedFigure.measured(self.step_times_s, self.reference_s, self.cpu_threads)

    @property
    def image(self) -> Any:
        return self.images[0]

    @property
    def best_its(self) -> float:
        """The best measured call's steps per second (see measure/figures.py): what max_its_drop compares on CUDA."""
        return self.speed.best_its

    @property
    def machine_relative_its(self) -> float | None:
        """Steps per second relative to the machine's speed (machine.py): what max_its_drop compares on CPU."""
        return self.speed.relative_its


class StepClock:
    """Timestamps of one pipeline call: prompt encoded, then each denoising step's end.

    The first step starts when the last text-encoder forward ends (a forward hook), so a
    step's time holds the UNet, the scheduler and the guidance arithmetic, not the prompt
    encoding. Pipelines without a text encoder fall back to the call's start. The moments are
    taken as `clocks.py` marks (CUDA events on CUDA, which stall nothing) and read as host
    seconds by `stop()`, after the call.
    """

    def __init__(self, device: Any, marks: Marks | None = None):
        self.marks = marks if marks is not None else marks_for(device)
        self.call_start = 0.0
        self.encoded_at: float | None = None
        self.step_ends: list[float] = []
        self._encoded_mark: Any = None
        self._step_marks: list[Any] = []

    def on_step_end(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
        self._step_marks.append(self.marks.mark())
        return callback_kwargs

    def _encoded(self, module: Any, args: Any, output: Any) -> None:
        self._encoded_mark = self.marks.mark()

    @contextmanager
    def watching(self, pipe: Any) -> Iterator["StepClock"]:
        handles = [getattr(pipe, name).register_forward_hook(self._encoded)
                   for name in TEXT_ENCODERS if getattr(pipe, name, None) is not None]
        try:
            self.call_start = self.marks.start()
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def stop(self) -> float:
        """The call's end in host seconds (waiting for the device); the marks become `encoded_at`, `step_ends`."""
        end = self.marks.end()
        if self._encoded_mark is not None:
            self.encoded_at = self.marks.seconds(self._encoded_mark)
        self.step_ends = [self.marks.seconds(mark) for mark in self._step_marks]
        return end

    def step_times(self) -> list[float]:
        start = self.encoded_at if self.encoded_at is not None else self.call_start
        marks = [start, *self.step_ends]
        return [later - earlier for earlier, later in zip(marks, marks[1:])]


def call_kwargs(scenario: Scenario, pipe: Any = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"prompt": scenario.prompt, "guidance_scale": scenario.guidance, "output_type": "pil"}
    if scenario.steps is not None:
        kwargs["num_inference_steps"] = scenario.steps
    if scenario.size is not None and _takes(pipe, "width"):  # img2img draws at its init image's size
        kwargs["width"], kwargs["height"] = scenario.size
    kwargs.update(scenario.call_arguments)  # the pipeline's own (negative_prompt, ...); none is one of the above
    return kwargs


def _takes(pipe: Any, name: str) -> bool:
    """Whether `pipe`'s call names the keyword `name` (None: any pipeline, as text-to-image's do)."""
    if pipe is None:
        return True
    import inspect

    return name in inspect.signature(type(pipe).__call__).parameters


class Runner:
    """One stack's pipeline, called again and again with the same seed; measured calls are recorded.

    `run_pipeline` drives it through warm-ups and measured repeats; pytest-benchmark's pedantic
    mode can drive the same calls instead (see fixture.py), so both see the same runs.
    """

    def __init__(self, pipe: Any, stack: Stack, scenario: Scenario, device: Any, env: dict[str, Any],
                 resident_at_start: int | None = None):
        """`resident_at_start`: the process's resident bytes when the run began, before its pipeline
        was loaded (memory.resident_bytes), from which `run_host_bytes` counts."""
        pipe.set_progress_bar_config(disable=True)
        self.resident_at_start = resident_at_start
        self.pipe, self.stack, self.scenario, self.device, self.env = pipe, stack, scenario, device, env
        self.kwargs = call_kwargs(scenario, pipe)
        self.trackers = trackers_for(device)
        self.step_times: list[list[float]] = []
        self.totals: list[float] = []
        self.images: list[Any] = []
        self.peaks: dict[str, int | None] = {}
        self.warmups: list[float] = []
        self.measuring_since: float | None = None  # time.monotonic() when the first measured call began
        self.settled = Settled()
        # On CPU the machine's own speed moves with its neighbours' load: timed beside each call (machine.py).
        self.reference = ReferenceWorkload() if getattr(device, "type", None) == "cpu" else None
        self.reference_s: list[float] = []

    def call(self, measured: bool) -> None:
        import torch

        # The global RNG too: optimizations that draw their own randomness (tomesd) fork it.
        torch.manual_seed(self.scenario.seed)
        self.stack.before_each_call(self.pipe)
        # A CPU generator draws the same initial latents on every device.
        generator = torch.Generator("cpu").manual_seed(self.scenario.seed)
        clock = StepClock(self.device)
        if measured and self.measuring_since is None:
            self.measuring_since = time.monotonic()
        # Outside the memory trackers and the call's clock: the reference is not part of the run.
        reference_before = self.reference.seconds() if measured and self.reference is not None else None
        if measured:
            for tracker in self.trackers:
                tracker.start()
        try:
            with clock.watching(self.pipe):
                output = self.pipe(**self.kwargs, generator=generator, callback_on_step_end=clock.on_step_end)
                end = clock.stop()
        finally:  # a call that fails (out of memory) still reports the peak it reached
            if measured:
                for tracker in self.trackers:
                    tracker.stop()
                    for name, value in tracker.peaks().items():
                        self.peaks[name] = _max(self.peaks.get(name), value)
        if measured:
            self.step_times.append(clock.step_times())
            self.totals.append(end - clock.call_start)
            self.images = list(output.images)
            if reference_before is not None:
                self.reference_s.append(min(reference_before, self.reference.seconds()))  # type: ignore[union-attr]
        else:
            self.warmups.append(end - clock.call_start)

    def timed_call(self) -> list[float]:
        """One more call, seeded as every other, returning only its step times: what interleaving
        with another pipeline pairs (no memory tracking, no reference workload, nothing recorded)."""
        import torch

        torch.manual_seed(self.scenario.seed)
        self.stack.before_each_call(self.pipe)
        generator = torch.Generator("cpu").manual_seed(self.scenario.seed)
        clock = StepClock(self.device)
        with clock.watching(self.pipe):
            self.pipe(**self.kwargs, generator=generator, callback_on_step_end=clock.on_step_end)
            clock.stop()
        return clock.step_times()

    def speed(self) -> SpeedFigure:
        """The speed figure of the calls measured so far (what settling judges)."""
        return SpeedFigure.measured(self.step_times, self.reference_s)

    def result(self) -> RunResult:
        import torch

        rates = [len(times) / sum(times) for times in self.step_times if times and sum(times) > 0]
        peak_host = self.peaks.get("peak_host_bytes")
        added = None if peak_host is None or self.resident_at_start is None else max(0, peak_host - self.resident_at_start)
        return RunResult(
            stack=self.stack.name,
            scenario=self.scenario,
            images=self.images,
            step_times_s=self.step_times,
            its=statistics.median(rates) if rates else 0.0,
            total_s=statistics.median(self.totals),
            device=str(self.device),
            env=self.env,
            warmup_s=list(self.warmups),
            call_s=list(self.totals),
            settled=self.settled,
            reference_s=list(self.reference_s),
            cpu_threads=torch.get_num_threads() if getattr(self.device, "type", None) == "cpu" else None,
            run_host_bytes=added,
            **self.peaks,
        )


def prime(load: Any, reference: Stack, device: Any) -> None:
    """Once per model and device in a process, before the first run's resident size is read: load
    the pipeline, apply the reference stack and draw one step at 64x64, then let it go. The first
    run of a process otherwise carries one-time costs that later runs do not (imports of diffusers'
    and transformers' models, the first load's caches, the first call's kernels and thread pools;
    on CUDA the context): on `tiny` its own host figure read 61 MB where later runs read 23-25 MB,
    and 22.5 MB after this. The global RNG states are restored; a failure here is left to the run
    itself to report."""
    import torch

    state = torch.random.get_rng_state()
    try:
        pipe = load()
        reference.apply(pipe, device)
        pipe.set_progress_bar_config(disable=True)
        pipe(prompt="", num_inference_steps=1, width=64, height=64, output_type="pil",
             generator=torch.Generator("cpu").manual_seed(0))
    except Exception:  # noqa: BLE001 - priming only improves figures; the run's own errors are reported by the run
        pass
    finally:
        torch.random.set_rng_state(state)


def run_pipeline(pipe: Any, stack: Stack, scenario: Scenario, measurement: Measurement, device: Any,
                 env: dict[str, Any]) -> RunResult:
    return drive(Runner(pipe, stack, scenario, device, env), measurement)


def drive(runner: Runner, measurement: Measurement) -> RunResult:
    """Warm-ups, then measured repeats, of one runner."""
    for index in range(measurement.warmup + measurement.repeats):
        runner.call(measured=index >= measurement.warmup)
    return runner.result()


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)
