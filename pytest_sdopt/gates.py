"""Gates: plain functions of a run's measurements and a limit, each returning a `GateOutcome`.

A gate passes, fails, or is not applicable (a VRAM ceiling on a CPU run, a relative check with
no stored metrics for this device). Not applicable is an outcome of its own and is always
shown: a gate never passes silently. No pytest and no torch here; `checking.py` gathers the
inputs (baselines, SSIM) and the fixture turns failures into one test failure.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable

from pytest_sdopt.parsing import format_bytes


@dataclass(frozen=True)
class GateLimits:
    """The limits one check applies; None: that gate is not set (or switched off)."""

    max_vram: int | None = None
    max_host_memory: int | None = None
    min_its: float | None = None
    min_ssim: float | None = None
    reference: str = "fp32"
    max_its_drop: float | None = None
    max_memory_growth: float | None = None


class Status(str, Enum):
    PASS = "pass"
    FAIL = "FAIL"
    NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class GateOutcome:
    gate: str
    status: Status
    measured: str = ""  # as a person reads it: "45.2 it/s"
    limit: str = ""  # ">= 19.0 it/s"
    detail: str = ""  # why it is not applicable, or what to do about a failure
    artifacts: tuple[tuple[str, str], ...] = ()  # (label, path) of images left for a person to look at
    value: float | None = None  # the measured number, for reports

    @property
    def failed(self) -> bool:
        return self.status is Status.FAIL

    def lines(self) -> list[str]:
        """This outcome as the failure message and the report show it."""
        parts = [f"measured {self.measured}"] if self.measured else []
        if self.limit:
            parts.append(f"limit {self.limit}")
        first = f"  {self.status.value:<4}  {self.gate:<19} {', '.join(parts)}"
        lines = [first]
        if self.detail and len(first) + len(self.detail) < 110:
            lines = [f"{first}: {self.detail}" if parts else f"{first}{self.detail}"]
        elif self.detail:  # long advice (a command to run) reads best on lines of its own
            lines += [f"        {line}" for line in self.detail.splitlines()]
        lines += [f"        {label + ':':<10}{path}" for label, path in self.artifacts]
        return lines


def _pass_or_fail(ok: bool) -> Status:
    return Status.PASS if ok else Status.FAIL


# --- ceilings and floors on one run --------------------------------------------------------


# Each takes the RunResult (any object with its fields) and the limit.


def max_vram(result: Any, limit: int) -> GateOutcome:
    peak = result.peak_vram_bytes
    if peak is None:
        return GateOutcome("max_vram", Status.NOT_APPLICABLE, limit=f"<= {format_bytes(limit)}",
                           detail=f"no CUDA allocator on a {result.device} run")
    return GateOutcome("max_vram", _pass_or_fail(peak <= limit), format_bytes(peak), f"<= {format_bytes(limit)}",
                       value=peak)


def max_host_memory(result: Any, limit: int) -> GateOutcome:
    peak = result.peak_host_bytes
    if peak is None:
        return GateOutcome("max_host_memory", Status.NOT_APPLICABLE, limit=f"<= {format_bytes(limit)}",
                           detail="this platform reports no peak RSS for the process")
    return GateOutcome("max_host_memory", _pass_or_fail(peak <= limit), format_bytes(peak),
                       f"<= {format_bytes(limit)}", value=peak)


def min_its(result: Any, limit: float) -> GateOutcome:
    its = result.its
    return GateOutcome("min_its", _pass_or_fail(its >= limit), f"{its:.2f} it/s", f">= {limit:g} it/s", value=its)


# --- image similarity against the reference's baseline -------------------------------------


@dataclass(frozen=True)
class ReferenceComparison:
    """The run's image compared with the reference stack's stored baseline image."""

    reference: str
    ssim: float | None  # None: no comparison could be made (see problem)
    problem: str = ""  # the baseline is missing, or its size differs
    artifacts: tuple[tuple[str, str], ...] = ()


SSIM_EPSILON = 1e-9  # identical images score 1.0 up to float rounding


def min_ssim(comparison: ReferenceComparison, limit: float) -> GateOutcome:
    against = f"against {comparison.reference}'s baseline"
    if comparison.ssim is None:
        return GateOutcome("min_ssim", Status.FAIL, limit=f">= {limit:g} {against}", detail=comparison.problem,
                           artifacts=comparison.artifacts)
    ok = comparison.ssim + SSIM_EPSILON >= limit
    return GateOutcome("min_ssim", _pass_or_fail(ok), f"SSIM {comparison.ssim:.4f} {against}", f">= {limit:g}",
                       artifacts=() if ok else comparison.artifacts, value=comparison.ssim)


# --- relative to the metrics stored for this device -----------------------------------------


@dataclass(frozen=True)
class StoredMetrics:
    """A stack's metrics recorded earlier on a device with the same fingerprint."""

    fingerprint: str
    values: dict[str, Any] | None  # None: nothing stored for this fingerprint
    recorded_now: bool = False  # --sdopt-update-baselines just replaced them with this run's


