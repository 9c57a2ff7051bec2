"""A stack's speed as a ratio to the reference's, measured side by side: calls of the two pipelines
alternate (A B B A A B ...), and each adjacent pair gives one ratio.

Why: a speed stored on another day moves with the machine's state (10-35% between minutes on a
shared CPU); two calls a moment apart share that state, so their ratio cancels it. The pattern
alternates which pipeline goes first (A B, then B A), so a drift within a pair favours neither.
The figure is the median of the pairs' ratios with a 95% interval (Student's t on their robust
spread, as figures.median_interval, with no time-span rule: the pairing, not the span, is what
cancels the machine's drift), and never narrower than PAIR_SPREAD.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from pytest_sdopt.measure.figures import call_its

MIN_PAIRS = 8  # fewer give no interval of their own
# Adjacent calls on this 2-core machine agree to ~1-2% (FACTS.md: per-step it/s varies 2-6% between
# identical runs); no interval is taken to be narrower than this.
PAIR_SPREAD = 0.01
MAX_PAIRS = 200


@dataclass(frozen=True)
class RatioFigure:
    """The median ratio of the stack's it/s to the reference's over adjacent pairs of calls."""

    ratio: float
    spread: float  # half-width of the 95% interval, as a fraction of the ratio (log scale); inf: none
    pairs: int
    seconds: float  # wall time the pairs took
    stack_its: float  # the median it/s of each side's calls, for reports
    reference_its: float

    @property
    def low(self) -> float:
        return self.ratio * math.exp(-self.spread) if math.isfinite(self.spread) else 0.0

    @property
    def high(self) -> float:
        return self.ratio * math.exp(self.spread) if math.isfinite(self.spread) else math.inf

    @classmethod
    def of(cls, stack_steps: Sequence[Sequence[float]], reference_steps: Sequence[Sequence[float]],
           seconds: float = 0.0) -> "RatioFigure":
        stack_its = [call_its(times) for times in stack_steps]
        reference_its = [call_its(times) for times in reference_steps]
        ratios = [s / r for s, r in zip(stack_its, reference_its) if s > 0 and r > 0]
        if not ratios:
            return cls(0.0, math.inf, 0, seconds, 0.0, 0.0)
        logs = [math.log(r) for r in ratios]
        middle = statistics.median(logs)
        return cls(math.exp(middle), _log_spread(logs), len(ratios), seconds,
                   statistics.median(stack_its), statistics.median(reference_its))


def _log_spread(logs: Sequence[float]) -> float:
    if len(logs) < MIN_PAIRS:
        return math.inf
    from scipy.stats import median_abs_deviation
    from scipy.stats import t as student_t

    spread = float(median_abs_deviation(logs, scale="normal"))
    half = float(student_t.ppf(0.975, len(logs) - 1)) * 1.2533 * spread / len(logs) ** 0.5
    return max(half, PAIR_SPREAD)


def interleave(stack_call: Callable[[], list[float]], reference_call: Callable[[], list[float]],
               decided: Callable[[RatioFigure], bool], budget_s: float,
               clock: Callable[[], float] = time.monotonic) -> RatioFigure:
    """Pairs of calls (each call returns its step times) until `decided(figure)` after MIN_PAIRS,
    or `budget_s` seconds, or MAX_PAIRS; at least MIN_PAIRS whatever the budget."""
    started = clock()
    stack_steps: list[list[float]] = []
    reference_steps: list[list[float]] = []
    figure = RatioFigure.of([], [])
    while len(stack_steps) < MAX_PAIRS:
        if len(stack_steps) % 2 == 0:
            stack_steps.append(stack_call())
            reference_steps.append(reference_call())
        else:
            reference_steps.append(reference_call())
            stack_steps.append(stack_call())
        figure = RatioFigure.of(stack_steps, reference_steps, clock() - started)
        if len(stack_steps) >= MIN_PAIRS and (decided(figure) or clock() - started >= budget_s):
            break
    return figure
