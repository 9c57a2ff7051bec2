"""Gates: plain functions of a run's measurements and a limit, each returning a `GateOutcome`.

A gate passes, fails, or is not applicable (a VRAM ceiling on a CPU run, a relative check with
no stored metrics for this device). Not applicable is an outcome of its own and is always
shown: a gate never passes silently. No pytest and no torch here; `checking.py` gathers the
inputs (baselines, SSIM) and the fixture turns failures into one test failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Iterable

from pytest_sdopt.config.scenario import GateLimits  # noqa: F401 (re-exported)
from pytest_sdopt.config.parsers import format_bytes


class Status(str, Enum):
    PASS = "pass"
    FAIL = "FAIL"
    NOT_APPLICABLE = "n/a"
    # A statistical gate whose evidence cannot decide (the machine moved, too few runs): shown
    # wherever a verdict is, with why and what would settle it; fails the test only under --sdopt-strict.
    INCONCLUSIVE = "inconclusive"


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

    @property
    def inconclusive(self) -> bool:
        return self.status is Status.INCONCLUSIVE

    def lines(self) -> list[str]:
        """This outcome as the failure message and the report show it."""
        parts = [f"measured {self.measured}"] if self.measured else []
        if self.limit:
            parts.append(f"limit {self.limit}")
        status = "INCONCLUSIVE" if self.inconclusive else self.status.value
        first = f"  {status:<4}  {self.gate:<19} {', '.join(parts)}"
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


def min_self_ssim(ssim: float | None, limit: float, why_not: str = "", failed: bool = False,
                  artifacts: tuple[tuple[str, str], ...] = ()) -> GateOutcome:
    """The run's image against the same stack's own stored image. `ssim` None: not applicable
    (`why_not` says why), or failed where the comparison itself is an error (a size change)."""
    against = "against its own baseline"
    if ssim is None:
        return GateOutcome("min_self_ssim", Status.FAIL if failed else Status.NOT_APPLICABLE,
                           limit=f">= {limit:g} {against}", detail=why_not)
    ok = ssim + SSIM_EPSILON >= limit
    return GateOutcome("min_self_ssim", _pass_or_fail(ok), f"SSIM {ssim:.4f} {against}", f">= {limit:g}",
                       detail="" if ok else "the stack drew a different image than when it was recorded",
                       artifacts=() if ok else artifacts, value=ssim)


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
    """It/s against the stored figure, with three verdicts (speed.judge_speed): relative to the
    machine's speed where both were timed beside a reference workload (CPU, machine.py), else the
    best measured call's. Figures measured with another number of CPU threads are not compared."""
    from pytest_sdopt.measure.figures import SpeedFigure
    from pytest_sdopt.checks.speed import Verdict, judge_speed, machine_change

    limit_text = f"<= {limit:.0%} slower than stored"
    not_applicable = _relative_not_applicable("max_its_drop", stored, limit_text)
    if not_applicable is not None:
        return not_applicable
    values: dict[str, Any] = stored.values  # type: ignore[assignment]
    now, before = result.speed, SpeedFigure.stored(values)
    if now.cpu_threads and before.cpu_threads and now.cpu_threads != before.cpu_threads:
        return GateOutcome("max_its_drop", Status.NOT_APPLICABLE, limit=limit_text, detail=(
            f"stored with {_threads(before.cpu_threads)}, this run used {_threads(now.cpu_threads)}: speeds measured "
            f"with other thread counts do not compare (record again with --sdopt-cpu-threads {now.cpu_threads} "
            f"--sdopt-update-baselines, or check with --sdopt-cpu-threads {before.cpu_threads})"))
    judged = judge_speed(now, before, limit)
    runs = now.runs
    noise = f" ± {judged.noise:.1%}" if judged.noise < 1 else " ± >100%"
    if judged.machine_relative:
        measured = (f"{now.best_its:.2f} it/s ({_of_runs('best', runs)}); relative to the machine's speed, "
                    f"{-judged.drop:+.1%}{noise} vs stored ({_of_runs('median', runs)})")
    else:
        measured = (f"{now.best_its:.2f} it/s ({_of_runs('best', runs)}) vs {before.best_its:.2f} stored "
                    f"({-judged.drop:+.1%}{noise})")
    notes = []
    if judged.machine_moved is not None and abs(judged.machine_moved - 1) >= 0.001:
        notes.append(f"the machine ran {machine_change(judged.machine_moved)} than when recorded")
    settled = getattr(result, "settled", None)
    if settled is not None and settled.calls and settled.reason == "checking":
        runs_text = f"{settled.calls} more runs over {settled.seconds:.0f} s (--sdopt-settle)"
        notes.append({Verdict.PASS: f"a first reading near the limit was re-measured: {runs_text}",
                      Verdict.FAIL: f"confirmed: {runs_text}"}.get(judged.verdict, f"re-measured: {runs_text}"))
    if judged.verdict is Verdict.INCONCLUSIVE:
        notes.append(f"inconclusive: {judged.why}; to settle it: {judged.remedy}")
    return GateOutcome("max_its_drop", Status(judged.verdict.value), measured, limit_text, detail="; ".join(notes),
                       value=judged.drop)


