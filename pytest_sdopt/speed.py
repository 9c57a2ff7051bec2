"""The speed figure the `max_its_drop` gate compares, and settling: re-measuring before a
speed verdict counts.

What the noise looks like on this project's 2-core CI machine (benchmarks/speed_gate.py):
within one pipeline call the step times agree to 1-2%, but the machine itself moves between
states 10-35% apart that last from 30 s to minutes (neighbours on the shared host), with one
thread or two. A figure recorded in one state and checked in another cannot tell a 10%
slowdown from that, however one run's steps are summarised (a rank test or a confidence
interval on them would be precise about the wrong thing). Hence:

- on CPU, each measured call is timed beside a fixed reference workload (machine.py), and the
  figure is the median over calls of it/s x the reference's seconds: speed *relative to the
  machine*: across fresh processes it spread 1.1-1.3% where the raw speed spread 3.4-3.8%
  (one thread; machine.py says how the reference was chosen);
- where no reference was timed (CUDA, figures stored before it existed or under another
  reference), a call's speed is `1 / median(step times)` and a stack's figure its best call's:
  interference only slows, so the best call is the closest estimate of the machine's
  undisturbed speed;
- with `settle` seconds (`--sdopt-settle`), a check whose speed gate would fail keeps measuring
  for up to that long and fails only if the figure never came within the limit, and a recording
  measures for twice that long, so the stored figure rests on more runs than any check.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence


def call_its(step_times_s: Sequence[float]) -> float:
    """Steps per second of one call, from its median step."""
    positive = [t for t in step_times_s if t > 0]
    return 1.0 / statistics.median(positive) if positive else 0.0


def best_its(step_times_per_call: Sequence[Sequence[float]]) -> float:
    """The best call's steps per second: the figure max_its_drop stores and compares."""
    return max((call_its(times) for times in step_times_per_call), default=0.0)


@dataclass(frozen=True)
class Settled:
    """What settling did: extra measured calls and the seconds they took."""

    calls: int = 0
    seconds: float = 0.0
    reason: str = ""  # "recording" or "checking"; "" when nothing was re-measured


RECORDING_FACTOR = 2  # a recording settles this many times longer than a check


def settle(measure_once: Callable[[], None], budget_s: float, measuring_since: float,
           good_enough: Callable[[], bool] | None, clock: Callable[[], float] = time.monotonic) -> Settled:
    """Keep calling `measure_once` (one more measured call) within a budget counted from
    `measuring_since` (when the first measured call began).

    `good_enough` None is a recording: measure for RECORDING_FACTOR x `budget_s`. Otherwise a
    check: within `budget_s`, stop as soon as `good_enough()` (the speed gate surely passes on
    what was measured so far, SpeedComparison.surely_within), and never start when it already
    holds. A reading past the limit is re-measured for the whole budget before it counts.
    """
    reason = "recording" if good_enough is None else "checking"
    if budget_s <= 0 or (good_enough is not None and good_enough()):
        return Settled()
    if good_enough is None:
        budget_s *= RECORDING_FACTOR
    started, calls = clock(), 0
    while clock() - measuring_since < budget_s:
        measure_once()
        calls += 1
        if good_enough is not None and good_enough():
            break
    return Settled(calls, clock() - started, reason if calls else "")


def drop(its_now: float, its_before: float) -> float:
    """How much slower now is than before, as a fraction (negative: faster)."""
    return 1 - its_now / its_before if its_before > 0 else 0.0


def within_drop(its_now: float, its_before: float, limit: float) -> bool:
    """max_its_drop's verdict, shared by the gate and by settling (a hair of float slack at the limit)."""
    return drop(its_now, its_before) <= limit + 1e-12


def stored_best_its(values: dict[str, Any]) -> float:
    """The stored figure to compare with; metrics recorded before best_its existed have only its."""
    return float(values.get("best_its") or values["its"])