def _of_runs(statistic: str, runs: int) -> str:
    """'best of 3 runs', or '1 run' where there was nothing to take the best of."""
    return "1 run" if runs == 1 else f"{statistic} of {runs} runs"


def _relative_not_applicable(gate: str, stored: StoredMetrics, limit_text: str) -> GateOutcome | None:
    if stored.recorded_now:
        return GateOutcome(gate, Status.NOT_APPLICABLE, limit=limit_text,
                           detail="this run's metrics were just recorded (--sdopt-update-baselines)")
    if stored.values is None:
        return GateOutcome(gate, Status.NOT_APPLICABLE, limit=limit_text,
                           detail=f"nothing stored for this device ({stored.fingerprint}); "
                                  f"--sdopt-update-baselines records it")
    return None


def max_its_drop(result: Any, limit: float, stored: StoredMetrics) -> GateOutcome:
    """It/s against the stored figure: relative to the machine's speed where both were timed beside
    a reference workload (CPU, machine.py), else the best measured call's (speed.py says why)."""
    from pytest_sdopt.machine import machine_relative_samples
    from pytest_sdopt.speed import best_its, compare_speed, measured_span_s

    limit_text = f"<= {limit:.0%} slower than stored"
    not_applicable = _relative_not_applicable("max_its_drop", stored, limit_text)
    if not_applicable is not None:
        return not_applicable
    values: dict[str, Any] = stored.values  # type: ignore[assignment]
    its, runs = best_its(result.step_times_s), len(result.step_times_s)
    samples = machine_relative_samples(result.step_times_s, getattr(result, "reference_s", []))
    speed = compare_speed(its, samples, values, measured_span_s(result.step_times_s))
    passed = speed.within(limit)
    notes = []
    if speed.machine_relative:
        spread = f" ± {speed.drop_spread:.1%}" if speed.drop_spread < float("inf") else ""
        measured = (f"{its:.2f} it/s ({_of_runs('best', runs)}); relative to the machine's speed, "
                    f"{-speed.drop:+.1%}{spread} vs stored ({_of_runs('median', runs)})")
        machine_now, machine_before = statistics.median(result.reference_s), values.get("machine_reference_s")
        if machine_before:
            notes.append(f"the machine ran {abs(machine_now / machine_before - 1):.1%} "
                         f"{'slower' if machine_now > machine_before else 'faster'} than when recorded")
    else:
        measured = f"{its:.2f} it/s ({_of_runs('best', runs)}) vs {speed.before:.2f} stored ({-speed.drop:+.1%})"
    settled = getattr(result, "settled", None)
    if settled is not None and settled.calls and settled.reason == "checking":
        runs_text = f"{settled.calls} more runs over {settled.seconds:.0f} s (--sdopt-settle)"
        if passed:
            notes.append(f"a first reading near the limit was re-measured: {runs_text}")
        elif speed.machine_relative:
            notes.append(f"confirmed: {runs_text}")
        else:
            notes.append(f"confirmed: {runs_text} and none came within the limit")
    return GateOutcome("max_its_drop", _pass_or_fail(passed), measured, limit_text, detail="; ".join(notes),
                       value=speed.drop)


MEMORY_KINDS = (("peak_vram_bytes", "vram"), ("peak_host_bytes", "host"))


def max_memory_growth(result: Any, limit: float, stored: StoredMetrics) -> list[GateOutcome]:
    """One outcome per memory kind measured now and stored before (VRAM on CUDA, host everywhere)."""
    limit_text = f"<= {limit:.0%} more than stored"
    not_applicable = _relative_not_applicable("max_memory_growth", stored, limit_text)
    if not_applicable is not None:
        return [not_applicable]
    outcomes = []
    for field, kind in MEMORY_KINDS:
        now, before = getattr(result, field), stored.values.get(field)  # type: ignore[union-attr]
        if now is None or not before:
            continue
        growth = now / before - 1
        outcomes.append(GateOutcome("max_memory_growth", _pass_or_fail(growth <= limit + 1e-12),
                                    f"{kind} {format_bytes(now)} vs {format_bytes(before)} stored ({growth:+.1%})",
                                    limit_text, value=growth))
    if not outcomes:
        outcomes.append(GateOutcome("max_memory_growth", Status.NOT_APPLICABLE, limit=limit_text,
                                    detail="no memory figure both measured now and stored"))
    return outcomes


# --- the verdict ---------------------------------------------------------------------------


def failure_message(stack: str, where: str, outcomes: Iterable[GateOutcome]) -> str:
    """One message for every gate of a check: the failures first, then the rest, each with its figures."""
    outcomes = list(outcomes)
    failed = [outcome for outcome in outcomes if outcome.failed]
    order = {Status.FAIL: 0, Status.NOT_APPLICABLE: 1, Status.PASS: 2}
    lines = [f"sdopt: stack {stack!r} failed {len(failed)} of {len(outcomes)} gates ({where}):"]
    for outcome in sorted(outcomes, key=lambda outcome: order[outcome.status]):
        lines += outcome.lines()
    return "\n".join(lines)
