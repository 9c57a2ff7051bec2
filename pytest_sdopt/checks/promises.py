"""The promise gates: a stack's speed and memory as ratios to the reference's, measured in the
same session, against a bound (`min_speedup`, `max_memory_ratio`) or what the registry says the
stack's optimizations promise (`promises`, stacks/promises.py).

Three verdicts, as every statistical gate: pass (the whole 95% range of the ratio keeps the
bound), FAIL ("promise broken: ...", the whole range breaks it) or inconclusive (the range
straddles the bound; what would settle it is said). The speed ratio comes from interleaved
pairs of calls (measure/interleaved.py); the memory ratio from the stack's run and the
reference's run of the same scenario on the same device, with the allocator's figure exact on
CUDA and host memory's known noise (gates.HOST_NOISE_BYTES) on either side elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pytest_sdopt.checks.gates import HOST_NOISE_BYTES, GateOutcome, Status
from pytest_sdopt.config.parsers import format_bytes
from pytest_sdopt.measure.interleaved import MIN_PAIRS, RatioFigure
from pytest_sdopt.stacks.promises import MEMORY, SPEED, StackPromise, label

SPEED_GATE, MEMORY_GATE = "min_speedup", "max_memory_ratio"
PROMISE_GATES = (SPEED_GATE, MEMORY_GATE)


@dataclass(frozen=True)
class PromiseBound:
    """The bound a promise gate checks, and whether it is the registry's promise or a set limit."""

    metric: str
    bound: float | None  # None: nothing to check (then `why_not`)
    promised: bool = False  # the registry's promise (--sdopt-promises), not a min_speedup / max_memory_ratio
    why_not: str = ""


@dataclass(frozen=True)
class MemoryRatio:
    stack_bytes: int | None
    reference_bytes: int | None
    device_type: str

    @property
    def noise(self) -> int:
        return 0 if self.device_type == "cuda" else HOST_NOISE_BYTES

    @property
    def ratio(self) -> float | None:
        if not self.stack_bytes or not self.reference_bytes:
            return None
        return self.stack_bytes / self.reference_bytes

    @property
    def low(self) -> float:
        return max(0, self.stack_bytes - self.noise) / (self.reference_bytes + self.noise)

    @property
    def high(self) -> float:
        below = self.reference_bytes - self.noise
        return float("inf") if below <= 0 else (self.stack_bytes + self.noise) / below


@dataclass(frozen=True)
class PromiseInputs:
    """What the orchestrator measured for the promise gates of one check."""

    reference: str
    speed: PromiseBound
    memory: PromiseBound
    speed_figure: RatioFigure | None = None
    memory_ratio: MemoryRatio | None = None

    def outcomes(self, stack: str) -> list[GateOutcome]:
        outcomes = []
        for bound, outcome in ((self.speed, lambda: speed_outcome(stack, self.reference, self.speed, self.speed_figure)),
                               (self.memory, lambda: memory_outcome(stack, self.reference, self.memory,
                                                                    self.memory_ratio))):
            if bound.bound is not None or bound.promised:  # a gate neither set nor promised is not shown
                outcomes.append(outcome())
        return outcomes


def bound_for(metric: str, set_limit: float | None, promises_on: bool, promise: StackPromise | None) -> PromiseBound:
    """A set limit wins; else, with --sdopt-promises, the stack's promise (or why it has none)."""
    if set_limit is not None:
        return PromiseBound(metric, set_limit)
    if not promises_on:
        return PromiseBound(metric, None, why_not="not set")
    if promise is None or promise.bound is None:
        return PromiseBound(metric, None, promised=True, why_not=promise.reason if promise else "no promise")
    return PromiseBound(metric, promise.bound, promised=True)


