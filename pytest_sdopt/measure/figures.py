"""The speed figure every speed verdict reads (`SpeedFigure`), computed once per run. The three
verdicts on two of them are checks/speed.py's (`judge_speed`: pass, FAIL, inconclusive);
re-measuring before a verdict counts is measure/settling.py's.

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
- each figure carries its 95% interval; `judge_speed` takes the drop's range from both figures'
  intervals and how far the machine's speed moved between them, and says pass (all of it within
  the limit), FAIL (all of it past the limit) or inconclusive (with why and what would settle it);
- a check whose verdict is not yet pass keeps measuring for up to `settle` seconds
  (`--sdopt-settle`, by default CHECK_SETTLE_S); a recording measures until its figure has an
  interval of its own (settle_recording), or with `--sdopt-settle` given for twice that long, so
  the stored figure rests on more runs than any check.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from pytest_sdopt.measure.machine import REFERENCE_NAME


def call_its(step_times_s: Sequence[float]) -> float:
    """Steps per second of one call, from its median step."""
    positive = [t for t in step_times_s if t > 0]
    return 1.0 / statistics.median(positive) if positive else 0.0


def best_its(step_times_per_call: Sequence[Sequence[float]]) -> float:
    """The best call's steps per second: the figure max_its_drop stores and compares."""
    return max((call_its(times) for times in step_times_per_call), default=0.0)



def drop(its_now: float, its_before: float) -> float:
    """How much slower now is than before, as a fraction (negative: faster)."""
    return 1 - its_now / its_before if its_before > 0 else 0.0


def stored_best_its(values: dict[str, Any]) -> float:
    """The stored figure to compare with; metrics recorded before best_its existed have only its."""
    return float(values.get("best_its") or values["its"])


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



def machine_relative_samples(step_times_per_call: Sequence[Sequence[float]],
                             reference_s: Sequence[float]) -> list[float]:
    """Per measured call: the call's steps per second x the reference's seconds around it, i.e. how
    many steps the code runs in the time the machine takes for the reference workload. Empty when
    the reference was not timed beside every call (CUDA runs, figures recorded before it existed)."""
    if not reference_s or len(reference_s) != len(step_times_per_call):
        return []
    return [call_its(times) * reference for times, reference in zip(step_times_per_call, reference_s)]


def machine_relative_its(step_times_per_call: Sequence[Sequence[float]], reference_s: Sequence[float]) -> float | None:
    """The median of `machine_relative_samples`: what max_its_drop compares on CPU; None without them."""
    samples = machine_relative_samples(step_times_per_call, reference_s)
    return statistics.median(samples) if samples else None


# --- one speed figure per run ---------------------------------------------------------------

# Where too few runs (or too brief ones) give no interval of their own, a figure is taken to be
# this uncertain (95%, as a fraction), unless its runs disagree by more. Relative to the reference
# workload (machine.py), fresh processes on a quiet machine spread 1.1-1.3% (one standard
# deviation) and the machine's slower states move it by up to 5-8% for minutes; raw it/s moves
# 10-35% between those states on CPU, and on a host-bound GPU a best call moves with its host.
FEW_RUNS_SPREAD = {True: 0.05, False: 0.10}  # machine-relative / best call's it/s
# And no interval is narrower than this: runs of one session agree with each other more than
# with another session's (fresh processes spread 1.1-1.3% relative to the reference, machine.py).
SESSION_SPREAD = 0.015


def spread_of(samples: Sequence[float], span_s: float, machine_relative: bool) -> float:
    """The half-width of a 95% interval of the samples' median, as a fraction of it: Student's t
    on a robust spread where there are enough runs over enough time (median_interval), else the
    samples' range, and never less than FEW_RUNS_SPREAD without an interval, SESSION_SPREAD with."""
    if not samples:
        return float("inf")
    middle = statistics.median(samples)
    if middle <= 0:
        return float("inf")
    interval = median_interval(samples, span_s)
    if interval < float("inf"):
        return max(interval / middle, SESSION_SPREAD)
    observed = (max(samples) - min(samples)) / middle
    return max(observed, FEW_RUNS_SPREAD[machine_relative])


@dataclass(frozen=True)
class SpeedFigure:
    """A run's speed, computed once from its measured calls: what settling, `max_its_drop`, the
    stored metrics, the results JSON and `sdopt compare` all read.

    `relative_its` (CPU: median over calls of steps in the reference workload's time, machine.py)
    is compared where both sides have it under the same reference; else `best_its`, the best
    call's it/s (interference only slows). Each has its 95% interval as a fraction (`*_spread`).
    """

    best_its: float
    best_spread: float
    runs: int
    relative_its: float | None = None
    relative_spread: float | None = None
    machine_s: float | None = None  # median seconds of the reference workload: how fast the machine was
    reference: str | None = None  # the reference workload's name (machine.REFERENCE_NAME)
    cpu_threads: int | None = None  # torch's intra-op threads during a CPU run
    span_s: float | None = None  # seconds of measured denoising steps behind it (None: not known)

    @property
    def has_interval(self) -> bool:
        """Whether its runs were enough, and long enough, for an interval of their own (median_interval)."""
        return self.runs >= MIN_INTERVAL_SAMPLES and (self.span_s is None or self.span_s >= MIN_INTERVAL_SPAN_S)

    @classmethod
    def measured(cls, step_times_per_call: Sequence[Sequence[float]], reference_s: Sequence[float],
                 cpu_threads: int | None = None) -> "SpeedFigure":
        span = measured_span_s(step_times_per_call)
        calls = [call_its(times) for times in step_times_per_call]
        relative = machine_relative_samples(step_times_per_call, reference_s)
        return cls(best_its=max(calls, default=0.0), best_spread=spread_of(calls, span, False), runs=len(calls),
                   relative_its=statistics.median(relative) if relative else None,
                   relative_spread=spread_of(relative, span, True) if relative else None,
                   machine_s=statistics.median(reference_s) if relative else None,
                   reference=REFERENCE_NAME if relative else None, cpu_threads=cpu_threads, span_s=span)

    @classmethod
    def stored(cls, values: dict[str, Any]) -> "SpeedFigure":
        """From stored metrics or a results entry's figures; records without spreads get the prior."""
        relative = values.get("machine_relative_its")
        reference = values.get("machine_reference") if relative else None
        runs = int(values.get("repeats") or len(values.get("call_s") or ()) or 1)
        prior = {flag: FEW_RUNS_SPREAD[flag] if runs < MIN_INTERVAL_SAMPLES else SESSION_SPREAD for flag in (True, False)}
        threads = values.get("cpu_threads") or (values.get("env") or {}).get("cpu_threads")
        return cls(best_its=stored_best_its(values), best_spread=_finite(values.get("best_its_spread"), prior[False]),
                   runs=runs, relative_its=relative,
                   relative_spread=_finite(values.get("machine_relative_spread"), prior[True]) if relative else None,
                   machine_s=values.get("machine_reference_s") if relative else None, reference=reference,
                   cpu_threads=int(threads) if threads else None, span_s=values.get("measured_span_s"))

    def fields(self) -> dict[str, Any]:
        """What the stored metrics and the results JSON keep of it (inf spreads as None: JSON has no inf)."""
        return {"best_its": self.best_its, "best_its_spread": _json_number(self.best_spread),
                "machine_relative_its": self.relative_its,
                "machine_relative_spread": _json_number(self.relative_spread),
                "machine_reference": self.reference, "machine_reference_s": self.machine_s,
                "cpu_threads": self.cpu_threads, "measured_span_s": self.span_s}


def _finite(value: Any, fallback: float) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else fallback


def _json_number(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