@dataclass(frozen=True)
class SpeedComparison:
    """The figures max_its_drop compares: machine-relative where both sides have them (CPU runs,
    machine.py: the median over calls, with a 95% interval), else the best call's it/s."""

    now: float
    before: float
    machine_relative: bool
    spread: float = 0.0  # half-width of the 95% interval of `now` (machine-relative only; inf with one call)

    @property
    def drop(self) -> float:
        return drop(self.now, self.before)

    @property
    def drop_spread(self) -> float:
        """The interval's half-width as a fraction of the stored figure (comparable with `drop`)."""
        return self.spread / self.before if self.before > 0 else 0.0

    def within(self, limit: float) -> bool:
        return within_drop(self.now, self.before, limit)

    def surely_within(self, limit: float) -> bool:
        """Whether settling may stop: more runs would not make the gate fail. Machine-relative: the
        whole 95% interval of the drop is within the limit, so a reading just inside it is
        re-measured too. Best call: a run came within the limit (interference only slows, so no
        later run can undo that)."""
        if not self.machine_relative:
            return self.within(limit)
        return within_drop(self.now - self.spread, self.before, limit)


# Fewer samples give no interval (inf): the median absolute deviation of 3 is the smaller of two
# distances, near 0 by luck often enough that a slowed check stopped after 3 runs at -5.4%
# (benchmarks/speed_gate.py), where its 250-run figure read -9%.
MIN_INTERVAL_SAMPLES = 8
# Nor from runs that span only a moment. The machine's speed relative to the reference drifts by a
# few percent over seconds, so runs taken within a second or two agree with each other more than
# with the next minute's, and their interval is too narrow. Two slowed checks (10% slower) stopped
# settling after 8 and 16 runs (1-2 s) at -2.9% ± 1.7% and -3.8% ± 1.1% and passed a 5% limit, where
# every slowed check that measured on read -7% to -9% (benchmarks/speed_gate.py). An interval
# needs this many seconds of measured denoising steps, which is ~15 s of wall time on `tiny`.
MIN_INTERVAL_SPAN_S = 10.0


def measured_span_s(step_times_per_call: Sequence[Sequence[float]]) -> float:
    """Seconds spent in the measured calls' denoising steps: how long the samples were gathered."""
    return float(sum(sum(times) for times in step_times_per_call))


def median_interval(samples: Sequence[float], span_s: float) -> float:
    """Half-width of a 95% interval of the median of `samples`: Student's t on a robust spread
    (1.4826 x the median absolute deviation, so a few disturbed runs do not widen it), times
    the median's efficiency factor 1.2533. inf for fewer than MIN_INTERVAL_SAMPLES, or samples
    gathered over less than MIN_INTERVAL_SPAN_S seconds of steps (`span_s`)."""
    if len(samples) < MIN_INTERVAL_SAMPLES or span_s < MIN_INTERVAL_SPAN_S:
        return float("inf")
    from scipy.stats import median_abs_deviation
    from scipy.stats import t as student_t

    spread = float(median_abs_deviation(samples, scale="normal"))  # 1.4826 x MAD
    return float(student_t.ppf(0.975, len(samples) - 1)) * 1.2533 * spread / len(samples) ** 0.5


def compare_speed(best: float, relative_samples: Sequence[float], stored: dict[str, Any],
                  span_s: float) -> SpeedComparison:
    """`span_s`: seconds of measured steps behind the samples (measured_span_s), for the interval."""
    from pytest_sdopt.machine import REFERENCE_NAME

    # A figure relative to another reference workload (an older version's) is not comparable.
    stored_relative = stored.get("machine_relative_its") if stored.get("machine_reference") == REFERENCE_NAME else None
    if relative_samples and stored_relative:
        return SpeedComparison(statistics.median(relative_samples), float(stored_relative), True,
                               median_interval(relative_samples, span_s))
    return SpeedComparison(best, stored_best_its(stored), False)