def _threads(count: int) -> str:
    return f"{count} thread{'' if count == 1 else 's'}"


# (the figure measured now and stored, its label) per memory kind. Host memory compares the run's
# own (`run_host_bytes`: the peak above the resident size when the run began), so a test's figure
# does not depend on which tests ran before it in the process; records made before it existed
# compare the process peak.
MEMORY_KINDS = (("peak_vram_bytes", "vram"), ("run_host_bytes", "host (the run's own)"), ("peak_host_bytes", "host"))
# Growth of host memory smaller than this is not told apart from one process's allocator state:
# the first run of a process carries ~20 MB of one-time costs (first load, first call's kernels)
# that later runs do not, on `tiny` a run's own figure of ~25 MB.
HOST_NOISE_BYTES = 64 * 2**20


def max_memory_growth(result: Any, limit: float, stored: StoredMetrics) -> list[GateOutcome]:
    """One outcome per memory kind measured now and stored before (VRAM on CUDA, host everywhere)."""
    limit_text = f"<= {limit:.0%} more than stored"
    not_applicable = _relative_not_applicable("max_memory_growth", stored, limit_text)
    if not_applicable is not None:
        return [not_applicable]
    values: dict[str, Any] = stored.values  # type: ignore[assignment]
    outcomes = []
    host_done = False
    for field, kind in MEMORY_KINDS:
        now, before = getattr(result, field, None), values.get(field)
        is_host = field != "peak_vram_bytes"
        if now is None or not before or (is_host and host_done):
            continue
        host_done = host_done or is_host
        growth = now / before - 1
        within_noise = is_host and now - before <= HOST_NOISE_BYTES
        passed = growth <= limit + 1e-12 or within_noise
        detail = (f"within the {format_bytes(HOST_NOISE_BYTES)} that one process's allocator state moves it"
                  if within_noise and growth > limit + 1e-12 else "")
        outcomes.append(GateOutcome("max_memory_growth", _pass_or_fail(passed),
                                    f"{kind} {format_bytes(now)} vs {format_bytes(before)} stored ({growth:+.1%})",
                                    limit_text, detail=detail, value=growth))
    if not outcomes:
        outcomes.append(GateOutcome("max_memory_growth", Status.NOT_APPLICABLE, limit=limit_text,
                                    detail="no memory figure both measured now and stored"))
    return outcomes


# --- the verdict ---------------------------------------------------------------------------


def failure_message(stack: str, where: str, outcomes: Iterable[GateOutcome], strict: bool = False) -> str:
    """One message for every gate of a check: the failures first, then the inconclusive ones, then
    the rest, each with its figures. `strict` (--sdopt-strict): inconclusive gates count as failed."""
    outcomes = list(outcomes)
    failed = [outcome for outcome in outcomes if outcome.failed]
    inconclusive = [outcome for outcome in outcomes if outcome.inconclusive]
    order = {Status.FAIL: 0, Status.INCONCLUSIVE: 1, Status.NOT_APPLICABLE: 2, Status.PASS: 3}
    counted = f"failed {len(failed)} of {len(outcomes)} gates"
    if strict and inconclusive:
        counted += f" and {len(inconclusive)} {'was' if len(inconclusive) == 1 else 'were'} inconclusive (--sdopt-strict)"
    elif inconclusive:
        counted += f", {len(inconclusive)} inconclusive"
    lines = [f"sdopt: stack {stack!r} {counted} ({where}):"]
    for outcome in sorted(outcomes, key=lambda outcome: order[outcome.status]):
        lines += outcome.lines()
    return "\n".join(lines)