def speed_outcome(stack: str, reference: str, bound: PromiseBound, figure: RatioFigure | None) -> GateOutcome:
    limit = "" if bound.bound is None else f">= {bound.bound:.2f}x {reference}'s it/s"
    if bound.bound is None:
        return GateOutcome(SPEED_GATE, Status.NOT_APPLICABLE, limit=limit, detail=_no_promise(stack, SPEED, bound))
    if figure is None or figure.pairs == 0:
        return GateOutcome(SPEED_GATE, Status.NOT_APPLICABLE, limit=limit,
                           detail="no interleaved measurement was made")
    measured = (f"{figure.ratio:.2f}x {reference}'s it/s ({figure.low:.2f}x-{figure.high:.2f}x, 95%, over "
                f"{figure.pairs} interleaved pairs: {figure.stack_its:.2f} vs {figure.reference_its:.2f} it/s)")
    if figure.low >= bound.bound:
        status, detail = Status.PASS, "kept" if bound.promised else ""
    elif figure.high < bound.bound and figure.pairs >= MIN_PAIRS:
        status = Status.FAIL
        detail = (f"promise broken: {stack} ran at {figure.ratio:.2f}x {reference}'s speed, promised >= "
                  f"{bound.bound:.2f}x" if bound.promised else
                  f"{stack} ran at {figure.ratio:.2f}x {reference}'s speed, below {bound.bound:.2f}x")
    else:
        status = Status.INCONCLUSIVE
        detail = (f"the ratio's 95% range straddles {bound.bound:.2f}x: the pairs disagree by "
                  f"±{(figure.high / figure.ratio - 1):.0%}; to settle it: --sdopt-settle 60 (more pairs) or a "
                  f"quieter machine")
    return GateOutcome(SPEED_GATE, status, measured, limit, detail, value=figure.ratio)


def memory_outcome(stack: str, reference: str, bound: PromiseBound, ratio: MemoryRatio | None) -> GateOutcome:
    what = label(MEMORY, ratio.device_type if ratio else None)
    limit = "" if bound.bound is None else f"<= {bound.bound:.2f}x {reference}'s {what}"
    if bound.bound is None:
        return GateOutcome(MEMORY_GATE, Status.NOT_APPLICABLE, limit=limit, detail=_no_promise(stack, MEMORY, bound))
    if ratio is None or ratio.ratio is None:
        device = ratio.device_type if ratio else "this device"
        return GateOutcome(MEMORY_GATE, Status.NOT_APPLICABLE, limit=limit,
                           detail=f"no {what} figure of both runs on {device}")
    measured = (f"{what} {ratio.ratio:.2f}x {reference}'s ({format_bytes(ratio.stack_bytes)} vs "
                f"{format_bytes(ratio.reference_bytes)})")
    if ratio.high <= bound.bound:
        status, detail = Status.PASS, "kept" if bound.promised else ""
    elif ratio.low > bound.bound:
        status = Status.FAIL
        detail = (f"promise broken: {stack} used {ratio.ratio:.2f}x {reference}'s {what}, promised <= "
                  f"{bound.bound:.2f}x" if bound.promised else
                  f"{stack} used {ratio.ratio:.2f}x {reference}'s {what}, above {bound.bound:.2f}x")
    else:
        status = Status.INCONCLUSIVE
        detail = (f"within the {format_bytes(ratio.noise)} that one process's allocator state moves host memory "
                  f"({ratio.low:.2f}x-{ratio.high:.2f}x); to settle it: a larger --sdopt-size")
    return GateOutcome(MEMORY_GATE, status, measured, limit, detail, value=ratio.ratio)


def _no_promise(stack: str, metric: str, bound: PromiseBound) -> str:
    if bound.why_not == "not set":
        return "not set"
    return f"{stack} promises no {label(metric)} ratio here: {bound.why_not}"


def promise_summary(outcomes: list[GateOutcome]) -> Any:
    """The promise gates' outcomes of a check, for the table's promise column."""
    return [o for o in outcomes if o.gate in (SPEED_GATE, MEMORY_GATE)]
