"""The three verdicts on two speed figures (`judge_speed`: pass, FAIL, inconclusive), with why and
what would settle an inconclusive one. The figures themselves are measure/figures.py's."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from pytest_sdopt.measure.figures import MIN_INTERVAL_SAMPLES, MIN_INTERVAL_SPAN_S, SpeedFigure

# A FAIL needs this many runs on each side. One run has no spread to show that it was disturbed: a
# single no-warm-up call of a process starved by others read 1.30 it/s where the same code read
# 60.74, while the reference workload timed beside it ran at full speed, a -96.9% "regression".
# The median of two or more runs is not moved by one such call.
MIN_RUNS_TO_FAIL = 2
# How far the machine's speed moved (the reference workload's time) between recording and check
# adds to the uncertainty: a quarter of the move (log scale) while it is within 25%, where the
# relative figure corrects most of it, and half of every unit beyond. Measured with one core taken
# by another process (benchmarks/verdicts.py, 2 threads): the reference ran 2.1-2.5x slower and the
# relative figures read 2-20% off (a quarter of the log move or less); on a machine loaded past
# its cores the reference moved 50-80x and the figures were off 10-40x, which half the move
# (a factor of e^2 at 50x) still leaves inconclusive.
MACHINE_MOVE_TRUSTED = math.log(1.25)
MACHINE_MOVE_WEIGHT = 0.25
MACHINE_MOVE_BEYOND = 0.5


class Verdict(str, Enum):
    PASS = "pass"
    FAIL = "FAIL"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class SpeedJudgement:
    """Two speed figures judged against a largest allowed drop: the drop, its 95% range, the verdict
    and, when it is inconclusive, why and what would settle it."""

    verdict: Verdict
    drop: float  # 1 - now / before (negative: faster)
    drop_low: float  # the 95% range of the drop
    drop_high: float
    machine_relative: bool
    machine_moved: float | None = None  # machine_s now / before (>1: the machine ran slower now)
    why: str = ""  # inconclusive: what kept the evidence from deciding
    remedy: str = ""  # inconclusive: what would settle it

    @property
    def noise(self) -> float:
        """The half-width of the drop's range, as a person reads it: -9.1% ± 2.5%."""
        return (self.drop_high - self.drop_low) / 2


def judge_speed(now: SpeedFigure, before: SpeedFigure, limit: float) -> SpeedJudgement:
    """pass when the whole 95% range of the drop is within `limit`, FAIL when the whole range is
    beyond it, else inconclusive. The range counts both figures' own intervals and how far the
    machine's speed moved between them (machine-relative figures only)."""
    relative = bool(now.relative_its and before.relative_its and now.reference == before.reference)
    if relative:
        value_now, value_before = now.relative_its, before.relative_its
        spreads = (now.relative_spread, before.relative_spread)
    else:
        value_now, value_before = now.best_its, before.best_its
        spreads = (now.best_spread, before.best_spread)
    if not value_before or value_before <= 0 or not value_now or value_now <= 0:
        return SpeedJudgement(Verdict.INCONCLUSIVE, 0.0, -math.inf, math.inf, relative,
                              why="a speed of 0 it/s was measured or stored", remedy="record again")
    ratio = value_now / value_before
    own = math.hypot(*(min(s, 10.0) for s in spreads))  # log-scale ~ fraction at these sizes
    moved, from_machine = None, 0.0
    if relative and now.machine_s and before.machine_s:
        moved = now.machine_s / before.machine_s
        shift = abs(math.log(moved))
        from_machine = (MACHINE_MOVE_WEIGHT * min(shift, MACHINE_MOVE_TRUSTED)
                        + MACHINE_MOVE_BEYOND * max(0.0, shift - MACHINE_MOVE_TRUSTED))
    uncertainty = own + from_machine
    drop_low, drop_high = 1 - ratio * math.exp(uncertainty), 1 - ratio * math.exp(-uncertainty)
    if drop_high <= limit + 1e-12:
        verdict = Verdict.PASS
    elif drop_low > limit + 1e-12:
        verdict = Verdict.FAIL
    else:
        verdict = Verdict.INCONCLUSIVE
    why = remedy = ""
    single = next(((which, figure) for which, figure in (("this run's figure", now), ("the stored figure", before))
                   if figure.runs < MIN_RUNS_TO_FAIL), None)
    if verdict is Verdict.FAIL and single is not None:
        which, figure = single
        return SpeedJudgement(Verdict.INCONCLUSIVE, 1 - ratio, drop_low, drop_high, relative, moved,
                              why=f"{which} rests on {figure.runs} run, and one run cannot tell a slower code "
                                  f"from a moment the machine was taken from it",
                              remedy=f"--sdopt-repeats 3 or more{' (and record again)' if figure is before else ''}")
    if verdict is Verdict.INCONCLUSIVE:
        why, remedy = _what_kept_it_open(now, before, spreads, from_machine, moved, limit)
    return SpeedJudgement(verdict, 1 - ratio, drop_low, drop_high, relative, moved, why, remedy)


def machine_change(moved: float, digits: int = 1) -> str:
    """`moved` (the reference's seconds now / then) in words: "25.0% slower", "100.0% faster"."""
    if moved >= 1:
        return f"{moved - 1:.{digits}%} slower"
    return f"{1 / moved - 1:.{digits}%} faster"


SETTLE_ADVICE = "--sdopt-settle 60 (re-measures for up to a minute before a verdict)"


def _what_kept_it_open(now: SpeedFigure, before: SpeedFigure, spreads: tuple[float, float], from_machine: float,
                       moved: float | None, limit: float) -> tuple[str, str]:
    """The largest contribution to the drop's range, in words, and what would shrink it."""
    now_spread, before_spread = spreads
    largest = max(now_spread, before_spread, from_machine)
    if largest == from_machine and moved is not None:
        return (f"the machine ran {machine_change(moved, 0)} than when the figure was recorded, more than a "
                f"machine-relative figure corrects", "check on a machine as quiet as at recording, or record again here")
    which, figure = ("this run's", now) if largest == now_spread else ("the stored figure's", before)
    if not figure.has_interval:
        runs, span = figure.runs, "" if figure.span_s is None else f" over {figure.span_s:.1f} s of steps"
        return (f"{which} {runs} run{'' if runs == 1 else 's'}{span} give no interval of their own (it takes "
                f"{MIN_INTERVAL_SAMPLES} runs over {MIN_INTERVAL_SPAN_S:.0f} s)",
                SETTLE_ADVICE + (", then record again with it" if which.startswith("the stored") else ""))
    return (f"{which} runs disagree by ±{largest:.0%}, more than the {limit:.0%} limit allows: the machine was "
            f"disturbed while they ran", f"{SETTLE_ADVICE}, fewer pytest-xdist workers, or a "
                                        f"quieter machine")
